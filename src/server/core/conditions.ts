/**
 * Per-object conditions in the Kubernetes convention (metav1.Condition):
 * type, status, reason, message and the time the status last changed. The
 * inputs come from what the reconciler and the transactions observed (rule
 * status, ingress problems, attachments); this module only keeps the
 * transition times. No I/O.
 */
import type { Condition, ConditionStatus } from './model.js';
import { isMtuUnverified, isMtuWarning } from './rule-status.js';

/** A condition without its time: what was observed now. */
export interface ObservedCondition {
  type: string;
  status: ConditionStatus;
  reason: string;
  message: string;
}

/** Conditions of every object, by object key ("rule/web", "if/eth0", "link/a|b"), with their transition times. */
export class ConditionStore {
  /**
   * Each object's conditions in the order each type was first observed: an array, not a Map by type (an object has at most a
   * handful; with 10 000 rules the Maps' tables were ~3 MB of heap, BENCHMARKS.md "Memory at rest").
   */
  private readonly byObject = new Map<string, Condition[]>();

  /**
   * The conditions of an object as observed at `at` (the write, the reconciler pass or the read that
   * observed them; undefined: a time the daemon cannot know, the state found at its start): a condition
   * keeps its lastTransitionTime while its status stays the same, and takes `at` when it changes.
   */
  set(key: string, observed: ObservedCondition[], at: number | undefined): Condition[] {
    let cur = this.byObject.get(key);
    if (!cur) this.byObject.set(key, (cur = []));
    const list = cur;
    return observed.map((o) => {
      // In the order each type was first observed (a type not observed now is kept, as it was).
      const i = list.findIndex((c) => c.type === o.type);
      const prev = i >= 0 ? list[i] : undefined;
      if (prev && prev.status === o.status && prev.reason === o.reason && prev.message === o.message) return prev;
      // Every field named (not spread): one shape for all, its fields in the object itself.
      const c: Condition = {
        type: o.type,
        status: o.status,
        reason: o.reason,
        message: o.message,
        lastTransitionTime: prev && prev.status === o.status ? prev.lastTransitionTime : at,
      };
      if (i >= 0) list[i] = c;
      else list.push(c);
      return c;
    });
  }

  /** The conditions last observed for an object (undefined: never observed). */
  get(key: string): Condition[] | undefined {
    const cur = this.byObject.get(key);
    return cur && [...cur];
  }

  /** Forget an object (deleted: one created later under its name starts anew). */
  forget(key: string): void {
    this.byObject.delete(key);
  }

  /** Forget objects that no longer exist: those not in `keys` (of the kinds `prefixes` names, when given). */
  retain(keys: Set<string>, prefixes?: readonly string[]): void {
    for (const k of this.byObject.keys()) {
      if (prefixes && !prefixes.some((p) => k.startsWith(p))) continue;
      if (!keys.has(k)) this.byObject.delete(k);
    }
  }
}

const cond = (type: string, ok: boolean, reason: string, message: string): ObservedCondition => ({
  type,
  status: ok ? 'True' : 'False',
  reason,
  message,
});

/**
 * An XDP program on an interface that is not ours, as the daemon knows it: another tool's ("another XDP
 * program (id 42)"), or one it cannot identify, with why ("an XDP program (id 42) that xdpctld cannot
 * identify (...)"). `mode`: the attach mode, when known; `name`: the program's name (bpf_prog_info), when read.
 */
export function otherProgram(
  progId: number,
  unidentified?: string,
  mode?: string,
  otherDaemon?: string,
  name?: string,
): string {
  const named = name ? `id ${progId}, name ${name}` : `id ${progId}`;
  const id = mode ? `${named}, ${mode} mode` : named;
  return unidentified
    ? `an XDP program (${id}) that xdpctld cannot identify (${unidentified})`
    : `another XDP program (${id}${otherDaemon ? `: ${otherDaemon}` : ''})`;
}

/** Reason code of an ingress problem text (resync.ts writes these texts). */
export function ingressReason(problem: string): string {
  if (/^(\S+ -> \S+: )?ingress \S+ (is down|has no carrier)/.test(problem)) return 'IngressDown';
  if (/^interface \S+ was moved to /.test(problem)) return 'InterfaceMoved';
  if (/does not exist/.test(problem)) return 'InterfaceMissing';
  if (/XDP program \(id \d+[^)]*\) that xdpctld cannot identify/.test(problem)) return 'UnidentifiedProgram';
  if (/another XDP program/.test(problem)) return 'ForeignProgram';
  if (/ -> .*(is down|no carrier|redirects|ndo_xdp_xmit|cannot check)/.test(problem)) return 'EgressCannotTransmit';
  return 'NotAttached';
}

