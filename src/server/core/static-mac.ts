/**
 * What a backend's static MAC means, and how the reconciler checks it. A
 * backend given with a MAC (`ip,mac,iface`) is the operator's statement that
 * the host at `ip` behind `iface` receives Ethernet frames sent to `mac`:
 * xdpctld writes that MAC as given and never resolves it. It does not trust
 * it blindly either: each pass compares it with what the host shows, and
 * only definitive evidence counts:
 *  - the veth peer, when `iface` is a veth (its peer in the daemon's network
 *    namespace or another one, read there by its namespace id) whose peer
 *    takes no frames for other MACs (not promiscuous, no upper device such
 *    as a bridge, bond or macvlan): a frame to another MAC than the peer's
 *    own is dropped there (PACKET_OTHERHOST), so another MAC contradicts; the
 *    peer's own MAC confirms only while the peer's namespace holds `ip` (the
 *    frame is delivered there), else the neighbour evidence below decides. A
 *    peer whose namespace cannot be read (no permission, gone) is no
 *    evidence: the reason is said with "cannot be verified";
 *  - a neighbour (ARP) entry for `ip` on `iface` that the kernel confirmed
 *    within {@link FRESH_S} seconds (REACHABLE: the host answered from that
 *    MAC). Entries set by hand (PERMANENT, NOARP) are not evidence of the
 *    host; nor, against the static MAC, is a REACHABLE entry whose MAC has
 *    not answered a probe of ours (another tool may write `nud reachable`):
 *    it is probed at once, and the answer (or its absence) decides. An older or unconfirmed entry is re-probed (NUD_PROBE: a unicast
 *    ARP request to the MAC it holds), a missing or failed one resolved (a
 *    broadcast ARP request), so that fresh evidence follows.
 * A contradiction takes the backend out of the rule's table, the reason
 * naming both MACs; it comes back when the evidence agrees again (the peer
 * has the MAC, or a freshly confirmed entry holds it). While no evidence is
 * definitive the last definitive verdict stands, for at most
 * {@link STATIC_MAC_HOLD_MS} (the hold a MAC-less backend's MAC gets): a
 * host that stopped answering (it gave the address up) is not confirmed by
 * an answer it gave before; then the MAC cannot be verified. With none yet, the
 * backend stays in the table (nothing observed contradicts the operator)
 * and its status says the MAC is not confirmed yet, for
 * {@link UNVERIFIED_GRACE_MS} from its first judgement, then that it cannot be
 * verified: either way its BackendsReceiving is Unknown and its rule DEGRADED,
 * not ACTIVE (proto RuleState: whether a backend receives cannot be verified;
 * nothing observed says it receives). A client's change judges the static MACs
 * it names for the first time as a pass does, asks them and waits up to
 * {@link STATIC_MAC_WAIT_MS} for the answers, so that its reply says what a
 * read right after it says (resync.ts judgeChangeStaticMacs).
 * Pure: no I/O.
 */

/** A neighbour entry's age, in seconds since the kernel last confirmed it, below which it is evidence. */
export const FRESH_S = 10;

/** A veth egress's peer (in the daemon's namespace or another), as read for a static MAC check. */
export interface PeerMac {
  name: string;
  mac: string;
  /** Promiscuous, or with an upper device (bridge, bond, macvlan): it may take frames for other MACs. */
  takesOthers: boolean;
  /**
   * The IPv4 addresses the peer's host holds: those of the namespace the peer is in (the daemon's, or the other
   * one, read there with the peer), so a frame it takes for one of them is delivered; undefined: not read (taken
   * as holding the backend's). The peer's MAC confirms a static MAC only while the backend's address is among them: a
   * peer that gave the address up drops the frames after taking them (the review's 0/50, ACTIVE).
   */
  ips?: readonly string[];
}

/**
 * A veth egress whose peer is in another network namespace that could not be read (the kernel refused the
 * dump: no permission over the namespace, or it is gone; the peer not found there): why, for "cannot be verified".
 */
export interface PeerUnreadable {
  unreadable: string;
}

