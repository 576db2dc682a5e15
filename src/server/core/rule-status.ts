/**
 * Rule status: what a rule's status says, derived only from what the plan
 * observed (interfaces, neighbour entries, weights) and what resync sees.
 * Pure functions; no I/O.
 */
import type { LinkState, PeerMtu, PeerXdp } from './dataplane.js';
import type { BackendStatus, RuleSpec, RuleStatus } from './model.js';
import { heldMessage, type NeighbourHold } from './neighbour-hold.js';
import { isAddressConflict, isUnconfirmedYet } from './static-mac.js';
import { visible } from '../../shared/visible.js';

/** Why an egress interface cannot transmit, or undefined when it can (or is not known). */
export function egressProblem(iface: string, link: LinkState | undefined): string | undefined {
  if (!link) return undefined;
  if (!link.up) return `egress ${iface} is down`;
  if (!link.carrier) return `egress ${iface} has no carrier (nothing at its other end: for a veth, its peer is down)`;
  return undefined;
}

/**
 * Why an ingress interface receives nothing, or undefined when it can (or is
 * not known): a device that is down, or has no carrier (a veth whose peer is
 * down, a cable unplugged), delivers no frame to its XDP program.
 */
export function ingressDownProblem(iface: string, link: LinkState | undefined): string | undefined {
  if (!link) return undefined;
  if (!link.up) return `ingress ${iface} is down: it receives nothing`;
  if (!link.carrier)
    return `ingress ${iface} has no carrier (nothing at its other end: for a veth, its peer is down): it receives nothing`;
  return undefined;
}

/** The status of one planned backend. */
export function backendStatus(b: {
  ip: string;
  interface: string;
  givenMac: string;
  mac: string;
  resolved: boolean;
  /** Why its egress interface cannot transmit, if it cannot (a fact about the interface). */
  egress?: string;
  /** Why the backend itself cannot take frames through it (a static MAC the host contradicts), if so. */
  conflict?: string;
  /** Its MAC is the one the datapath held, kept while its neighbour entry is missing (Facts.keptMacs). */
  kept?: boolean;
}): BackendStatus {
  const out = b.egress ?? b.conflict;
  const receiving = b.resolved && !out;
  if (receiving && b.kept) {
    return {
      ip: b.ip,
      interface: b.interface,
      mac: b.mac,
      resolved: true,
      receiving,
      unverified: true,
      message: keptMacWhy(b.ip, b.interface, b.mac),
    };
  }
  return {
    ip: b.ip,
    interface: b.interface,
    mac: b.mac,
    resolved: b.resolved,
    receiving,
    ...(b.egress ? { egress: b.egress } : {}),
    // The egress first: a neighbour entry cannot be looked up (nor help) on an egress that is gone or down.
    message: out
      ? `${out}: backend taken out of the table until it can receive`
      : !b.resolved
        ? `no neighbour entry for ${b.ip} on ${b.interface}: backend gets no traffic until its MAC is known`
        : b.givenMac === ''
          ? 'MAC resolved from the neighbour table'
          : '',
  };
}

/**
 * What a backend given without a MAC says while the datapath keeps the MAC it forwarded with although the
 * neighbour table has no entry for it (Facts.keptMacs): not confirmed, being probed, out only if that fails.
 */
export function keptMacWhy(ip: string, iface: string, mac: string): string {
  return (
    `MAC ${mac} kept from the datapath, not confirmed yet: the neighbour table has no entry for ${ip} on ${iface} ` +
    '(flushed or expired, e.g. while the daemon was stopped or the egress went down); probing it: the backend ' +
    'leaves the table only if the probe fails'
  );
}

/**
 * The status of a backend whose egress interface is not in this namespace (the plan keeps it out of the
 * table): moved to another one (`movedTo`: where, core/moved.ts followMovedEgresses), or does not exist.
 */
export function absentBackendStatus(
  b: { ip: string; interface: string; mac: string },
  movedTo?: string,
): BackendStatus {
  return backendStatus({
    ip: b.ip,
    interface: b.interface,
    givenMac: b.mac,
    mac: b.mac,
    resolved: b.mac !== '',
    egress: movedTo ? `egress ${b.interface} was moved to ${movedTo}` : `egress ${b.interface} does not exist`,
  });
}

/**
 * The written status with the backends given without a MAC whose neighbour entry was set by hand, its MAC not
 * answered by an ARP probe of ours yet, said to be unverified (`handSet`: "ip@iface" -> the entry's states,
 * from Dataplane.neighbourHandSet): the kernel never confirms such an entry (no ARP probe, no timeout), so
 * "MAC resolved from the neighbour table" would say more than was observed until our own request is answered
 * (then it is resolved as any other); their BackendsReceiving is Unknown and an ACTIVE rule is DEGRADED (proto
 * RuleState: whether a backend receives cannot be verified), as for an egress whose veth peer cannot be
 * inspected ({@link unverifiedRuleStatus}). `written` itself when none applies.
 */
export function handSetNeighbourStatus(
  written: RuleStatus,
  rule: { backends: readonly { ip: string; interface: string; mac: string }[] },
  handSet: ReadonlyMap<string, string>,
): RuleStatus {
  if (handSet.size === 0 || written.state === 'failed') return written;
  let hit: string[] | undefined;
  const backends = written.backends.map((b, i) => {
    const spec = rule.backends[i];
    const states = spec && spec.mac === '' && b.receiving ? handSet.get(`${spec.ip}@${spec.interface}`) : undefined;
    if (!states) return b;
    (hit ??= []).push(`${spec.ip}@${spec.interface} (${states})`);
    return { ...b, unverified: true, message: handSetWhy(spec.ip, spec.interface, b.mac, states) };
  });
  if (!hit) return written;
  const note =
    `${hit.length} not confirmed yet (${hit.join(', ')}: MAC from a neighbour entry set by hand, which the ` +
    'kernel never confirms, no ARP probe of ours to it answered yet; probing it)';
  return {
    ...written,
    state: written.state === 'active' ? 'degraded' : written.state,
    message: `${written.message}; ${note}`,
    backends,
  };
}

/**
 * The written status with the backends given without a MAC whose neighbour entry's MAC has not answered a
 * probe of ours (`unanswered`: "ip@iface" -> that MAC; Dataplane.neighbourAnswered) saying so instead of
 * "MAC resolved from the neighbour table": a new or changed entry, or one another tool wrote as REACHABLE,
 * is probed at once and "resolved" once the host answers. Until then nothing observed says the backend
 * receives (a wrong entry looks the same: 0 of 50 delivered to one before this was so): its BackendsReceiving is Unknown
 * and an ACTIVE rule is DEGRADED, as for a MAC from an entry set by hand ({@link handSetNeighbourStatus}) or
 * one kept from the datapath ({@link keptMacWhy}). `written` itself when none applies.
 */
