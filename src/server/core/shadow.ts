/**
 * Rules shadowed by links: a link forwarding from an ingress interface takes every frame there before rules
 * are matched (bpf/xdpctl.bpf.c: cross-connect first), so a rule matches nothing on it. One home for what a
 * read serves (Controller.getRule) and what the reconciler logs as a rule's transition (resync.ts), so that
 * the two never differ.
 */
import type { CoreState } from './state.js';
import type { Dataplane } from './dataplane.js';
import type { LinkSpec, RuleSpec, RuleStatus } from './model.js';

/** Whether each direction of link `l` forwards in the kernel now (`kernel`: the devmap, ifindex -> ifindex). */
export function linkActive(
  dp: Pick<Dataplane, 'lookupInterface'>,
  state: Pick<CoreState, 'foreign'>,
  l: LinkSpec,
  kernel: Map<number, number>,
): [boolean, boolean] {
  const ia = dp.lookupInterface(l.a);
  const ib = dp.lookupInterface(l.b);
  const foreign = (n: string) => state.foreign.has(n);
  return [
    !!ia && !!ib && kernel.get(ia.ifindex) === ib.ifindex && !foreign(l.a),
    l.direction === 'both' && !!ia && !!ib && kernel.get(ib.ifindex) === ia.ifindex && !foreign(l.b),
  ];
}

/** Interfaces that a link forwards from in the kernel now, with their link. */
export function activeLinkSources(
  dp: Pick<Dataplane, 'lookupInterface' | 'listLinks'>,
  state: Pick<CoreState, 'foreign' | 'links'>,
): Map<string, LinkSpec> {
  const out = new Map<string, LinkSpec>();
  if (state.links.size === 0) return out;
  const kernel = new Map(dp.listLinks());
  for (const l of state.links.values()) {
    const [ab, ba] = linkActive(dp, state, l, kernel);
    if (ab) out.set(l.a, l);
    if (ba) out.set(l.b, l);
  }
  return out;
}

/**
 * A rule's status with the links that shadow it: every ingress shadowed: INACTIVE; some: DEGRADED; each with
 * a warning. The status a read serves and the reconciler logs.
 */
export function shadowedStatus(r: RuleSpec, status: RuleStatus, shadows: Map<string, LinkSpec>): RuleStatus {
  if (shadows.size === 0) return status;
  const shadowed = r.ingressInterfaces.filter((i) => shadows.has(i));
  if (shadowed.length === 0) return status;
  const warnings = [...status.warnings, ...shadowed.map((i) => shadowWarning(r.name, i, shadows.get(i)!))];
  if (status.state === 'failed' || status.state === 'inactive') return { ...status, warnings };
  const links = shadowed.map((i) => `${i} (link ${shadows.get(i)!.a}:${shadows.get(i)!.b})`).join(', ');
  if (shadowed.length === r.ingressInterfaces.length) {
    return {
      ...status,
      state: 'inactive',
      message: `not receiving on any ingress interface: cross-connected by a link before rules are matched: ${links}`,
      warnings,
    };
  }
  return {
    ...status,
    state: 'degraded',
    message: `${status.message}; ${shadowed.length} of ${r.ingressInterfaces.length} ingress interface(s) cross-connected by a link before rules are matched: ${links}`,
    warnings,
  };
}

/** The warning a shadowed rule and the link shadowing it both carry. */
export function shadowWarning(rule: string, iface: string, l: LinkSpec): string {
  return `rule ${rule} on ${iface} is shadowed by link ${l.a}:${l.b}: frames arriving on ${iface} are cross-connected before rules are matched`;
}