/** What a veth egress's peer read gives: the peer, or why it could not be read. */
export type PeerRead = PeerMac | PeerUnreadable;

/** A neighbour entry as read (ip -s neigh). */
export interface NeighbourFact {
  mac?: string;
  states: readonly string[];
  /** Seconds since the last confirmation. */
  confirmed?: number;
  /**
   * Whether its MAC answered a probe of ours (Dataplane.neighbourAnswered); undefined: not known (taken as
   * answered). An entry another tool wrote as REACHABLE looks freshly confirmed without any answer.
   */
  answered?: boolean;
  /**
   * Set when the kernel's entry says nothing of the host (Dataplane.neighbourVia: a NOARP egress or entry, an
   * address of this host's): why; MAC and states are then what ARP requests of ours found.
   */
  via?: string;
}

/**
 * 'conflict': the static MAC answers ARP requests of ours for the address while another MAC does too (an
 * address conflict, RFC 5227: another interface of the same host, Linux answering on every interface for any
 * address of its own with the default arp_ignore=0; a duplicate host; a spoofer). Frames to the static MAC
 * reach a host that answers for the address, so it stays in the table; which host receives cannot be known,
 * so its rule is DEGRADED (BackendsReceiving Unknown, AddressConflict), as for a MAC-less backend's conflict.
 */
export type StaticMacVerdict = 'confirmed' | 'contradicted' | 'conflict' | 'unverified';

/** What one observation says about a static MAC, and what to ask the kernel for more. */
export interface StaticMacObservation {
  verdict: StaticMacVerdict;
  /** contradicted, conflict: the reason (both MACs); unverified: why it cannot be verified; confirmed: by what. */
  why: string;
  /** 'reprobe': verify the entry the kernel holds; 'resolve': resolve a missing or failed entry. */
  ask?: 'reprobe' | 'resolve';
  /**
   * MACs to ask by ARP requests of ours (once a second), the static one first: another MAC answered for the
   * address, and only the static MAC's own answer (or silence) tells a contradiction from an address conflict;
   * in a conflict, every MAC of it (its end is one of them falling silent).
   */
  askMacs?: string[];
}

/**
 * What ARP requests of ours for the backend's address found (Dataplane.neighbourAnswers). Undefined (no such
 * request can be sent: no CAP_NET_RAW, a fake): another MAC's answer alone decides, as it did before.
 */
export interface StaticMacHeard {
  /** Those to the static MAC: 'answers' (lately), 'silent' (the last one unanswered), 'unasked' (not lately). */
  own: 'answers' | 'silent' | 'unasked';
  /** The other MACs that answered one lately, none to them unanswered since (lower case). */
  others: readonly string[];
}

const same = (a: string, b: string) => a.toLowerCase() === b.toLowerCase();

/**
 * Judge the static MAC `mac` of the backend `ip` behind `iface` from the peer, the neighbour entry and what ARP
 * requests of ours for the address found (`heard`). Another MAC that answered for the address (the entry's,
 * REACHABLE and answered; one our requests found) contradicts the static MAC only when the static MAC, asked,
 * does not answer: both answering is an address conflict (Linux answers ARP on every interface for any address
 * of its own: a host with two interfaces on one link answers from both, and a frame to either is delivered),
 * and one not asked yet is not judged on the other's word alone.
 */
export function observeStaticMac(
  ip: string,
  iface: string,
  mac: string,
  peerRead: PeerRead | undefined,
  entry: NeighbourFact | undefined,
  heard?: StaticMacHeard,
): StaticMacObservation {
  const unreadable = peerRead && 'unreadable' in peerRead ? peerRead.unreadable : undefined;
  const peer = unreadable === undefined ? (peerRead as PeerMac | undefined) : undefined;
  const obs = observeWithPeer(ip, iface, mac, peer, entry, heard);
  // The peer could not be read: no evidence either way, and the status says why.
  return unreadable !== undefined && obs.verdict === 'unverified' ? { ...obs, why: `${obs.why}; ${unreadable}` } : obs;
}

