/**
 * Conversions between the generated proto messages and the core model.
 * Unset enums and weights take their documented defaults here.
 */
import type { BackendStatus, Condition, LinkSpec, RuleSpec, RuleStatus } from '../core/model.js';
import type { ManagedInterface as CoreInterface, RuleView } from '../core/controller.js';
import { canonicalMac } from '../net/addr.js';
import { ChangeAction, ConditionStatus, type Condition as ProtoCondition } from '../../gen/xdpctl/v1/common.js';
import { EffectiveXdpMode, XdpMode, type ManagedInterface } from '../../gen/xdpctl/v1/interface.js';
import { LinkDirection, type Link } from '../../gen/xdpctl/v1/link.js';
import { Protocol, RuleState, UdpChecksumMode, type Rule } from '../../gen/xdpctl/v1/rule.js';

export function ruleFromProto(r: Rule | undefined): RuleSpec {
  const m = r?.match;
  return {
    name: r?.name ?? '',
    protocol: m?.protocol === Protocol.PROTOCOL_UDP || !m?.protocol ? 'udp' : (String(m.protocol) as 'udp'),
    port: m?.port ?? 0,
    destination: m?.destination ?? '',
    sourcePrefixes: [...(m?.sourcePrefixes ?? [])],
    ingressInterfaces: [...(r?.ingressInterfaces ?? [])],
    backends: (r?.backends ?? []).map((b) => ({
      ip: b.ip,
      mac: canonicalMac(b.mac),
      interface: b.interface,
      weight: b.weight ?? 1,
    })),
    udpChecksum:
      !r?.udpChecksum || r.udpChecksum === UdpChecksumMode.UDP_CHECKSUM_MODE_UPDATE
        ? 'update'
        : r.udpChecksum === UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO
          ? 'zero'
          : (String(r.udpChecksum) as 'update'),
    labels: { ...(r?.labels ?? {}) },
  };
}

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
    lastTransitionTime: new Date(c.lastTransitionTime),
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
    name: r.name,
    match: {
      protocol: Protocol.PROTOCOL_UDP,
      port: r.port,
      destination: r.destination,
      sourcePrefixes: r.sourcePrefixes,
    },
    ingressInterfaces: r.ingressInterfaces,
    backends: r.backends.map((b) => ({
      ip: b.ip,
      mac: b.mac, // as specified; a resolved MAC is in status.backend_status
      interface: b.interface,
      weight: b.weight,
    })),
    udpChecksum:
      r.udpChecksum === 'zero' ? UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO : UdpChecksumMode.UDP_CHECKSUM_MODE_UPDATE,
    labels: r.labels,
    generation: BigInt(r.generation),
    status: statusToProto(
      r.status,
      r.backends.map((b) => b.weight),
    ),
    createTime: new Date(r.createTime),
    updateTime: new Date(r.updateTime),
  };
}

export function linkFromProto(l: Link | undefined): LinkSpec {
  const d = l?.direction ?? LinkDirection.LINK_DIRECTION_UNSPECIFIED;
  return {
    a: l?.a ?? '',
    b: l?.b ?? '',
    direction:
      d === LinkDirection.LINK_DIRECTION_A_TO_B
        ? 'a-to-b'
        : d === LinkDirection.LINK_DIRECTION_BOTH || d === LinkDirection.LINK_DIRECTION_UNSPECIFIED
          ? 'both'
          : (String(d) as 'both'),
  };
}

export function linkToProto(
  l: LinkSpec & { active?: [boolean, boolean]; warnings?: string[]; conditions?: Condition[] },
): Link {
  return {
    a: l.a,
    b: l.b,
    direction: l.direction === 'a-to-b' ? LinkDirection.LINK_DIRECTION_A_TO_B : LinkDirection.LINK_DIRECTION_BOTH,
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
    requestedMode: MODE[i.requestedMode],
    effectiveMode: EFFECTIVE[i.effectiveMode] ?? EffectiveXdpMode.EFFECTIVE_XDP_MODE_UNSPECIFIED,
    programId: i.progId,
    present: i.present,
    usedBy: i.usedBy,
    warnings: i.warnings,
    conditions: conditionsToProto(i.conditions),
  };
}