/**
 * The FramesFit condition: True when every egress (and the veth peer behind
 * it, wherever it lives) can carry the largest frame its ingress accepts;
 * False (reason EgressMTUTooSmall) naming both MTUs and the largest datagram
 * that passes; Unknown (reason PeerMTUUnverified) when a veth peer's MTU
 * cannot be read and nothing is known to be too small. From the MTU warnings
 * (rule-status.ts mtuWarnings, resync.ts for links); other texts are ignored.
 */
export function framesFitCondition(mtuWarnings: readonly string[]): ObservedCondition {
  const small = mtuWarnings.filter(isMtuWarning);
  if (small.length) return cond('FramesFit', false, 'EgressMTUTooSmall', small.join('; '));
  const unverified = mtuWarnings.filter(isMtuUnverified);
  if (unverified.length) {
    return { type: 'FramesFit', status: 'Unknown', reason: 'PeerMTUUnverified', message: unverified.join('; ') };
  }
  return cond('FramesFit', true, 'MTUFits', 'every egress MTU (and veth peer MTU) is at least the ingress MTU');
}

/**
 * The reason of a condition made Unknown by what runs on a veth egress's peer (rule-status.ts peerXdpNote texts):
 * PeerXdpProgram when an XDP program is among them, PeerTcFilter when tc (filters, tcx programs) is, else
 * PeerNftChain (nftables chains only).
 */
export function peerReason(notes: readonly string[]): string {
  if (notes.some((n) => / runs XDP programs? id /.test(n))) return 'PeerXdpProgram';
  if (notes.some((n) => / has (a )?tcx? ingress (filters?|programs?) /.test(n))) return 'PeerTcFilter';
  return 'PeerNftChain';
}

/**
 * The reason of a BackendsReceiving made Unknown by what runs on a backend egress's own receive path (rule-status.ts
 * foreignEgressStatus notes): EgressForeignProgram when an XDP program not ours is attached, EgressTcFilter when tc
 * (filters, tcx programs) is, EgressNftChain when an nftables chain is, else EgressPassthruDevice (a macvlan or
 * macvtap in passthru mode stacked on it, which takes every unicast frame arriving on it).
 */
export function egressReason(notes: readonly string[]): string {
  if (notes.some((n) => /^(another|an) XDP program /.test(n))) return 'EgressForeignProgram';
  if (notes.some((n) => / has (a )?tcx? ingress (filters?|programs?) /.test(n))) return 'EgressTcFilter';
  if (notes.some((n) => / has (an )?nftables ingress chains? /.test(n))) return 'EgressNftChain';
  return 'EgressPassthruDevice';
}