export function unansweredNeighbourStatus(
  written: RuleStatus,
  rule: { backends: readonly { ip: string; interface: string; mac: string; weight?: number }[] },
  unanswered: ReadonlyMap<string, string>,
): RuleStatus {
  if (unanswered.size === 0 || written.state === 'failed') return written;
  let changed = false;
  let hit: string[] | undefined;
  const backends = written.backends.map((b, i) => {
    const spec = rule.backends[i];
    const mac = spec && spec.mac === '' && b.receiving ? unanswered.get(`${spec.ip}@${spec.interface}`) : undefined;
    if (!mac || mac.toLowerCase() !== b.mac.toLowerCase()) return b;
    if ((spec.weight ?? 1) > 0) (hit ??= []).push(`${spec.ip}@${spec.interface}`);
    changed = true;
    return {
      ...b,
      unverified: true,
      message:
        `MAC ${b.mac} from the neighbour table, not confirmed yet: no ARP probe of ours to it has been answered ` +
        '(probing it; an entry another tool wrote looks the same)',
    };
  });
  if (hit) return unconfirmedRuleStatus(written, backends, hit, 'MAC from the neighbour table');
  return changed ? { ...written, backends } : written;
}

/** `written` with `backends`, DEGRADED when it was ACTIVE, its message naming the backends not confirmed yet. */
function unconfirmedRuleStatus(
  written: RuleStatus,
  backends: BackendStatus[],
  hit: readonly string[],
  what: string,
): RuleStatus {
  const note = `${hit.length} not confirmed yet (${hit.join(', ')}: ${what}, no ARP probe of ours to it answered yet; probing it)`;
  return {
    ...written,
    state: written.state === 'active' ? 'degraded' : written.state,
    message: `${written.message}; ${note}`,
    backends,
  };
}

/**
 * The written status with the backends given without a MAC whose MAC is kept over a changed neighbour
 * entry (`holds`, core/neighbour-hold.ts) saying so: the MAC they receive with, which entry MAC is waited
 * for and why. A kept MAC that answered a probe of ours does not lower the state (nothing observed since
 * contradicts it); one kept from the datapath at start, which no probe of ours has had answered
 * (NeighbourHold.unconfirmed), is not confirmed: BackendsReceiving Unknown, an ACTIVE rule DEGRADED, as for
 * a MAC kept while its entry is missing ({@link keptMacWhy}). `written` itself when none applies.
 */
export function heldNeighbourStatus(
  written: RuleStatus,
  rule: { backends: readonly { ip: string; interface: string; mac: string; weight?: number }[] },
  holds: ReadonlyMap<string, NeighbourHold>,
): RuleStatus {
  if (holds.size === 0 || written.state === 'failed') return written;
  let changed = false;
  let hit: string[] | undefined;
  let conflicts: string[] | undefined;
  const backends = written.backends.map((b, i) => {
    const spec = rule.backends[i];
    const h = spec && spec.mac === '' && b.receiving ? holds.get(`${spec.ip}@${spec.interface}`) : undefined;
    if (!h || h.kept.toLowerCase() !== b.mac.toLowerCase()) return b;
    changed = true;
    if (h.conflict) {
      if ((spec.weight ?? 1) > 0)
        (conflicts ??= []).push(`${spec.ip}@${spec.interface}: ${h.conflict.macs.join(' and ')}`);
      return { ...b, unverified: true, conflict: true, message: heldMessage(h) };
    }
    if (!h.unconfirmed) return { ...b, message: heldMessage(h) };
    if ((spec.weight ?? 1) > 0) (hit ??= []).push(`${spec.ip}@${spec.interface}`);
    return { ...b, unverified: true, message: heldMessage(h) };
  });
  let out = changed ? { ...written, backends } : written;
  if (hit) out = unconfirmedRuleStatus(written, backends, hit, 'MAC kept from the datapath');
  if (conflicts) {
    // Which host receives cannot be known while both answer: not ACTIVE (proto RuleState).
    const note =
      `${conflicts.length} in an address conflict (${conflicts.join('; ')} answer ARP for one address: a ` +
      'duplicate host or a spoofer; which host receives cannot be known)';
    out = {
      ...out,
      state: out.state === 'active' ? 'degraded' : out.state,
      message: `${out.message}; ${note}`,
      backends,
    };
  }
  return out;
}

/** What a backend MAC from a neighbour entry set by hand means ({@link handSetNeighbourStatus}). */
export function handSetWhy(ip: string, iface: string, mac: string, states: string): string {
  return (
    `MAC ${mac} not confirmed yet: the neighbour entry for ${ip} on ${iface} was set by hand (${states}), ` +
    'which the kernel never confirms (no ARP probe, no timeout), and no ARP probe of ours to it has been ' +
    'answered (probing it); frames go to that MAC whether or not the host has it'
  );
}

/**
 * A backend's message up to its first ": " outside parentheses (what it is, without why): "egress v1 has no
 * carrier (nothing at its other end: for a veth, its peer is down): ..." is "egress v1 has no carrier (nothing at
 * its other end: for a veth, its peer is down)". Cut at the first ':' it was "egress v1 has no carrier (nothing at
 * its other end", whose parenthesis the rule's message then never closed; and "MAC 02:42:..." was "MAC 02".
 */
export function messageHead(message: string): string {
  let depth = 0;
  for (let i = 0; i < message.length; i++) {
    const c = message[i];
    if (c === '(') depth++;
    else if (c === ')') depth = Math.max(0, depth - 1);
    else if (c === ':' && depth === 0 && message[i + 1] === ' ') return message.slice(0, i);
  }
  return message;
}

/**
 * A written rule's status from its backends' statuses and how many are in
 * its table with a non-zero weight (proto RuleState: ACTIVE when every
 * backend with a non-zero weight receives, DEGRADED when some cannot,
 * INACTIVE when none can).
 */
export function writtenRuleStatus(backends: BackendStatus[], live: number, weights?: number[]): RuleStatus {
  const out = backends.filter((b, i) => !b.receiving && (weights?.[i] ?? 1) > 0);
  const why = out.map((b) => `${b.ip}@${b.interface}: ${messageHead(b.message)}`).join('; ');
  // In the table with a MAC kept from the datapath (its neighbour entry missing): not confirmed to receive.
  const kept = backends.filter((b, i) => b.receiving && b.unverified && (weights?.[i] ?? 1) > 0);
  const keptNote = kept.length
    ? `; ${kept.length} cannot be verified (${kept.map((b) => `${b.ip}@${b.interface}`).join(', ')}: MAC kept from the datapath, no neighbour entry; probing)`
    : '';
  return {
    state: live === 0 ? 'inactive' : out.length || kept.length ? 'degraded' : 'active',
    message:
      live === 0
        ? `no backend can take traffic (all drained or unable to receive${why ? `: ${why}` : ''}): matching packets are dropped`
        : out.length
          ? `forwarding to ${live} backend(s); ${out.length} cannot receive (${why})${keptNote}`
          : `forwarding to ${live} backend(s)${keptNote}`,
    backends,
    warnings: [],
  };
}

/**
 * The written status with the backends whose egress cannot be verified
 * (`unverified`: egress name -> why; core/egress-watch.ts) marked: they stay
 * in the table, but a rule that has one is DEGRADED, not ACTIVE (the daemon
 * cannot say every backend receives). `written` itself when none applies.
 */
