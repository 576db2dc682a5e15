/**
 * Conversions between the generated proto messages and the core model: the
 * specs through shared/proto-convert.ts (the one conversion, the CLI's too),
 * plus the output-only fields (status, conditions, times) here.
 */
import type { BackendStatus, Condition, LinkSpec, RuleSpec, RuleStatus } from '../core/model.js';
import type { ManagedInterface as CoreInterface, RuleView } from '../core/controller.js';
import { canonicalMac } from '../net/addr.js';
import { ChangeAction, ConditionStatus, type Condition as ProtoCondition } from '../../gen/xdpctl/v1/common.js';
import { EffectiveXdpMode, XdpMode, type ManagedInterface } from '../../gen/xdpctl/v1/interface.js';
import type { Link } from '../../gen/xdpctl/v1/link.js';
import { RuleState, type Rule } from '../../gen/xdpctl/v1/rule.js';
import { linkSpecFromProto, linkSpecToProto, ruleSpecFromProto, ruleSpecToProto } from '../../shared/proto-convert.js';

/**
 * A client's Rule as the core's spec (shared/proto-convert.ts: the one conversion, also the CLI's),
 * with each backend's MAC in the canonical form the daemon stores and compares ("aa:bb:..."; text
 * that is no MAC is left for validation to name).
 */
export function ruleFromProto(r: Rule | undefined): RuleSpec {
  const spec = ruleSpecFromProto(r);
  return { ...spec, backends: spec.backends.map((b) => ({ ...b, mac: canonicalMac(b.mac) })) };
}

/** A client's Link as the core's spec. */
export const linkFromProto: (l: Link | undefined) => LinkSpec = linkSpecFromProto;

const RULE_STATE = {
  active: RuleState.RULE_STATE_ACTIVE,
  degraded: RuleState.RULE_STATE_DEGRADED,
  inactive: RuleState.RULE_STATE_INACTIVE,
  failed: RuleState.RULE_STATE_FAILED,
};

function backendStatus(b: BackendStatus, weight: number) {
  return {
    ip: b.ip,
    interface: b.interface,
    mac: b.mac,
    resolved: b.resolved,
    active: b.receiving && weight > 0,
    message: b.receiving && weight === 0 ? 'drained (weight 0)' : b.message,
  };
}

const CONDITION_STATUS = {
  True: ConditionStatus.CONDITION_STATUS_TRUE,
  False: ConditionStatus.CONDITION_STATUS_FALSE,
  Unknown: ConditionStatus.CONDITION_STATUS_UNKNOWN,
};

/** Conditions as the API shows them (Kubernetes metav1.Condition fields). */
export function conditionsToProto(cs: Condition[] | undefined): ProtoCondition[] {
  return (cs ?? []).map((c) => ({
    type: c.type,
    status: CONDITION_STATUS[c.status],
    reason: c.reason,
    message: c.message,
    // Unset when unknown (a status that has held since before the daemon started).
    lastTransitionTime: c.lastTransitionTime === undefined ? undefined : new Date(c.lastTransitionTime),
  }));
}

function statusToProto(s: RuleStatus, weights: number[]) {
  return {
    state: RULE_STATE[s.state],
    message: s.message,
    backendStatus: s.backends.map((b, i) => backendStatus(b, weights[i] ?? 1)),
    warnings: s.warnings,
    conditions: conditionsToProto(s.conditions),
  };
}

export function ruleToProto(r: RuleView): Rule {
  return {
    ...ruleSpecToProto(r), // a backend's MAC as specified; a resolved MAC is in status.backend_status
    generation: BigInt(r.generation),
    status: statusToProto(
      r.status,
      r.backends.map((b) => b.weight),
    ),
    createTime: new Date(r.createTime),
    updateTime: new Date(r.updateTime),
  };
}

export function linkToProto(
  l: LinkSpec & { active?: [boolean, boolean]; warnings?: string[]; conditions?: Condition[] },
): Link {
  return {
    ...linkSpecToProto(l),
    status: {
      aToBActive: l.active?.[0] ?? false,
      bToAActive: l.active?.[1] ?? false,
      warnings: l.warnings ?? [],
      conditions: conditionsToProto(l.conditions),
    },
  };
}

export const CHANGE_ACTION = {
  create: ChangeAction.CHANGE_ACTION_CREATE,
  update: ChangeAction.CHANGE_ACTION_UPDATE,
  delete: ChangeAction.CHANGE_ACTION_DELETE,
  unchanged: ChangeAction.CHANGE_ACTION_UNCHANGED,
  repaired: ChangeAction.CHANGE_ACTION_REPAIRED,
};

const MODE = { native: XdpMode.XDP_MODE_NATIVE, generic: XdpMode.XDP_MODE_GENERIC, auto: XdpMode.XDP_MODE_AUTO };
const EFFECTIVE: Record<string, EffectiveXdpMode> = {
  none: EffectiveXdpMode.EFFECTIVE_XDP_MODE_NONE,
  native: EffectiveXdpMode.EFFECTIVE_XDP_MODE_NATIVE,
  generic: EffectiveXdpMode.EFFECTIVE_XDP_MODE_GENERIC,
  offload: EffectiveXdpMode.EFFECTIVE_XDP_MODE_OFFLOAD,
  multi: EffectiveXdpMode.EFFECTIVE_XDP_MODE_MULTI,
};

export function interfaceToProto(i: CoreInterface): ManagedInterface {
  return {
    name: i.name,
    ifindex: i.ifindex,
    requestedMode: i.requestedMode ? MODE[i.requestedMode] : XdpMode.XDP_MODE_UNSPECIFIED,
    effectiveMode: EFFECTIVE[i.effectiveMode] ?? EffectiveXdpMode.EFFECTIVE_XDP_MODE_UNSPECIFIED,
    programId: i.progId,
    present: i.present,
    usedBy: i.usedBy,
    warnings: i.warnings,
    conditions: conditionsToProto(i.conditions),
    usedByOmitted: 0,
  };
}