/** The text of an address conflict: the static `mac` and `others` (each with where it was seen) answer for `ip`. */
export function staticConflictWhy(
  ip: string,
  iface: string,
  mac: string,
  others: readonly { mac: string; where: string }[],
): string {
  const m = mac.toLowerCase();
  return (
    `address conflict: ${ip} answers ARP on ${iface} with ${m} (the static MAC: it answers ARP requests of ours to ` +
    `it on ${iface}) and ${others.map((o) => `${o.mac} (${o.where})`).join(' and ')}: two MACs answer for one ` +
    "address (RFC 5227: another interface of the same host, with Linux's default arp_ignore=0, a duplicate host " +
    `or a spoofer); frames go to the static ${m} as given (kept in the table), which host receives them cannot be known`
  );
}

/**
 * Another MAC (`other`, seen as `where` says) answered for `ip` on `iface`, and the static `mac` is not known to
 * answer too (that is an address conflict, decided before): a contradiction (`contradicted`, the text of the
 * evidence) only when `mac`, asked, does not answer (`heard.own` 'silent', or nothing of ours can ask); not
 * judged while it has not been asked yet.
 */
function otherAnswered(
  ip: string,
  iface: string,
  mac: string,
  other: string,
  where: string,
  contradicted: string,
  heard: StaticMacHeard | undefined,
): StaticMacObservation {
  const m = mac.toLowerCase();
  if (heard === undefined) return { verdict: 'contradicted', why: contradicted, ask: 'reprobe' };
  if (heard.own === 'silent') {
    return {
      verdict: 'contradicted',
      why: `${contradicted}; ${m} asked by ARP requests of ours: no answer`,
      ask: 'reprobe',
      askMacs: [m],
    };
  }
  return {
    verdict: 'unverified',
    why:
      `static MAC ${m} cannot be verified: ${ip} answers ARP on ${iface} with ${other.toLowerCase()} (${where}); ` +
      `whether ${m} answers too is not known yet (asking it: an ARP request of ours; both answering is an address ` +
      'conflict, only the other a contradiction)',
    ask: 'reprobe',
    askMacs: [m],
  };
}