export function unverifiedRuleStatus(written: RuleStatus, unverified: ReadonlyMap<string, string>): RuleStatus {
  if (unverified.size === 0 || written.state === 'failed') return written;
  let hit: BackendStatus[] | undefined;
  const backends = written.backends.map((b) => {
    const why = b.receiving ? unverified.get(b.interface) : undefined;
    if (!why) return b;
    const u = { ...b, unverified: true, egressUnverified: why, message: `cannot be verified: ${why}` };
    (hit ??= []).push(u);
    return u;
  });
  if (!hit) return written;
  // A check the daemon could not make (core/unchecked.ts: "cannot check X: ...") is said as such, not as a
  // peer that cannot be inspected.
  const unchecked = hit.filter((b) => b.egressUnverified?.startsWith('cannot check '));
  const inspected = hit.filter((b) => !b.egressUnverified?.startsWith('cannot check '));
  const where = (l: BackendStatus[]) => l.map((b) => `${b.ip}@${b.interface}`).join(', ');
  const parts = [
    ...(inspected.length
      ? [
          `${where(inspected)}: the kernel announces ndo-xmit for the egress, but its veth peer cannot be ` +
            'inspected; watched through the redirect errors',
        ]
      : []),
    ...(unchecked.length
      ? [
          `${where(unchecked)}: their egress could not be checked (${unchecked[0].egressUnverified}); kept in ` +
            'the table as they were, watched through the redirect errors',
        ]
      : []),
  ];
  const note = `${hit.length} cannot be verified (${parts.join('; ')})`;
  return {
    ...written,
    state: written.state === 'active' ? 'degraded' : written.state,
    message: `${written.message}; ${note}`,
    backends,
  };
}

/**
 * The status as observed now: the written status, lowered by what is wrong
 * with the rule's ingress interfaces (missing, a foreign XDP program in
 * the place of ours, down or without carrier). All ingress unusable:
 * INACTIVE; some: DEGRADED.
 */
export function observedRuleStatus(written: RuleStatus, ingress: string[], problems: Map<string, string>): RuleStatus {
  const bad = ingress.filter((i) => problems.has(i));
  if (bad.length === 0 || written.state === 'failed') return written;
  const why = bad.map((i) => problems.get(i)).join('; ');
  if (written.state === 'inactive') return { ...written, warnings: [why, ...written.warnings] };
  if (bad.length === ingress.length) {
    return {
      ...written,
      state: 'inactive',
      message: `not receiving on any ingress interface: ${why}`,
      warnings: [why, ...written.warnings],
    };
  }
  return {
    ...written,
    state: 'degraded',
    message: `${written.message}; not receiving on ${bad.length} of ${ingress.length} ingress interface(s): ${why}`,
    warnings: [why, ...written.warnings],
  };
}

/**
 * A rule just written without some of its ingress interfaces (ifindex -1: missing now; a lenient plan
 * gives them no match entry): its status lowered as {@link observedRuleStatus} does, the written one kept
 * in `written` and the problems in `ingressProblems`, as the reconciler's pass leaves them.
 */
export function lowerForMissingIngress(
  k: { status: RuleStatus; written?: RuleStatus; ingressProblems?: string[]; ifindexes: Map<string, number> },
  ingress: readonly string[],
): void {
  const missing = new Map(
    ingress.filter((i) => k.ifindexes.get(i) === -1).map((i) => [i, `interface ${i} does not exist`] as const),
  );
  if (missing.size === 0) return;
  const observed = observedRuleStatus(k.status, [...ingress], missing);
  if (observed === k.status) return;
  k.written = k.status;
  k.status = observed;
  k.ingressProblems = [...missing.values()];
}

/** A rule the datapath refused at start or resync; its previous entries, if any, keep forwarding. */
export function failedStatus(reason: string, keptOld: boolean): RuleStatus {
  return {
    state: 'failed',
    message: `${reason}${keptOld ? '; the entries the datapath had for it keep forwarding' : ''}`,
    backends: [],
    warnings: [],
  };
}

/** A stored rule adopted at start, before it is written again. */
export function restoringStatus(): RuleStatus {
  return { state: 'inactive', message: 'restoring', backends: [], warnings: [] };
}

/** A stored rule whose interfaces do not exist (yet). */
export function waitingStatus(): RuleStatus {
  return { state: 'inactive', message: 'waiting for its interfaces to exist', backends: [], warnings: [] };
}

/** The warning a rule carries while interfaces it was written with are gone. */
export function missingInterfacesWarning(gone: readonly string[]): string {
  return `interface(s) ${gone.join(', ')} missing: the rule is written again when they return`;
}

const NO_WARNINGS: readonly string[] = Object.freeze([]);

/** IPv4 and UDP headers without options (RFC 791, RFC 768): a datagram's payload is its IP packet less these. */
const IPV4_UDP_HEADERS = 28;

/**
 * Bytes beyond the MTU that the kernel lets an Ethernet frame carry on a
 * redirect: room for one VLAN tag (VLAN_HLEN in xdp_ok_fwd_dev,
 * veth_xdp_xmit and is_skb_forwardable: MTU + hard_header_len + VLAN_HLEN).
 */
export const MTU_SLACK = 4;

/**
 * What an egress whose MTU is `mtu` lets through, for a status or a log line:
 * the largest IP packet and UDP payload (IPv4, no options) that pass the
 * kernel's check (MTU plus {@link MTU_SLACK}), and those within the MTU itself
 * (what a receiver that enforces its MTU takes). Measured on 6.18 with real
 * datagrams (test/integration/egress-truth.test.ts).
 */
export function largestPassing(mtu: number): string {
  const payload = (ip: number) => Math.max(0, ip - IPV4_UDP_HEADERS);
  return (
    `the largest that passes is an IP packet of ${mtu + MTU_SLACK} bytes (UDP payload ${payload(mtu + MTU_SLACK)}; ` +
    `${mtu} bytes, UDP payload ${payload(mtu)}, within the MTU itself)`
  );
}

/** Whether a status warning is one of {@link mtuWarnings} (an egress MTU below an ingress's). */
export const isMtuWarning = (w: string): boolean => / has MTU \d+/.test(w);

/** Whether a status warning says an egress's veth peer MTU cannot be read ({@link mtuWarnings}). */
export const isMtuUnverified = (w: string): boolean => /'s veth peer MTU cannot be verified/.test(w);

/** Where a veth peer is, for a message: its name and, when not in the daemon's namespace, which one. */
export function peerWhere(p: { name: string; netns?: string; nsid?: number }): string {
  if (p.netns) return `${p.name} in netns ${p.netns}`;
  if (p.nsid !== undefined) return `${p.name} in an unnamed network namespace (nsid ${p.nsid})`;
  return p.name;
}

/**
 * The MTU an egress carries redirected frames within: its own, or its veth peer's when smaller (wherever the
 * peer lives: veth_xdp_xmit and is_skb_forwardable check the peer's), with the text naming which; or, when the
 * peer's MTU cannot be read, `unverified` with why. Undefined when nothing is known.
 */
export function egressMtu(
  iface: string,
  own: number | undefined,
  p: PeerMtu | undefined,
): { mtu: number; where: string } | { unverified: string } | undefined {
  if (p && 'unreadable' in p) return { unverified: p.unreadable };
  const m = own === undefined ? p?.mtu : p && p.mtu < own ? p.mtu : own;
  if (m === undefined) return undefined;
  return { mtu: m, where: own !== undefined && m === own ? iface : `${iface}'s veth peer ${peerWhere(p!)}` };
}

