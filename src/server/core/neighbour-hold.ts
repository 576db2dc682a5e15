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
 *  - a new MAC that answered is written only once the kept MAC, asked at once when the hold starts, no longer
 *    answers: both answering is an address conflict (two hosts, or a spoofer: {@link conflictHold}), not a
 *    change, and the newcomer is not written on its word alone;
 * "Answered" is an ARP reply of the host read off the wire (dataplane/arp.ts), never a neighbour entry's
 * state: a tool writing `nud reachable` twice makes the same PROBE -> REACHABLE transition an answer makes.
 *  - an entry set by hand (PERMANENT, NOARP: the kernel never probes it) is held the same way: its MAC is asked
 *    by an ARP request of ours like any other (a wrong one over a MAC that answered lost 211 of 250 datagrams
 *    when it was followed at once); only when no request of ours can be sent (no CAP_NET_RAW) is it followed at
 *    once, as the operator's statement (its status says it cannot be confirmed).
 * Two MACs that answer for the address at once (dataplane/arp.ts conflictingMacs: each claimed it after the
 * other first did) are an address conflict (RFC 5227): nothing observed says which host receives. The MAC in
 * the datapath is kept ({@link conflictHold}: neither flipped to the newcomer nor to the entry, which follows
 * whichever answered last), both are asked once a second, and the backend's status says so (BackendsReceiving
 * Unknown, its rule DEGRADED); once only one has answered for arp.ts CONFLICT_MS, the hold goes on as any
 * hold (the kept MAC still answering: kept; silent: the entry's MAC, answered, written).
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

/**
 * How long a claim of an address counts (ms): two MACs claim one address at once (an address conflict,
 * RFC 5227: a duplicate host, or a spoofer) while each claimed it within this long and each after the other
 * first did; it is over once one of them has not for this long. The MACs of a conflict are asked once a
 * second (dataplane/adapter.ts ASK_EVERY_MS), so one that still answers claims it about once a second.
 */
export const CONFLICT_MS = 3000;

/** One MAC's claims of an address in a row (no gap longer than {@link CONFLICT_MS}): the first and the last (ms). */
export interface ClaimRun {
  first: number;
  last: number;
}

/** Record a claim at `t` in `runs` (a MAC's run starts over after a gap longer than {@link CONFLICT_MS}). */
export function noteClaim(runs: Map<string, ClaimRun>, mac: string, t: number): void {
  const r = runs.get(mac);
  if (r && t - r.last <= CONFLICT_MS) r.last = Math.max(r.last, t);
  else runs.set(mac, { first: t, last: t });
}

/**
 * The MACs in an address conflict at `t` (sorted), from their claims of one address: two MACs whose claims both
 * count still (the last within {@link CONFLICT_MS}) and each of which claimed the address after the other first
 * did (both answer now, not one after the other: a host that took a new MAC, the old one silent since, is no
 * conflict). Undefined: none.
 */
export function conflictingMacs(runs: ReadonlyMap<string, ClaimRun>, t: number): string[] | undefined {
  if (runs.size < 2) return undefined;
  const live = [...runs].filter(([, r]) => t - r.last <= CONFLICT_MS);
  const out = new Set<string>();
  for (let i = 0; i < live.length; i++) {
    for (let j = i + 1; j < live.length; j++) {
      const [a, ra] = live[i];
      const [b, rb] = live[j];
      if (ra.last > rb.first && rb.last > ra.first) out.add(a).add(b);
    }
  }
  return out.size >= 2 ? [...out].sort() : undefined;
}

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
  /** When it started (ctx.mono() ms). */
  since: number;
  /** When the kept MAC last answered an ARP request of ours during it (ctx.mono() ms). */
  keptAnswered?: number;
  /**
   * The kept MAC is the one the datapath forwarded with when this daemon started, which no probe of this
   * process has had answered ({@link startHold}); absent: it answered one.
   */
  unconfirmed?: true;
  /** The entry's states when it was set by hand (PERMANENT, NOARP), for the status. */
  handSet?: string;
  /** Two or more MACs answer for the address at once (an address conflict): which, since when (ctx.mono() ms). */
  conflict?: { macs: string[]; since: number };
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
  /** Ask the kept MAC at once (whatever the once-a-second limit says): does it still answer? */
  askKeptNow?: boolean;
}

const NOTHING: HoldStep = Object.freeze({});
const same = (a: string, b: string) => a.toLowerCase() === b.toLowerCase();