function observeWithPeer(
  ip: string,
  iface: string,
  mac: string,
  peer: PeerMac | undefined,
  entry: NeighbourFact | undefined,
  heard: StaticMacHeard | undefined,
): StaticMacObservation {
  // The peer has the MAC but its host does not hold the address: the frames are taken and dropped there.
  const peerLacksIp = !!peer && !peer.takesOthers && same(peer.mac, mac) && !!peer.ips && !peer.ips.includes(ip);
  if (peer && !peer.takesOthers && !peerLacksIp) {
    return same(peer.mac, mac)
      ? { verdict: 'confirmed', why: `the veth peer ${peer.name} of ${iface} has MAC ${mac} and its host holds ${ip}` }
      : {
          verdict: 'contradicted',
          why:
            `static MAC contradicted: the veth peer ${peer.name} of ${iface} has MAC ${peer.mac.toLowerCase()}, ` +
            `not the static ${mac.toLowerCase()} (frames to ${mac.toLowerCase()} are dropped there)`,
        };
  }
  const states = entry?.states ?? [];
  const fresh = freshEntry(entry);
  if (heard?.own === 'answers') {
    // The static MAC answers ARP requests of ours: does another MAC answer for the address too?
    const others: { mac: string; where: string }[] = [];
    // Said the same whichever of them the kernel's entry holds (it follows the last that answered): the status
    // does not change at every answer.
    const where = `it answers ARP requests of ours on ${iface}${entry?.via ? `: ${entry.via}` : ''}`;
    if (entry?.mac && !same(entry.mac, mac) && (entry.via || (fresh && entry.answered !== false)))
      others.push({ mac: entry.mac.toLowerCase(), where });
    for (const o of heard.others) {
      if (!same(o, mac) && !others.some((x) => same(x.mac, o))) others.push({ mac: o.toLowerCase(), where });
    }
    others.sort((a, b) => (a.mac < b.mac ? -1 : a.mac > b.mac ? 1 : 0));
    if (others.length) {
      return {
        verdict: 'conflict',
        why: staticConflictWhy(ip, iface, mac, others),
        ask: entry?.mac ? 'reprobe' : undefined,
        askMacs: [mac.toLowerCase(), ...others.map((o) => o.mac)],
      };
    }
  }
  if (entry?.via) {
    // Only what ARP requests of ours found counts: the kernel's entry is no evidence (or there is none).
    const m = mac.toLowerCase();
    if (!entry.mac) {
      return {
        verdict: 'unverified',
        why: `static MAC ${m} cannot be verified: ${entry.via}`,
        ask: /\(not asked\)/.test(entry.via) ? undefined : 'resolve',
      };
    }
    return same(entry.mac, mac)
      ? {
          verdict: 'confirmed',
          why: `${m} answers ARP requests of ours for ${ip} on ${iface} (${entry.via})`,
          ask: 'reprobe',
        }
      : otherAnswered(
          ip,
          iface,
          mac,
          entry.mac,
          `it answers ARP requests of ours on ${iface}: ${entry.via}`,
          `static MAC contradicted: ${ip} answers ARP requests of ours on ${iface} from ` +
            `${entry.mac.toLowerCase()}, not from the static ${m} (frames to ${m} do not reach it; ${entry.via})`,
          heard,
        );
  }
  if (states.includes('PERMANENT') || states.includes('NOARP')) {
    return {
      verdict: 'unverified',
      why: `static MAC ${mac.toLowerCase()} cannot be verified: the neighbour entry for ${ip} on ${iface} was set by hand (${states.join(', ')})`,
    };
  }
  if (fresh && entry!.answered === false && !same(entry!.mac!, mac)) {
    // Not evidence yet: nothing shows the host answers from that MAC (an entry written by another tool looks
    // the same). Probed now; a contradiction needs the answer.
    return {
      verdict: 'unverified',
      why:
        `static MAC ${mac.toLowerCase()} cannot be verified: the neighbour entry for ${ip} on ${iface} holds ` +
        `${entry!.mac!.toLowerCase()} (REACHABLE), which no ARP probe of ours has had answered yet (probing it)`,
      ask: 'reprobe',
    };
  }
  if (fresh) {
    return same(entry!.mac!, mac)
      ? {
          verdict: 'confirmed',
          why: `the neighbour entry for ${ip} on ${iface} is REACHABLE with MAC ${mac}`,
          ask: 'reprobe',
        }
      : otherAnswered(
          ip,
          iface,
          mac,
          entry!.mac!,
          `its neighbour entry on ${iface}, REACHABLE, whose MAC answers ARP requests of ours`,
          `static MAC contradicted: ${ip} answers ARP on ${iface} from ${entry!.mac!.toLowerCase()} (its ` +
            `neighbour entry is REACHABLE), not from the static ${mac.toLowerCase()} ` +
            `(frames to ${mac.toLowerCase()} do not reach it)`,
          heard,
        );
  }
  const unconfirmed = !entry?.mac || states.includes('FAILED') || states.includes('INCOMPLETE');
  return {
    verdict: 'unverified',
    why:
      `static MAC ${mac.toLowerCase()} cannot be verified: ` +
      (unconfirmed
        ? `no resolved neighbour entry for ${ip} on ${iface} (ARP asked; no answer yet)`
        : `the neighbour entry for ${ip} on ${iface} is not freshly confirmed (${states.join(', ') || 'no state'}; re-probed)`) +
      (peerLacksIp
        ? `; the veth peer ${peer!.name} of ${iface} has MAC ${mac.toLowerCase()}, but no address ${ip} is held there`
        : peer
          ? `; the veth peer ${peer.name} may take frames for other MACs (promiscuous or under another device)`
          : ''),
    ask: unconfirmed ? 'resolve' : states.some((s) => s === 'PROBE' || s === 'DELAY') ? undefined : 'reprobe',
  };
}