/**
 * Where the kernel counts a frame dropped for an egress MTU: the device's own MTU check (xdp_ok_fwd_dev) fails
 * the redirect (a redirect error); a veth peer's (veth_xdp_xmit) drops it at the flush, which the tracepoint
 * counts as a redirect error in native mode, while in generic mode the veth counts it in its tx_dropped.
 */
export function countedAs(where: string, iface: string): string {
  return where === iface
    ? 'counted as redirect errors'
    : `counted as redirect errors in native mode, in ${iface}'s tx_dropped in generic mode`;
}

/**
 * Backends whose egress MTU is smaller than an ingress interface's: a frame
 * the ingress accepts may be too large for that egress, and the kernel drops
 * it on redirect (XDP redirects do not fragment: xdp_ok_fwd_dev() refuses a
 * frame longer than the device's MTU plus its link-layer header and 4 bytes
 * of room for a VLAN tag, EMSGSIZE; counted as redirect errors). A veth
 * egress is bounded by its peer's MTU too, wherever the peer lives
 * (veth_xdp_xmit, is_skb_forwardable: `peer`). One warning per such backend,
 * naming both MTUs and the largest datagram that still passes; one saying
 * the MTU cannot be verified for a backend whose veth peer's MTU cannot be
 * read ({@link isMtuUnverified}); a shared empty list when there is none.
 * `mtu` gives an interface's MTU as observed (undefined: not known);
 * backends out of the table (`receiving: false`) are skipped.
 */
export function mtuWarnings(
  ingress: readonly string[],
  backends: readonly { ip: string; interface: string; receiving?: boolean }[],
  mtu: (iface: string) => number | undefined,
  peer: (iface: string) => PeerMtu | undefined = () => undefined,
): readonly string[] {
  let largest = 0;
  let from = '';
  for (const i of ingress) {
    const m = mtu(i) ?? 0;
    if (m > largest) [largest, from] = [m, i];
  }
  let out: string[] | undefined;
  for (const b of backends) {
    if (b.receiving === false) continue; // out of the table: nothing is redirected to it
    const e = egressMtu(b.interface, mtu(b.interface), peer(b.interface));
    if (e === undefined) continue;
    if ('unverified' in e) {
      (out ??= []).push(
        `backend ${b.ip}: egress ${b.interface}'s veth peer MTU cannot be verified (${e.unverified}): datagrams ` +
          `to it larger than that MTU would be dropped unseen by this check`,
      );
      continue;
    }
    if (e.mtu >= largest) continue;
    (out ??= []).push(
      `backend ${b.ip}: egress ${e.where} has MTU ${e.mtu}, ingress ${from} ${largest}: datagrams to it whose IP packet ` +
        `exceeds ${e.mtu + MTU_SLACK} bytes are dropped (XDP redirects do not fragment; ${countedAs(e.where, b.interface)}); ` +
        largestPassing(e.mtu),
    );
  }
  return out ?? NO_WARNINGS;
}

/**
 * The status with what its MTU warnings mean (proto RuleState DEGRADED:
 * not forwarding as specified): an ACTIVE rule whose backends drop the
 * larger datagrams the ingress accepts is DEGRADED, its message naming them.
 * `written` itself when it has no such warning or is not forwarding.
 */
export function mtuRuleStatus(written: RuleStatus): RuleStatus {
  if (written.state !== 'active' && written.state !== 'degraded') return written;
  const mtu = written.warnings.filter(isMtuWarning);
  if (mtu.length === 0) return written;
  return {
    ...written,
    state: 'degraded',
    message: `${written.message}; ${mtu.length} backend(s) cannot take the largest datagrams the ingress accepts (${mtu.join('; ')})`,
  };
}

/** {@link mtuRuleStatus} on a rule just written, as {@link lowerForMissingIngress} does (the written status kept in `written`). */
export function lowerForMtu(k: { status: RuleStatus; written?: RuleStatus }): void {
  const lowered = mtuRuleStatus(k.status);
  if (lowered === k.status) return;
  k.written ??= k.status;
  k.status = lowered;
}

/**
 * The written status with the static MACs that cannot be verified (`unverified`: "ip@iface|mac" -> why;
 * static-mac.ts: "not confirmed yet" within UNVERIFIED_GRACE_MS of their first judgement, "cannot be
 * verified" after) said so: nothing the host shows confirms that its host takes
 * frames to that MAC (no veth peer of ours has it, no freshly confirmed neighbour entry holds it), so
 * "receives" would say more than was observed (0 of 50 delivered to one such backend while its rule was
 * ACTIVE, before this was so). It stays in the table (nothing contradicts it either; a contradicted one is
 * out of it), its BackendsReceiving is Unknown and an ACTIVE rule DEGRADED (proto RuleState: whether a
 * backend receives cannot be verified), as for a MAC-less backend whose MAC no probe of ours had answered
 * ({@link unansweredNeighbourStatus}). A confirmed static MAC is not in `unverified`. `written` itself when
 * none applies.
 */
export function staticMacStatus(
  written: RuleStatus,
  rule: { backends: readonly { ip: string; interface: string; mac: string; weight?: number }[] },
  unverified: UnverifiedMacs,
): RuleStatus {
  if (unverified.size === 0 || written.state === 'failed') return written;
  let changed = false;
  let hit: string[] | undefined;
  let yet: string[] | undefined;
  let conflicts: string[] | undefined;
  const backends = written.backends.map((b, i) => {
    const spec = rule.backends[i];
    if (!b.receiving || !spec || spec.mac === '') return b;
    const why = unverified.get(`${spec.ip}@${spec.interface}|${spec.mac.toLowerCase()}`);
    if (!why) return b;
    const conflict = isAddressConflict(why);
    if ((spec.weight ?? 1) > 0) {
      if (conflict) (conflicts ??= []).push(`${spec.ip}@${spec.interface}: static MAC ${spec.mac.toLowerCase()}`);
      else if (isUnconfirmedYet(why)) (yet ??= []).push(`${spec.ip}@${spec.interface}`);
      else (hit ??= []).push(`${spec.ip}@${spec.interface}`);
    }
    if (b.message === why && b.unverified && !!b.conflict === conflict) return b;
    changed = true;
    return conflict
      ? { ...b, unverified: true, conflict: true, message: why }
      : { ...b, unverified: true, message: why };
  });
  if (hit || yet || conflicts) {
    const notes: string[] = [];
    if (conflicts)
      notes.push(
        `${conflicts.length} in an address conflict (${conflicts.join('; ')} and another MAC answer ARP for one ` +
          'address; which host receives cannot be known)',
      );
    if (hit)
      notes.push(`${hit.length} cannot be verified (${hit.join(', ')}: static MAC that nothing on the host confirms)`);
    if (yet)
      notes.push(
        `${yet.length} not confirmed yet (${yet.join(', ')}: static MAC that nothing on the host confirms yet)`,
      );
    return {
      ...written,
      state: written.state === 'active' ? 'degraded' : written.state,
      message: `${written.message}; ${notes.join('; ')}`,
      backends,
    };
  }
  return changed ? { ...written, backends } : written;
}