/** A rule's conditions from its status and the problems of its ingress interfaces. */
export function ruleConditions(
  s: {
    state: string;
    message: string;
    warnings?: readonly string[];
    backends: {
      receiving: boolean;
      ip: string;
      interface: string;
      message: string;
      unverified?: boolean;
      conflict?: boolean;
      dropping?: string;
      peerXdp?: string;
      egressProgram?: string;
    }[];
  },
  weights: number[],
  ingressProblems: string[],
  ingressDown: string[] = [],
): ObservedCondition[] {
  const out = s.backends.filter((b, i) => !b.receiving && (weights[i] ?? 1) > 0);
  const unverified = s.backends.filter((b) => b.unverified);
  const dropping = s.backends.filter((b, i) => b.dropping && b.receiving && (weights[i] ?? 1) > 0);
  const peerXdp = s.backends.filter((b, i) => b.peerXdp && b.receiving && (weights[i] ?? 1) > 0);
  const egressProgram = s.backends.filter((b, i) => b.egressProgram && b.receiving && (weights[i] ?? 1) > 0);
  const failed = s.state === 'failed';
  return [
    cond(
      'Ready',
      s.state === 'active',
      s.state === 'active' ? 'Active' : s.state[0].toUpperCase() + s.state.slice(1),
      s.message,
    ),
    failed
      ? { type: 'ProgramAttached', status: 'Unknown', reason: 'Failed', message: s.message }
      : cond(
          'ProgramAttached',
          ingressProblems.length === 0,
          ingressProblems.length ? ingressReason(ingressProblems[0]) : 'Attached',
          ingressProblems.length ? ingressProblems.join('; ') : 'our XDP program runs on every ingress interface',
        ),
    failed
      ? { type: 'IngressReceiving', status: 'Unknown', reason: 'Failed', message: s.message }
      : cond(
          'IngressReceiving',
          ingressDown.length === 0,
          ingressDown.length ? 'IngressDown' : 'Up',
          ingressDown.length ? ingressDown.join('; ') : 'every ingress interface that exists is up with carrier',
        ),
    failed
      ? { type: 'BackendsReceiving', status: 'Unknown', reason: 'Failed', message: s.message }
      : out.length === 0 && dropping.length
        ? {
            // In the table, but the kernel drops what is redirected to them (a tap whose reader does not read).
            type: 'BackendsReceiving',
            status: 'False',
            reason: 'FramesDropped',
            message: dropping.map((b) => `${b.ip}@${b.interface}: ${b.dropping}`).join('; '),
          }
        : out.length === 0 && unverified.length
          ? {
              type: 'BackendsReceiving',
              status: 'Unknown',
              // Two MACs answer ARP for a backend's address: which host receives cannot be known.
              reason: unverified.some((b) => b.conflict) ? 'AddressConflict' : 'BackendsUnverified',
              message: unverified.map((b) => `${b.ip}@${b.interface}: ${b.message}`).join('; '),
            }
          : out.length === 0 && peerXdp.length
            ? {
                // In the table, but an XDP program not ours, a tc filter or an nftables chain on its veth peer sees
                // (and may drop) what we redirect.
                type: 'BackendsReceiving',
                status: 'Unknown',
                reason: peerReason(peerXdp.map((b) => b.peerXdp!)),
                message: peerXdp.map((b) => `${b.ip}@${b.interface}: ${b.peerXdp}`).join('; '),
              }
            : out.length === 0 && egressProgram.length
              ? {
                  // In the table, but an XDP program not ours on its egress takes what it sends back first (another
                  // tool's, another xdpctld's cross-connect): whether its answers arrive is not known.
                  type: 'BackendsReceiving',
                  status: 'Unknown',
                  reason: egressReason(egressProgram.map((b) => b.egressProgram!)),
                  message: egressProgram.map((b) => `${b.ip}@${b.interface}: ${b.egressProgram}`).join('; '),
                }
              : cond(
                  'BackendsReceiving',
                  out.length === 0,
                  out.length ? 'BackendsNotReceiving' : 'AllReceiving',
                  out.length
                    ? out.map((b) => `${b.ip}@${b.interface}: ${b.message}`).join('; ')
                    : 'every backend with a non-zero weight is in the backend table',
                ),
    failed
      ? { type: 'FramesFit', status: 'Unknown', reason: 'Failed', message: s.message }
      : framesFitCondition(s.warnings ?? []),
  ];
}

/** The interface facts its conditions come from ({@link interfaceConditions}). */
export interface InterfaceFacts {
  present: boolean;
  /** Why it is not present, when more is known than that (moved to another network namespace: core/moved.ts). */
  absent?: string;
  name: string;
  effectiveMode: string;
  ours: boolean;
  /** Whose a foreign program is, when another xdpctld's (see XdpStatus.otherDaemon). */
  otherDaemon?: string;
  progId: number;
  /** Why the program attached cannot be identified (see XdpStatus.unidentified). */
  unidentified?: string;
  /** The id of the program in use: one of ours with another id is an earlier one (not yet replaced). */
  current?: number;
  detachError?: string;
  used: boolean;
  /** Why it runs in another mode than asked (the attach's warning), if it does. */
  modeWarning?: string;
  /** What sends frames out of it (its "…/egress" users: backends' rules, links into it); empty: none. */
  egressFor?: readonly string[];
  /**
   * Why it cannot transmit what they send, if it cannot: down, no carrier, a link direction that cannot, or
   * what its users' backend judgements found (no native XDP redirects, every redirected frame dropped).
   */
  egressProblems?: readonly string[];
  /** Why it cannot be verified that it takes what they send (a veth peer that cannot be inspected), if so. */
  egressUnverified?: readonly string[];
  /** Its users' MTU warnings about it (rule-status.ts mtuWarnings, resync.ts for links): its FramesFit. */
  egressFrames?: readonly string[];
}

/**
 * An interface's conditions, each for what it is used for: ProgramAttached where our program is meant to
 * run (an ingress, a link source) or some program runs; EgressReady where rules or links send frames out of
 * it (True: up with carrier and nothing known against it; False naming why). An interface used only as an
 * egress, with no program, has no ProgramAttached condition: none is meant there.
 */
export function interfaceConditions(i: InterfaceFacts): ObservedCondition[] {
  const egress = i.egressFor?.length ? [egressCondition(i), egressFramesCondition(i)] : [];
  if (!i.used && i.effectiveMode === 'none' && egress.length) return egress;
  return [programCondition(i), ...egress];
}

/** The users' text of an egress's users array (the controller keeps one array per version of the rules). */
const usersTexts = new WeakMap<readonly string[], string>();