/**
 * The verdict kept per backend (state.staticMacs): the last definitive one stands while nothing is.
 * A class, not an object literal: in a daemon that had adopted 10 000 rules at start, every
 * `{ mac, verdict, why, since }` literal made here came out in V8's dictionary mode (a hash table of its
 * properties, ~450 bytes each instead of ~40: 18 MB for 40 000 static-MAC backends, heap snapshot at
 * rest; seen with %HasFastProperties at creation, not reproduced in a small process). A class's
 * instances take their own hidden class, whatever other objects did before.
 */
export class StaticMacState {
  constructor(
    /** The static MAC judged (a rule update with another MAC starts over). */
    readonly mac: string,
    readonly verdict: StaticMacVerdict,
    readonly why: string,
    /** When this static MAC was first judged (ms, monotonic: core/clock.ts): {@link UNVERIFIED_GRACE_MS} counts from it. */
    readonly since?: number,
    /**
     * A definitive verdict kept while nothing definitive is observed: since when (ms, monotonic); it stands
     * for {@link STATIC_MAC_HOLD_MS} from then. Undefined: the last observation was this verdict's evidence.
     */
    readonly heldSince?: number,
  ) {}
}

/**
 * How long a definitive verdict (confirmed, contradicted) stands while nothing definitive is observed (ms):
 * the hold a MAC-less backend's MAC gets after its last answer (neighbour-hold.ts NEIGHBOUR_HOLD_MS). Then the
 * static MAC cannot be verified: an answer given before is not evidence that the host still answers.
 */
export const STATIC_MAC_HOLD_MS = 8000;

/** The next kept verdict from the last one and an observation (`now`: ms, monotonic). */
export function stepStaticMac(
  prev: StaticMacState | undefined,
  mac: string,
  obs: StaticMacObservation,
  now = 0,
): StaticMacState {
  const fresh = !prev || !same(prev.mac, mac);
  const since = fresh ? now : prev.since;
  if (obs.verdict === 'unverified' && !fresh && prev.verdict !== 'unverified') {
    // Nothing definitive now: the last definitive verdict stands while evidence is being refreshed, for at
    // most STATIC_MAC_HOLD_MS from the first observation without it.
    if (prev.heldSince === undefined) return new StaticMacState(prev.mac, prev.verdict, prev.why, since, now);
    if (now - prev.heldSince < STATIC_MAC_HOLD_MS && now >= prev.heldSince) return prev;
    // Withdrawn: what is observed now (why it cannot be verified) is all there is.
    return new StaticMacState(mac, 'unverified', obs.why, since);
  }
  if (!fresh && prev.verdict === obs.verdict && prev.why === obs.why && prev.heldSince === undefined) return prev;
  return new StaticMacState(mac, obs.verdict, obs.why, since);
}

/** The key of a static-MAC backend's verdict: "ip@iface|mac" (two rules may name one backend with two MACs). */
export const staticMacKey = (ip: string, iface: string, mac: string) => `${ip}@${iface}|${mac.toLowerCase()}`;

/**
 * How long a static MAC is watched before the status says it cannot be verified (ms): the first ARP answer
 * may take a pass or two, and a status that said "cannot be verified" for the moment after every CreateRule
 * would say more than was observed (nothing was asked yet). Until then it says "not confirmed yet"
 * ({@link unconfirmedYetWhy}): not ACTIVE either, nothing observed says the backend receives.
 */
export const UNVERIFIED_GRACE_MS = 3000;

const UNVERIFIED = /^(static MAC \S+) cannot be verified: /;
const UNCONFIRMED = /^static MAC \S+ not confirmed yet: /;

/**
 * What a rule's status says of a static MAC judged unverified within {@link UNVERIFIED_GRACE_MS} of its first
 * judgement (`why`: the verdict's, "static MAC M cannot be verified: ..."): "static MAC M not confirmed yet:
 * ...", the same reason.
 */
export function unconfirmedYetWhy(why: string): string {
  return why.replace(UNVERIFIED, '$1 not confirmed yet: ');
}