/**
 * The static MACs that cannot be verified, "ip@iface|mac" -> why ({@link staticMacStatus}): what it reads of a
 * map (a change's judgement lays its own backends' verdicts over the kept ones without copying them).
 */
export interface UnverifiedMacs {
  readonly size: number;
  get(key: string): string | undefined;
}

/**
 * What a rule's status is judged from besides its written status, as observed on the host (by the
 * reconciler's pass, or right after a client's write: resync.ts observeWrittenRules). Each map is keyed as
 * the function that applies it says.
 */
export interface RuleObservation {
  /** Ingress name -> why our program does not run there (missing, a foreign program, not attached). */
  ingressProblems: ReadonlyMap<string, string>;
  /** Ingress name -> why it receives nothing although it exists (down, no carrier). */
  ingressDown: ReadonlyMap<string, string>;
  /** Egress name -> why its backends cannot be verified ({@link unverifiedRuleStatus}). */
  unverifiedEgress: ReadonlyMap<string, string>;
  /** "ip@iface|mac" -> why a static MAC cannot be verified ({@link staticMacStatus}). */
  unverifiedMacs: UnverifiedMacs;
  /** "ip@iface" -> a neighbour MAC no probe of ours had answered ({@link unansweredNeighbourStatus}). */
  unanswered: ReadonlyMap<string, string>;
  /** "ip@iface" -> a confirmed MAC kept while its entry changed to an unanswered one ({@link heldNeighbourStatus}). */
  holds: ReadonlyMap<string, NeighbourHold>;
  /** "ip@iface" -> the states of a neighbour entry set by hand ({@link handSetNeighbourStatus}). */
  handSet: ReadonlyMap<string, string>;
  /** Ingress name -> device settings XDP relies on that drifted and could not be put back. */
  ingressSettings: ReadonlyMap<string, string>;
  /** Why no ARP request of ours can be sent (Dataplane.arpUnavailable): nothing is "probing it". */
  arpUnavailable?: string;
  /** Why the neighbour table could not be read (Facts.neighbourUnread): {@link unreadNeighbourStatus}. */
  neighbourUnread?: string;
  /** "ip@iface" -> why its MAC is not the kernel's entry's ({@link viaNeighbourStatus}, Dataplane.neighbourVia). */
  via?: ReadonlyMap<string, string>;
  /** Backend egress name -> the program not ours attached to it ({@link foreignEgressStatus}); absent: none. */
  foreignEgress?: ReadonlyMap<string, string>;
  /** "ip@iface" -> what the host's routes say of it ({@link routeNeighbourStatus}, Dataplane.neighbourRoute). */
  route?: ReadonlyMap<string, string>;
  /** Interface -> a repair another tool keeps undoing there (core/fights.ts), as its status text says it. */
  fights?: ReadonlyMap<string, string>;
  /** Rule name -> a repair of a kernel entry it owns that another tool keeps undoing (core/fights.ts byRule). */
  ruleFights?: ReadonlyMap<string, string>;
  /** Tap egress name -> the frames its tx_dropped counted lately ({@link tapDropStatus}, core/tap-drops.ts). */
  tapDrops?: ReadonlyMap<string, string>;
  /** Backend egress name -> the XDP programs not ours on its veth peer, said ({@link peerXdpStatus}); absent: none. */
  peerXdp?: ReadonlyMap<string, string>;
  /** "rule|ip@iface" -> why whether it closes a forwarding loop cannot be told ({@link loopUnknownStatus}); absent: none. */
  loopUnknown?: ReadonlyMap<string, string>;
}

/**
 * The status with each backend whose way back cannot be told (`loopUnknown`: rule-loops.ts loopBackendKey ->
 * loopUnknownText: an upper device above its veth peer whose receive path the loop check does not know) saying
 * so in the rule's warnings: not a loop found (the backend stays in its table, the state is unchanged), and not
 * "no loop" either.
 */
export function loopUnknownStatus(
  s: RuleStatus,
  rule: { name?: string; backends: readonly { ip: string; interface: string }[] },
  loopUnknown: ReadonlyMap<string, string> | undefined,
): RuleStatus {
  if (!loopUnknown?.size || rule.name === undefined || s.state === 'failed') return s;
  const notes = rule.backends
    .map((b) => loopUnknown.get(`${rule.name}|${b.ip}@${b.interface}`))
    .filter((n): n is string => n !== undefined && !s.warnings.includes(n));
  return notes.length ? { ...s, warnings: [...s.warnings, ...new Set(notes)] } : s;
}

/**
 * The status with each backend in its table behind a tap whose tx_dropped rose lately (`tapDrops`: egress name
 * -> what was counted, core/tap-drops.ts) saying so: the frames redirected to it are dropped by the kernel (the
 * process holding the tap does not read), so it does not receive them. It stays in the table (the tap is up,
 * and reading again takes them at once); the rule is DEGRADED, not ACTIVE, its message and warnings naming the
 * tap. `s` itself when none applies.
 */
export function tapDropStatus(
  s: RuleStatus,
  rule: { backends: readonly { interface: string; weight?: number }[] },
  tapDrops: ReadonlyMap<string, string> | undefined,
): RuleStatus {
  if (!tapDrops?.size || s.state === 'failed') return s;
  const hit = new Set<string>();
  let changed = false;
  const backends = s.backends.map((b, i) => {
    const egress = rule.backends[i]?.interface;
    const why = egress === undefined || !b.receiving ? undefined : tapDrops.get(egress);
    if (!why) return b;
    changed = true;
    // The rule's message and warnings name the tap without the count (which moves at every pass).
    if ((rule.backends[i].weight ?? 1) > 0)
      hit.add(`tap ${egress} drops the frames redirected to it (its tx_dropped rising): its reader is not reading`);
    return { ...b, dropping: why, message: b.message ? `${b.message}; ${why}` : why };
  });
  if (!changed) return s;
  if (!hit.size) return { ...s, backends };
  const notes = [...hit];
  return {
    ...s,
    state: s.state === 'active' ? 'degraded' : s.state,
    message: `${s.message}; ${notes.join('; ')}`,
    backends,
    warnings: [...s.warnings, ...notes.filter((w) => !s.warnings.includes(w))],
  };
}

/**
 * The status with each backend naming the XDP program not ours attached to its egress, or the tc filters, tcx
 * programs or nftables chains on its ingress (`foreignEgress`: egress name -> {@link egressHooksPhrase}; the
 * program another tool's or another xdpctld's, e.g. a link of its cross-connecting the egress):
 * that program runs on every frame arriving on the egress (XDP sees a device's receive side only), the backend's
 * answers and ARP replies included, before this host sees them; it may drop them or redirect them elsewhere (a
 * cross-connect sends every one of them out of another device). What is redirected to the backend is sent out of
 * the egress past it, so the backend stays in its table; but what it sends back cannot be verified to arrive.
 * One not known to receive (no MAC known, not confirmed) has the program named as a possible cause; one in the
 * table with a non-zero weight has it named too, and makes an ACTIVE rule DEGRADED (proto RuleState), its
 * BackendsReceiving Unknown (EgressForeignProgram; EgressTcFilter, EgressNftChain when only those are there);
 * ACTIVE again once they are gone. tc and nftables run on the receive path after XDP, on what it passed.
 */