function egressCondition(i: InterfaceFacts): ObservedCondition {
  const of = i.egressFor ?? [];
  let users = usersTexts.get(of);
  if (users === undefined) {
    users = of.map((u) => u.replace(/\/egress$/, '')).join(', ');
    usersTexts.set(of, users);
  }
  if (!i.present) {
    const why = i.absent ?? `interface ${i.name} does not exist`;
    return cond(
      'EgressReady',
      false,
      i.absent ? ingressReason(i.absent) : 'InterfaceMissing',
      `${why} (egress of ${users})`,
    );
  }
  const problems = i.egressProblems ?? [];
  if (problems.length) {
    const reason = /is down|no carrier/.test(problems[0]) ? 'EgressDown' : 'EgressCannotTransmit';
    return cond('EgressReady', false, reason, `${problems.join('; ')} (egress of ${users})`);
  }
  const unverified = i.egressUnverified ?? [];
  if (unverified.length) {
    return {
      type: 'EgressReady',
      status: 'Unknown',
      reason: 'EgressUnverified',
      message: `up with carrier; ${unverified.join('; ')} (egress of ${users})`,
    };
  }
  return cond('EgressReady', true, 'Up', `up with carrier (egress of ${users})`);
}

/**
 * FramesFit of an egress: what its users' MTU warnings say about it ({@link framesFitCondition}: False when
 * its MTU, or its veth peer's, is below an ingress's; Unknown when a peer's MTU cannot be read). Not judged
 * while it is missing.
 */
function egressFramesCondition(i: InterfaceFacts): ObservedCondition {
  if (!i.present) {
    return {
      type: 'FramesFit',
      status: 'Unknown',
      reason: 'InterfaceMissing',
      message: `interface ${i.name} does not exist`,
    };
  }
  const c = framesFitCondition(i.egressFrames ?? []);
  return c.status === 'True'
    ? { ...c, message: 'its MTU (and its veth peer MTU) is at least every ingress MTU sending to it' }
    : c;
}

/** The ProgramAttached condition of an interface. */
function programCondition(i: InterfaceFacts): ObservedCondition {
  if (!i.present) {
    if (i.absent) return cond('ProgramAttached', false, ingressReason(i.absent), i.absent);
    return cond('ProgramAttached', false, 'InterfaceMissing', `interface ${i.name} does not exist`);
  }
  if (i.effectiveMode !== 'none' && !i.ours) {
    return cond(
      'ProgramAttached',
      false,
      i.unidentified ? 'UnidentifiedProgram' : 'ForeignProgram',
      `${otherProgram(i.progId, i.unidentified, undefined, i.otherDaemon)} is attached; it is left alone`,
    );
  }
  if (i.effectiveMode !== 'none' && i.current !== undefined && i.progId !== i.current) {
    return cond(
      'ProgramAttached',
      false,
      'EarlierProgram',
      `an earlier program of this datapath (id ${i.progId}) runs here, not the one in use (id ${i.current})`,
    );
  }
  if (!i.used && i.detachError) {
    return cond(
      'ProgramAttached',
      true,
      'DetachFailed',
      `no longer used; detaching failed (retried): ${i.detachError}`,
    );
  }
  if (i.effectiveMode === 'none') return cond('ProgramAttached', false, 'NotAttached', 'no XDP program is attached');
  return cond(
    'ProgramAttached',
    true,
    'Attached',
    `our XDP program runs in ${i.effectiveMode} mode${i.modeWarning ? `: ${i.modeWarning}` : ''}`,
  );
}

/** A link's Active condition, and FramesFit from its MTU warnings ({@link framesFitCondition}). */
export function linkConditions(
  active: boolean[],
  problems: string[],
  unverified: string[] = [],
  mtuWarnings: readonly string[] = [],
  peers: readonly string[] = [],
): ObservedCondition[] {
  return [linkActive(active, problems, unverified, peers), framesFitCondition(mtuWarnings)];
}

function linkActive(
  active: boolean[],
  problems: string[],
  unverified: string[],
  peers: readonly string[],
): ObservedCondition {
  if (problems.length) return cond('Active', false, ingressReason(problems[0]), problems.join('; '));
  if (active.every(Boolean) && unverified.length) {
    return { type: 'Active', status: 'Unknown', reason: 'EgressUnverified', message: unverified.join('; ') };
  }
  // In the datapath, the kernel takes its frames into the egress veth, but another tool's program or filter on the
  // veth's peer sees them first and may drop them all: whether they are delivered is not known.
  if (active.every(Boolean) && peers.length) {
    return { type: 'Active', status: 'Unknown', reason: peerReason(peers), message: peers.join('; ') };
  }
  if (active.every(Boolean)) return cond('Active', true, 'Forwarding', 'every direction is in the datapath');
  return cond('Active', false, 'NotInDatapath', 'a direction is not in the datapath yet');
}
