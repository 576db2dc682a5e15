/**
 * A MAC-less backend (its MAC from the neighbour table) whose neighbour entry changes from a MAC that answered
 * an ARP probe of ours to one that has not (another tool wrote `ip neigh replace IP lladdr M nud reachable`,
 * or the host announced a new MAC by a gratuitous ARP): the datapath keeps the answered MAC until the new one
 * answers. Writing the new MAC at once lost every frame to that backend for ~3 s when it was wrong (the
 * unicast probes of it failing, then the broadcast request finding the host's MAC), while the MAC in the
 * datapath still reached the host. Now:
 *  - the new MAC is probed at once (NUD_PROBE: a unicast ARP request to it) and written only once the host
 *    answered from it (a real change: the host moved to that MAC; one probe's round trip and a pass later);
 *  - unanswered, the entry fails and is resolved again (a broadcast request): the MAC that answers is kept
 *    (the same as before: nothing written) or written (another one);
 *  - the kept MAC is asked too (an ARP request of our own, once a second): while it answers, it is kept
 *    (another tool re-writing the wrong entry every second does not wear the hold out);
 *  - at most {@link NEIGHBOUR_HOLD_MS} after the kept MAC last answered (or the hold started): then the entry
 *    is followed as before (whatever it holds, or the backend out of the table when it failed), so a host that
 *    answers from nothing does not keep its old MAC;
 * "Answered" is an ARP reply of the host read off the wire (dataplane/arp.ts), never a neighbour entry's
 * state: a tool writing `nud reachable` twice makes the same PROBE -> REACHABLE transition an answer makes.
 *  - an entry set by hand (PERMANENT, NOARP: the kernel never probes it) is followed at once, as the
 *    operator's statement (its status says it cannot be verified).
 * Nothing is held when nothing was confirmed before (a backend never resolved, or whose MAC in the datapath
 * never answered a probe of ours): there is no better MAC to keep, the backend receives nothing without one,
 * and the entry is the kernel's own best knowledge; its first MAC is written at once and probed at once (its
 * status says `not confirmed yet` and its rule is DEGRADED; unanswered, the entry fails within ucast_solicit x
 * retrans_time_ms, 3 s by default, and the backend leaves the table until the broadcast request finds the
 * host's MAC).
 * At start ({@link startHold}) nothing has answered a probe of this process yet, but the datapath forwards
 * with a MAC: an entry that holds another MAC no probe of ours answered (written while the daemon was stopped)
 * is no more evidence than a missing one (Facts.keptMacs), so the MAC the datapath forwards with is kept the
 * same way, `unconfirmed` (its status says so and its rule is DEGRADED until a MAC answers: the entry's, then
 * written, or the kept one, asked too, then confirmed and kept as any hold).
 */

/** How long a confirmed MAC is kept over a changed entry whose MAC has not answered (ms). */
export const NEIGHBOUR_HOLD_MS = 8000;

/** A confirmed MAC kept in the datapath over a changed neighbour entry ("ip@iface"). */
export interface NeighbourHold {
  /** The MAC kept: the one in the datapath, which the entry held when the host last answered a probe of ours. */
  kept: string;
  /** The entry's last new MAC, not answered (what it held before it failed, if it did). */
  candidate: string;
  /** The entry's MAC as the last pass read it; undefined: the entry failed (the candidate did not answer) or is gone. */
  entry?: string;
  /** When it started (ctx.now() ms). */
  since: number;
  /** When the kept MAC last answered an ARP request of ours during it (ctx.now() ms). */
  keptAnswered?: number;
  /**
   * The kept MAC is the one the datapath forwarded with when this daemon started, which no probe of this
   * process has had answered ({@link startHold}); absent: it answered one.
   */
  unconfirmed?: true;
}

/** Why a hold ended: a MAC answered (the kept one: `kept`; another: `answered`), time, a hand-set entry, the kept MAC back. */
export type HoldEnd = 'answered' | 'kept' | 'expired' | 'handset' | 'back' | 'gone';

/** What one pass decided for one entry. */
export interface HoldStep {
  /** The hold after this pass; undefined: none (the entry is followed). */
  hold?: NeighbourHold;
  /** This pass started it. */
  started?: boolean;
  /** This pass ended `ended.hold` because of `ended.why`. */
  ended?: { hold: NeighbourHold; why: HoldEnd };
  /** The entry to probe at once (its MAC: unicast) or resolve again (it failed: broadcast). */
  ask?: 'probe' | 'resolve';
}

const NOTHING: HoldStep = Object.freeze({});
const same = (a: string, b: string) => a.toLowerCase() === b.toLowerCase();