export function foreignEgressStatus(
  s: RuleStatus,
  rule: { backends: readonly { interface: string; weight?: number }[] },
  foreignEgress: ReadonlyMap<string, string> | undefined,
): RuleStatus {
  if (!foreignEgress?.size || s.state === 'failed') return s;
  const warnings: string[] = [];
  let judged = false;
  const backends = s.backends.map((b, i) => {
    const egress = rule.backends[i]?.interface;
    const phrase = egress === undefined ? undefined : foreignEgress.get(egress);
    if (!phrase) return b;
    const counts = b.receiving && !b.unverified && (rule.backends[i].weight ?? 1) > 0;
    // One not counted that already names the program (its neighbour message) keeps its message.
    if (!counts && b.message.includes(phrase)) return b;
    const note = egressHooksNote(egress!, phrase, b.ip, counts);
    if (!warnings.includes(note)) warnings.push(note);
    if (counts) judged = true;
    const withNote = b.message.includes(note) ? b : { ...b, message: b.message ? `${b.message}; ${note}` : note };
    return counts ? { ...withNote, egressProgram: note } : withNote;
  });
  if (!warnings.length) return s;
  return noted(s, backends, warnings, judged ? warnings.filter((w) => /whether it arrives/.test(w)) : []);
}

/**
 * What to say of the XDP programs not ours on a backend egress's veth peer, and of the tc filters and tcx
 * programs on its ingress (Dataplane.vethPeerXdp): "veth peer eth0 in netns blue runs XDP program id 42 (name,
 * generic mode): delivery past it cannot be verified", "veth peer eth0 in netns blue has a tc ingress filter
 * (bpf program id 43 (name, direct-action)): delivery past it cannot be verified", "veth peer eth0 in netns blue
 * has an nftables ingress chain netdev t c (priority 0, policy drop, no rules): delivery past it cannot be
 * verified" (family, table and chain as `nft list chain` takes them; its rules counted, not evaluated).
 */
export function peerXdpNote(p: PeerXdp): string {
  const parts: string[] = [];
  if (p.programs.length) {
    const progs = p.programs.map((x) => `id ${x.id} (${x.name || 'name unknown'}, ${x.mode} mode)`);
    parts.push(`runs XDP ${progs.length > 1 ? 'programs' : 'program'} ${progs.join(', ')}`);
  }
  parts.push(...ingressHookParts(p));
  const said = parts.length > 1 ? `${parts.slice(0, -1).join(', ')} and ${parts[parts.length - 1]}` : parts[0];
  return `veth peer ${p.where} ${said}: delivery past it cannot be verified`;
}

/**
 * What a device's ingress has besides XDP, said: "has a tc ingress filter (bpf program id 43 (name,
 * direct-action))", "has a tcx ingress program id 44 (name)", "has an nftables ingress chain netdev t c (priority 0,
 * policy drop, no rules)"; one part each, in that order (none when there is nothing).
 */
export function ingressHookParts(p: Omit<PeerXdp, 'where' | 'programs'>): string[] {
  const parts: string[] = [];
  const filters = (p.tc?.filters ?? []).map((f) =>
    f.kind === 'bpf' && f.programs.length
      ? f.programs
          .map((x) => `bpf program id ${x.id} (${x.name || 'name unknown'}${x.directAction ? ', direct-action' : ''})`)
          .join(', ')
      : `${f.kind}, pref ${f.pref}, protocol ${ethertype(f.protocol)}`,
  );
  if (filters.length) {
    parts.push(`has ${filters.length > 1 ? 'tc ingress filters' : 'a tc ingress filter'} (${filters.join('; ')})`);
  }
  const tcx = (p.tc?.tcx ?? []).map((x) => `id ${x.id} (${x.name || 'name unknown'})`);
  if (tcx.length)
    parts.push(`has ${tcx.length > 1 ? 'tcx ingress programs' : 'a tcx ingress program'} ${tcx.join(', ')}`);
  const nft = (p.nft ?? []).map((c) => {
    const rules =
      c.rules === undefined
        ? 'rules not read'
        : c.rules === 0
          ? 'no rules'
          : `${c.rules} ${c.rules === 1 ? 'rule' : 'rules'}`;
    // Names another tool chose: made visible (rule-status text reaches terminals and logs).
    return `${c.family} ${visible(c.table)} ${visible(c.chain)} (priority ${c.priority}, policy ${c.policy}, ${rules})`;
  });
  if (nft.length)
    parts.push(`has ${nft.length > 1 ? 'nftables ingress chains' : 'an nftables ingress chain'} ${nft.join(', ')}`);
  return parts;
}

/**
 * What of the devices stacked on a backend egress takes the frames arriving on it (Dataplane.upperLinks): a macvlan
 * or macvtap in passthru mode receives every unicast frame that arrives on its lower device (drivers/net/macvlan.c
 * macvlan_handle_frame), so what the backend sends back, its ARP replies included, goes to it, never to the egress:
 * "has macvlan mv stacked on it in passthru mode", one part each (as {@link ingressHookParts} says its hooks). A
 * macvlan in another mode, a vlan or an ipvlan takes only the frames for its own address or tag: what the backend
 * sends to the egress still arrives there (nothing said).
 */
export function takerParts(uppers: readonly { name: string; kind?: string; via: string; mode?: string }[]): string[] {
  return uppers
    .filter((u) => u.via === 'stacked' && (u.kind === 'macvlan' || u.kind === 'macvtap') && u.mode === 'passthru')
    .map((u) => `has ${u.kind} ${visible(u.name)} stacked on it in passthru mode`);
}

/**
 * What an egress itself has that takes or sees what arrives on it before this host, besides an XDP program: "E has
 * a tc ingress filter (...)", "E has an nftables ingress chain ...", "E has macvlan mv stacked on it in passthru
 * mode" (their parts joined: "E has A, has B and has C"); undefined when nothing. The interface's own row says this
 * (Controller.interfaceView), the rules of its backends say it after the program ({@link egressHooksPhrase}).
 */
export function egressOwnPhrase(
  egress: string,
  hooks: Omit<PeerXdp, 'where' | 'programs'> | undefined,
  takers: readonly string[] = [],
): string | undefined {
  const parts = [...(hooks ? ingressHookParts(hooks) : []), ...takers];
  if (!parts.length) return undefined;
  return `${egress} ${parts.length > 1 ? `${parts.slice(0, -1).join(', ')} and ${parts[parts.length - 1]}` : parts[0]}`;
}

/**
 * What runs on a backend egress's own receive path that is not ours, said as the subject of a note
 * ({@link foreignEgressStatus}): "another XDP program (id 42, name n, generic mode) is attached to E", "E has a tc
 * ingress filter (...)" ({@link egressOwnPhrase}), both joined by ", and ". `program`: the XDP program (conditions.ts
 * otherProgram), if any.
 */
export function egressHooksPhrase(
  egress: string,
  program: string | undefined,
  hooks: Omit<PeerXdp, 'where' | 'programs'> | undefined,
  takers: readonly string[] = [],
): string | undefined {
  const has = egressOwnPhrase(egress, hooks, takers);
  const xdp = program && `${program} is attached to ${egress}`;
  return xdp && has ? `${xdp}, and ${has}` : (xdp ?? has);
}