/** Whether a static MAC's status text is an address conflict's (verdict 'conflict'), not "cannot be verified". */
export function isAddressConflict(why: string): boolean {
  return why.startsWith('address conflict: ');
}

/** Whether a static MAC's status text ({@link unconfirmedYetWhy}) says "not confirmed yet", not "cannot be verified". */
export function isUnconfirmedYet(why: string): boolean {
  return UNCONFIRMED.test(why);
}

/**
 * How long a client's change waits, before its reply, for the ARP answers that confirm the static MACs it names
 * for the first time (ms; resync.ts judgeChangeStaticMacs): a host on the link answers within a millisecond or
 * two; one that does not is "not confirmed yet" in the reply, as in a read.
 */
export const STATIC_MAC_WAIT_MS = 500;

/**
 * How long an address a change waited for in vain is not waited for again by later changes (ms; resync.ts
 * judgeChangeStaticMacs): the reply says "not confirmed yet" at once, as a read does, and the passes keep asking.
 */
export const STATIC_MAC_UNANSWERED_MS = 30_000;

/** The static MACs a change asks and waits for at most (the others of a larger change: the passes ask them). */
export const STATIC_MAC_WAIT_MAX = 64;

/** How often a change waiting for answers reads the neighbour table again (ms). */
export const STATIC_MAC_WAIT_STEP_MS = 20;

/** Resolves (broadcast ARP requests, one process each) started per pass at most, whatever the backend count. */
export const RESOLVES_PER_PASS = 8;

/**
 * How often the reconciler judges every static MAC again from scratch (ms), whatever changed: a pass judges
 * only the backends whose rule, egress, veth peer or neighbour entry changed since the last pass
 * ({@link StaticMacEntry}); this full sweep is the safety net (the judgement is a pure function of those, so
 * it must agree).
 */
export const STATIC_MAC_SWEEP_MS = 30_000;

/** A static-MAC backend of the desired state, with how many rules name it (CoreState.staticMacBackends). */
export interface StaticMacBackend {
  ip: string;
  iface: string;
  mac: string;
  /** "ip@iface" (the neighbour table's key). */
  neighbour: string;
  rules: number;
}

/**
 * A neighbour entry as far as {@link observeStaticMac} reads it (its age only as "freshly confirmed or not",
 * which is all it uses), with whether its MAC answered a probe of ours: the same entry and the same veth peer
 * give the same observation, and a step with the same observation keeps the verdict ({@link stepStaticMac}),
 * so a backend whose entry and peer read as at the last pass is not judged again.
 */
export interface StaticMacEntry {
  mac?: string;
  states: readonly string[];
  fresh: boolean;
  answered?: boolean;
  via?: string;
}

/** Whether two reads of a veth peer are the same for {@link observeStaticMac}. */
export function samePeer(a: PeerRead | undefined, b: PeerRead | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  if ('unreadable' in a || 'unreadable' in b) {
    return 'unreadable' in a && 'unreadable' in b && a.unreadable === b.unreadable;
  }
  if (a.name !== b.name || a.mac !== b.mac || a.takesOthers !== b.takesOthers) return false;
  if (a.ips === undefined || b.ips === undefined) return a.ips === b.ips;
  return a.ips.length === b.ips.length && a.ips.every((x, i) => x === b.ips![i]);
}

/** Whether `entry` (with `answered`) reads as `prev` did for {@link observeStaticMac} (no allocation). */
export function sameEntry(prev: StaticMacEntry, entry: NeighbourFact, answered: boolean | undefined): boolean {
  if (entry.mac !== prev.mac || answered !== prev.answered || freshEntry(entry) !== prev.fresh) return false;
  if (entry.via !== prev.via) return false;
  const a = entry.states;
  const b = prev.states;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Whether a neighbour entry is fresh evidence in {@link observeStaticMac}'s sense. */
export function freshEntry(entry: NeighbourFact | undefined): boolean {
  return (
    entry?.mac !== undefined &&
    entry.states.includes('REACHABLE') &&
    entry.confirmed !== undefined &&
    entry.confirmed <= FRESH_S
  );
}