/**
 * One pass's decision for one neighbour entry a MAC-less backend uses.
 *  - `entry`: the entry's MAC now (undefined: failed, incomplete or absent);
 *  - `answered`: that MAC answered a probe of ours (Dataplane.neighbourAnswered);
 *  - `keptAnswered`: when the hold's kept MAC last answered a probe of ours (ms, the `now` clock), if it did;
 *  - `handSet`: the entry is PERMANENT or NOARP;
 *  - `written`: the MAC the backend last received traffic with (state.neighbourMacs);
 *  - `confirmed`: the entry's last MAC that answered a probe of ours (state.neighbourConfirmed).
 */
export function stepNeighbourHold(o: {
  entry: string | undefined;
  answered: boolean;
  keptAnswered?: number;
  handSet: boolean;
  written: string | undefined;
  confirmed: string | undefined;
  hold: NeighbourHold | undefined;
  now: number;
}): HoldStep {
  const h = o.hold;
  if (h) {
    if (o.entry && o.answered) return { ended: { hold: h, why: same(o.entry, h.kept) ? 'kept' : 'answered' } };
    if (o.handSet) return { ended: { hold: h, why: 'handset' } };
    const lastAnswer = Math.max(h.since, h.keptAnswered ?? 0, o.keptAnswered ?? 0);
    if (o.now - lastAnswer >= NEIGHBOUR_HOLD_MS) return { ended: { hold: h, why: 'expired' } };
    if (o.entry && same(o.entry, h.kept)) return { ended: { hold: h, why: 'back' } };
    let next = h.entry === o.entry ? h : { ...h, entry: o.entry, candidate: o.entry ?? h.candidate };
    if (o.keptAnswered !== undefined && o.keptAnswered > h.since && o.keptAnswered !== h.keptAnswered) {
      // The kept MAC answered: confirmed now (a start's hold no longer `unconfirmed`).
      const { unconfirmed: _, ...confirmed } = next;
      next = { ...confirmed, keptAnswered: o.keptAnswered };
    }
    return { hold: next, ask: o.entry ? 'probe' : 'resolve' };
  }
  if (!o.entry || o.answered || o.handSet || !o.written || !o.confirmed) return NOTHING;
  if (!same(o.written, o.confirmed) || same(o.entry, o.written)) return NOTHING;
  return { hold: { kept: o.written, candidate: o.entry, entry: o.entry, since: o.now }, started: true, ask: 'probe' };
}

/**
 * A start's decision for one neighbour entry a MAC-less backend uses, before anything is written: the datapath
 * forwards to it with `forwarding` (read from its backend entry; undefined: not in its rule's table), and the
 * entry holds `entry`, which no probe of ours has answered (`answered` false) and is not set by hand. Held
 * (`forwarding` kept, `entry` probed) when they differ; nothing otherwise (the same MAC, or nothing to keep).
 */
export function startHold(o: {
  entry: string | undefined;
  answered: boolean;
  handSet: boolean;
  forwarding: string | undefined;
  now: number;
}): NeighbourHold | undefined {
  if (!o.entry || !o.forwarding || o.answered || o.handSet || same(o.entry, o.forwarding)) return undefined;
  return { kept: o.forwarding, candidate: o.entry, entry: o.entry, since: o.now, unconfirmed: true };
}

/** What a start logs when it holds (see {@link startHold}). */
export function startHoldText(ip: string, iface: string, h: NeighbourHold): string {
  return (
    `backend ${ip} on ${iface}: its neighbour entry holds ${h.candidate}, which no ARP probe of ours has ` +
    `answered (written while the daemon was stopped, or by another tool), while the datapath forwards with ` +
    `${h.kept}: ${h.kept} kept (not confirmed yet either) until ${h.candidate} answers (asking both; kept at ` +
    `most ${NEIGHBOUR_HOLD_MS} ms after ${h.kept} last answered)`
  );
}

/** The facts' neighbour MACs with each held entry's kept MAC: what every plan and comparison writes. */
export function holdNeighbours(
  neighbours: Map<string, string | undefined>,
  holds: ReadonlyMap<string, NeighbourHold>,
): void {
  for (const [key, h] of holds) if (neighbours.has(key)) neighbours.set(key, h.kept);
}

/** A held backend's status message (it receives with the kept MAC). */
export function heldMessage(h: NeighbourHold): string {
  if (h.unconfirmed) {
    return h.entry
      ? `MAC ${h.kept} kept from the datapath, not confirmed yet: the neighbour entry holds ${h.entry}, which no ` +
          'ARP probe of ours has had answered either (probing it; written once the host answers from it)'
      : `MAC ${h.kept} kept from the datapath, not confirmed yet: the neighbour entry's MAC ${h.candidate} did ` +
          'not answer (the entry failed); resolving it again';
  }
  return h.entry
    ? `MAC ${h.kept} kept (it answered an ARP probe of ours): the neighbour entry now holds ${h.entry}, which ` +
        'no probe of ours has had answered yet (probing it; written once the host answers from it)'
    : `MAC ${h.kept} kept (it answered an ARP probe of ours): the neighbour entry's new MAC ${h.candidate} did ` +
        'not answer (the entry failed); resolving it again';
}