/**
 * The note on what an egress's receive path does with what backend `ip` sends back (no `ip`: the backends behind
 * it, as the interface's row says it), from the phrase of what is there ({@link egressHooksPhrase}): "PHRASE: what
 * backend B sends back, its answers and ARP replies included, passes through that program (them) before this host,
 * which may drop it or redirect it elsewhere: whether it arrives cannot be verified"; a passthru device alone:
 * "...goes to that device, not to E: whether it arrives cannot be verified". `counted` false (a backend not known to
 * receive): what arrives on the egress, its ARP replies first, is said to pass there, without the verdict.
 */
export function egressHooksNote(egress: string, phrase: string, ip?: string, counted = true): string {
  const sends =
    ip === undefined
      ? 'what the backends behind it send back, their answers and ARP replies included,'
      : `what backend ${ip} sends back, its answers and ARP replies included,`;
  const arriving = `backend ${ip}'s ARP replies and answers included`;
  const taker = new RegExp(`^${escapeRe(egress)} has (\\S+) (\\S+) stacked on it in passthru mode$`).exec(phrase);
  if (taker) {
    const to = `goes to ${taker[1]} ${taker[2]}, not to ${egress}`;
    return counted
      ? `${phrase}: ${sends} ${to}: whether it arrives cannot be verified`
      : `${phrase}: every unicast frame arriving on ${egress}, ${arriving}, ${to}`;
  }
  // Its XDP program alone: "that program"; tc, nftables or a passthru device there too: "them".
  const through = phrase.includes(`${egress} has `) ? 'them' : 'that program';
  return counted
    ? `${phrase}: ${sends} passes through ${through} before this host, which may drop it or redirect it elsewhere: ` +
        'whether it arrives cannot be verified'
    : `${phrase}: what arrives on it, ${arriving}, passes through ${through} before this host`;
}