/**
 * One pass's decision for one neighbour entry a MAC-less backend uses.
 *  - `entry`: the entry's MAC now (undefined: failed, incomplete or absent);
 *  - `answered`: that MAC answered a probe of ours (Dataplane.neighbourAnswered);
 *  - `keptAnswered`: when the hold's kept MAC (without a hold: the MAC written) last answered a probe of ours
 *    (ms, the `now` clock), if it did and no request of ours to it went unanswered since;
 *  - `handSet`: the entry is PERMANENT or NOARP and no ARP request of ours can be sent to ask its MAC;
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
    if (o.entry && o.answered && same(o.entry, h.kept)) return { ended: { hold: h, why: 'kept' } };
    // Another MAC answered: written once the kept one no longer does (asked at once; both answering is an
    // address conflict, which the caller finds from the claims on the wire).
    if (o.entry && o.answered && o.keptAnswered === undefined) return { ended: { hold: h, why: 'answered' } };
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
    if (o.entry && o.answered) return { hold: next, ask: 'probe', askKeptNow: true };
    return { hold: next, ask: o.entry ? 'probe' : 'resolve' };
  }
  if (!o.entry || o.handSet || !o.written || !o.confirmed) return NOTHING;
  if (!same(o.written, o.confirmed) || same(o.entry, o.written)) return NOTHING;
  // The new MAC answered and the written one no longer does (or never was asked since): followed.
  if (o.answered && o.keptAnswered === undefined) return NOTHING;
  return {
    hold: { kept: o.written, candidate: o.entry, entry: o.entry, since: o.now },
    started: true,
    ask: 'probe',
    askKeptNow: true,
  };
}

/**
 * The hold of an address conflict: `macs` (two or more) answer for the address at once. The MAC the datapath
 * forwards with is kept (the hold's kept MAC, else the one written, else the entry's), whichever the entry
 * holds: the newcomer is not written on its word alone. `hold` as it was (a hold that was one already keeps its
 * start and its MACs, with any new one added).
 */
export function conflictHold(o: {
  hold: NeighbourHold | undefined;
  macs: readonly string[];
  entry: string | undefined;
  written: string | undefined;
  now: number;
}): NeighbourHold {
  const h = o.hold;
  const kept = h?.kept ?? o.written ?? o.entry ?? o.macs[0];
  const macs = [...new Set([...(h?.conflict?.macs ?? []), ...o.macs.map((m) => m.toLowerCase())])].sort();
  const other = o.entry && !same(o.entry, kept) ? o.entry : (macs.find((m) => !same(m, kept)) ?? kept);
  return {
    ...(h ?? {}),
    kept,
    candidate: other,
    entry: o.entry,
    since: h?.since ?? o.now,
    conflict: { macs, since: h?.conflict?.since ?? o.now },
  };
}

/** The MACs of a conflict other than the kept one, "A and B". */
const othersOf = (h: NeighbourHold) =>
  (h.conflict?.macs ?? [h.candidate]).filter((m) => !same(m, h.kept)).join(' and ');

/** What is logged when a conflict starts ({@link conflictHold}). */
export function conflictText(ip: string, iface: string, h: NeighbourHold): string {
  return (
    `backend ${ip} on ${iface}: two MACs answer ARP for its address, ${h.kept} and ${othersOf(h)} (an address ` +
    `conflict, RFC 5227: a duplicate host or a spoofer): ${h.kept} kept in the datapath (it answered first; ` +
    `${othersOf(h)} not written on its word alone); which host receives cannot be known while both answer ` +
    `(asking each once a second)`
  );
}

/** What is logged when a conflict ends: only `answering` answered for CONFLICT_MS (undefined: none did). */
export function conflictEndText(
  ip: string,
  iface: string,
  h: NeighbourHold,
  answering: string | undefined,
  quietMs: number,
  t: number,
): string {
  const silent = (h.conflict?.macs ?? []).filter((m) => !answering || !same(m, answering)).join(' and ');
  return (
    `backend ${ip} on ${iface}: ${answering ? `only ${answering}` : 'no MAC'} answers ARP for its address again ` +
    `(${silent} has not for ${quietMs} ms): the address conflict is over after ` +
    `${Math.round(t - (h.conflict?.since ?? h.since))} ms; ${h.kept} kept until ${answering ?? 'a MAC'} answers a probe of ours`
  );
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
  if (h.conflict) {
    return (
      `address conflict: ${h.kept} and ${othersOf(h)} both answer ARP for this address (a duplicate host or a ` +
      `spoofer, RFC 5227): which host receives cannot be known; MAC ${h.kept} kept in the datapath (it answered ` +
      'first), the other not written on its word alone'
    );
  }
  const set = h.handSet ? ` (set by hand: ${h.handSet})` : '';
  if (h.unconfirmed) {
    return h.entry
      ? `MAC ${h.kept} kept from the datapath, not confirmed yet: the neighbour entry holds ${h.entry}${set}, which no ` +
          'ARP probe of ours has had answered either (probing it; written once the host answers from it)'
      : `MAC ${h.kept} kept from the datapath, not confirmed yet: the neighbour entry's MAC ${h.candidate} did ` +
          'not answer (the entry failed); resolving it again';
  }
  return h.entry
    ? `MAC ${h.kept} kept (it answered an ARP probe of ours): the neighbour entry now holds ${h.entry}${set}, ` +
        'which no probe of ours has had answered yet (probing it; written once the host answers from it)'
    : `MAC ${h.kept} kept (it answered an ARP probe of ours): the neighbour entry's new MAC ${h.candidate} did ` +
        'not answer (the entry failed); resolving it again';
}