/** `x` as a regular expression matching it literally. */
function escapeRe(x: string): string {
  return x.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** An ethertype as tc names it. */
function ethertype(p: number): string {
  const known: Record<number, string> = {
    0x0003: 'all',
    0x0800: 'ip',
    0x86dd: 'ipv6',
    0x0806: 'arp',
    0x8100: '802.1Q',
  };
  return known[p] ?? `0x${p.toString(16).padStart(4, '0')}`;
}

/**
 * The status with each backend whose egress is a veth whose peer runs an XDP program not ours (`peerXdp`:
 * egress name -> {@link peerXdpNote}) saying so, in its message and the rule's warnings: every frame
 * redirected to it is that program's first on the other side, which may drop it while the counters here say
 * redirected (the kernel took it into the veth). What the program does is not known here, so the backend
 * stays in the table, but whether it receives cannot be verified: one in the table with a non-zero weight
 * makes an ACTIVE rule DEGRADED (proto RuleState: ACTIVE is every backend receiving), its BackendsReceiving
 * Unknown (PeerXdpProgram). ACTIVE again once the program is gone.
 */
export function peerXdpStatus(
  s: RuleStatus,
  rule: { backends: readonly { interface: string; weight?: number }[] },
  peerXdp: ReadonlyMap<string, string> | undefined,
): RuleStatus {
  if (!peerXdp?.size || s.state === 'failed') return s;
  const warnings: string[] = [];
  let judged = false;
  const backends = s.backends.map((b, i) => {
    const egress = rule.backends[i]?.interface;
    const note = egress === undefined ? undefined : peerXdp.get(egress);
    if (!note) return b;
    const said = `backend ${b.ip} on ${egress}: ${note}`;
    if (!warnings.includes(said)) warnings.push(said);
    // Only one in the table with a non-zero weight is meant to receive: it is the one not verified.
    const counts = b.receiving && (rule.backends[i].weight ?? 1) > 0;
    if (counts) judged = true;
    const withNote = b.message.includes(note) ? b : { ...b, message: b.message ? `${b.message}; ${note}` : note };
    return counts ? { ...withNote, peerXdp: note } : withNote;
  });
  if (!warnings.length) return s;
  return noted(s, backends, warnings, judged ? warnings : []);
}

/**
 * `s` with its backends as noted (`backends`), `warnings` added to the rule's (once each), and, when `degrading`
 * holds notes (a backend in the table with a non-zero weight is the one not verified), an ACTIVE rule DEGRADED
 * with those notes its message does not say yet added to it.
 */
function noted(s: RuleStatus, backends: RuleStatus['backends'], warnings: string[], degrading: string[]): RuleStatus {
  const notes = degrading.filter((w) => !s.message.includes(w));
  return {
    ...s,
    state: degrading.length && s.state === 'active' ? 'degraded' : s.state,
    message: notes.length ? `${s.message}; ${notes.join('; ')}` : s.message,
    backends,
    warnings: [...s.warnings, ...warnings.filter((w) => !s.warnings.includes(w))],
  };
}

/**
 * The written status with the backends given without a MAC whose route is worth saying (`route`: "ip@iface" ->
 * Dataplane.neighbourRoute): an off-link one's MAC is its gateway's ("MAC resolved from the neighbour table"
 * becomes "off-link: ... MAC of the gateway G ...", "no neighbour entry for IP" names the gateway's entry);
 * one the host routes out of another device says so after its message. `written` itself when none applies.
 */
export function routeNeighbourStatus(
  written: RuleStatus,
  rule: { backends: readonly { ip: string; interface: string; mac: string }[] },
  route: ReadonlyMap<string, string> | undefined,
): RuleStatus {
  if (!route?.size || written.state === 'failed') return written;
  let changed = false;
  const backends = written.backends.map((b, i) => {
    const spec = rule.backends[i];
    const note = spec && spec.mac === '' ? route.get(`${spec.ip}@${spec.interface}`) : undefined;
    if (!note || b.message.includes(note)) return b;
    changed = true;
    const gw = /^off-link: the host routes \S+ via (\S+) on /.exec(note)?.[1];
    if (gw && b.message === 'MAC resolved from the neighbour table') {
      return { ...b, message: `${note}, resolved from its neighbour entry` };
    }
    if (gw && b.message.startsWith(`no neighbour entry for ${spec.ip} on ${spec.interface}: `)) {
      return {
        ...b,
        message:
          `no neighbour entry for the gateway ${gw} on ${spec.interface} (${note}): backend gets no traffic ` +
          'until its MAC is known',
      };
    }
    return { ...b, message: b.message ? `${b.message} (${note})` : note };
  });
  return changed ? { ...written, backends } : written;
}

/**
 * The written status with the backends given without a MAC whose neighbour entry says nothing of the host
 * (`via`: "ip@iface" -> why, Dataplane.neighbourVia: a NOARP egress or entry, an address of this host's) saying
 * so: "MAC resolved by ARP requests of ours" (not from the neighbour table), or why none is known, instead of
 * "MAC resolved from the neighbour table" / "no neighbour entry". `written` itself when none applies.
 */
export function viaNeighbourStatus(
  written: RuleStatus,
  rule: { backends: readonly { ip: string; interface: string; mac: string }[] },
  via: ReadonlyMap<string, string> | undefined,
): RuleStatus {
  if (!via?.size || written.state === 'failed') return written;
  let changed = false;
  const backends = written.backends.map((b, i) => {
    const spec = rule.backends[i];
    const why = spec && spec.mac === '' ? via.get(`${spec.ip}@${spec.interface}`) : undefined;
    if (!why) return b;
    if (b.message === 'MAC resolved from the neighbour table') {
      changed = true;
      return { ...b, message: `MAC resolved by ARP requests of ours, not from the neighbour table: ${why}` };
    }
    if (b.message.startsWith('no neighbour entry for ')) {
      changed = true;
      return {
        ...b,
        message: `no MAC known for ${spec.ip} on ${spec.interface}: ${why}: backend gets no traffic until its MAC is known`,
      };
    }
    return b;
  });
  return changed ? { ...written, backends } : written;
}

/**
 * `s` with every "probing it" (an ARP request of ours outstanding) replaced by why none can be sent: the
 * backend cannot be confirmed, and nothing is being asked.
 */
export function cannotProbeStatus(s: RuleStatus, why: string): RuleStatus {
  const say = (m: string) => m.replace(/probing it/g, `cannot be confirmed: ${why}`);
  if (!/probing it/.test(s.message) && !s.backends.some((b) => /probing it/.test(b.message))) return s;
  return { ...s, message: say(s.message), backends: s.backends.map((b) => ({ ...b, message: say(b.message) })) };
}

/**
 * The status with each backend given without a MAC saying that whether it receives cannot be verified: the
 * neighbour table its MAC comes from could not be read (`why`: the read's error, e.g. EMFILE under an open-files
 * limit). Its place in the datapath is left as it was, and said as last read: in the table with the MAC it
 * holds (BackendsReceiving Unknown, an ACTIVE rule DEGRADED), or out of it with the reason last checked. No
 * verdict the read did not give.
 */
export function unreadNeighbourStatus(
  s: RuleStatus,
  rule: { backends: readonly { ip: string; interface: string; mac: string; weight?: number }[] },
  why: string,
): RuleStatus {
  if (s.state === 'failed') return s;
  let hit: string[] | undefined;
  let changed = false;
  const backends = s.backends.map((b, i) => {
    const spec = rule.backends[i];
    if (!spec || spec.mac !== '') return b;
    changed = true;
    if (!b.receiving) return { ...b, message: `${b.message} (as last checked; cannot be verified now: ${why})` };
    if ((spec.weight ?? 1) > 0) (hit ??= []).push(`${spec.ip}@${spec.interface}`);
    return {
      ...b,
      unverified: true,
      message: `cannot be verified: ${why} (in the datapath with MAC ${b.mac}, as last read from the neighbour table)`,
    };
  });
  if (!changed) return s;
  if (!hit) return { ...s, backends };
  const note = `${hit.length} cannot be verified (${hit.join(', ')}: ${why})`;
  return {
    ...s,
    state: s.state === 'active' ? 'degraded' : s.state,
    message: `${s.message}; ${note}`,
    backends,
    warnings: [...s.warnings, note],
  };
}

/**
 * The one judgement of a rule's status from what was written and what is observed: the written status
 * lowered by every observation (static MACs, neighbour entries, MTUs, unverified egresses, its ingress
 * interfaces missing, occupied, down or without carrier, their device settings). Sets `k.status`,
 * `k.written` (undefined when nothing lowered it) and the ingress problems its conditions are made of.
 * The reconciler's pass and a client's write (its reply) both judge with it, so a reply says what a read
 * right after it says. A FAILED rule keeps its status.
 */
export function judgeRule(
  k: { status: RuleStatus; written?: RuleStatus; ingressProblems?: string[]; ingressDown?: string[] },
  rule: Pick<RuleSpec, 'ingressInterfaces' | 'backends'> & { name?: string },
  o: RuleObservation,
): void {
  k.ingressProblems = rule.ingressInterfaces.flatMap((i) =>
    o.ingressProblems.has(i) ? [o.ingressProblems.get(i)!] : [],
  );
  k.ingressDown = rule.ingressInterfaces.flatMap((i) => (o.ingressDown.has(i) ? [o.ingressDown.get(i)!] : []));
  if (k.status.state === 'failed') return;
  const written = k.written ?? k.status;
  // Every reason an ingress receives nothing through our program: missing, not ours, down.
  let unusable: ReadonlyMap<string, string> = o.ingressProblems;
  if (k.ingressDown.length) {
    const m = new Map(o.ingressProblems);
    for (const i of rule.ingressInterfaces) {
      const why = o.ingressDown.get(i);
      if (why) m.set(i, m.has(i) ? `${m.get(i)}; ${why}` : why);
    }
    unusable = m;
  }
  let observed = observedRuleStatus(
    unverifiedRuleStatus(
      mtuRuleStatus(
        routeNeighbourStatus(
          handSetNeighbourStatus(
            heldNeighbourStatus(
              unansweredNeighbourStatus(
                staticMacStatus(viaNeighbourStatus(written, rule, o.via), rule, o.unverifiedMacs),
                rule,
                o.unanswered,
              ),
              rule,
              o.holds,
            ),
            rule,
            o.handSet,
          ),
          rule,
          o.route,
        ),
      ),
      o.unverifiedEgress,
    ),
    rule.ingressInterfaces,
    unusable as Map<string, string>,
  );
  // An ingress whose device settings drifted and could not be put back: it receives, some frames are lost.
  const drift = rule.ingressInterfaces.flatMap((i) => (o.ingressSettings.has(i) ? [o.ingressSettings.get(i)!] : []));
  if (drift.length && observed.state === 'active') {
    observed = {
      ...observed,
      state: 'degraded',
      message: `${observed.message}; ${drift.join('; ')}`,
      warnings: [...drift, ...observed.warnings],
    };
  }
  // A repair another tool keeps undoing on one of its interfaces (core/fights.ts): each repair holds only until
  // the next undo, so what the rule forwards comes and goes: DEGRADED, named, while the fight lasts.
  // So does one over a kernel entry the rule owns (its port index, match, source, table or backend entries).
  const own = rule.name === undefined ? undefined : o.ruleFights?.get(rule.name);
  if ((o.fights?.size || own) && observed.state !== 'inactive') {
    const seen = new Set<string>();
    const fights: string[] = [];
    const add = (f: string | undefined) => {
      if (f && !seen.has(f)) {
        seen.add(f);
        fights.push(f);
      }
    };
    add(own);
    for (const i of [...rule.ingressInterfaces, ...rule.backends.map((b) => b.interface)]) add(o.fights?.get(i));
    if (fights.length) {
      observed = {
        ...observed,
        state: 'degraded',
        message: `${observed.message}; ${fights.join('; ')}`,
        warnings: [...fights, ...observed.warnings],
      };
    }
  }
  observed = foreignEgressStatus(observed, rule, o.foreignEgress);
  observed = tapDropStatus(observed, rule, o.tapDrops);
  observed = peerXdpStatus(observed, rule, o.peerXdp);
  if (o.neighbourUnread) observed = unreadNeighbourStatus(observed, rule, o.neighbourUnread);
  observed = loopUnknownStatus(observed, rule, o.loopUnknown);
  if (o.arpUnavailable) observed = cannotProbeStatus(observed, o.arpUnavailable);
  k.written = observed === written ? undefined : written;
  k.status = observed;
}
