/**
 * A MAC-less backend's neighbour entry changing from a MAC that answered a probe of ours to one that has not
 * (core/neighbour-hold.ts): every branch of the decision, then the reconciler over modelled maps, whose
 * backend entry keeps the answered MAC until the new one answers, follows a MAC that answers, and gives up
 * after NEIGHBOUR_HOLD_MS; the status and the log say which. The integration test (neighbour-handset) drives
 * the same with real hosts, entries and traffic.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Controller } from '../../src/server/core/controller.js';
import {
  CONFLICT_MS,
  conflictHold,
  conflictingMacs,
  NEIGHBOUR_HOLD_MS,
  noteClaim,
  startHold,
  stepNeighbourHold,
  type NeighbourHold,
} from '../../src/server/core/neighbour-hold.js';
import { captureLog, type LogLine as Line } from '../helpers/log-capture.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';

const A = '02:00:00:00:0a:01';
const W = '02:00:00:00:0b:02';
const N = '02:00:00:00:0c:03';
const step = (o: Partial<Parameters<typeof stepNeighbourHold>[0]>) =>
  stepNeighbourHold({
    entry: W,
    answered: false,
    handSet: false,
    written: A,
    confirmed: A,
    hold: undefined,
    now: 0,
    ...o,
  });

describe('neighbour holds: the decision', () => {
  it('starts only over a written MAC that answered, for a changed entry whose MAC did not', () => {
    const s = step({ now: 5 });
    assert.deepEqual(s, {
      hold: { kept: A, candidate: W, entry: W, since: 5 },
      started: true,
      ask: 'probe',
      askKeptNow: true,
    });
    assert.deepEqual(step({ answered: true }), {}, 'the new MAC answered, the written one silent since: followed');
    // The new MAC answered, and so did the written one (not asked since): held until it is asked (both
    // answering is an address conflict), not written on its word alone.
    assert.deepEqual(step({ answered: true, keptAnswered: 3, now: 5 }).hold, {
      kept: A,
      candidate: W,
      entry: W,
      since: 5,
    });
    assert.deepEqual(step({ handSet: true }), {}, 'set by hand, no ARP request of ours can ask it: followed');
    assert.deepEqual(step({ written: undefined }), {}, 'never resolved: its first MAC at once');
    assert.deepEqual(step({ confirmed: undefined }), {}, 'nothing confirmed: nothing better to keep');
    assert.deepEqual(step({ confirmed: N }), {}, 'the MAC written is not the one confirmed');
    assert.deepEqual(step({ entry: A }), {}, 'unchanged');
    assert.deepEqual(step({ entry: A.toUpperCase() }), {}, 'unchanged (case)');
    assert.deepEqual(step({ entry: undefined }), {}, 'the confirmed MAC itself failed: followed (out of the table)');
  });

  it('ends when a MAC answers, the entry is set by hand, holds the kept MAC again, or time is up', () => {
    const hold: NeighbourHold = { kept: A, candidate: W, entry: W, since: 1000 };
    assert.deepEqual(step({ hold, now: 1500 }), { hold, ask: 'probe' }, 'still waiting: the same object');
    assert.deepEqual(step({ hold, entry: undefined, now: 4000 }), {
      hold: { ...hold, entry: undefined },
      ask: 'resolve',
    });
    assert.deepEqual(step({ hold, entry: N, answered: true }).ended, { hold, why: 'answered' });
    assert.deepEqual(step({ hold, entry: A, answered: true }).ended, { hold, why: 'kept' });
    assert.deepEqual(step({ hold, handSet: true }).ended, { hold, why: 'handset' });
    assert.deepEqual(step({ hold, entry: A }).ended, { hold, why: 'back' });
    assert.deepEqual(step({ hold, now: 1000 + NEIGHBOUR_HOLD_MS - 1 }).hold, hold);
    assert.deepEqual(step({ hold, now: 1000 + NEIGHBOUR_HOLD_MS }), { ended: { hold, why: 'expired' } });
    assert.equal(step({ hold, entry: N, answered: true }).hold, undefined, 'ended: the entry is followed');
    // N answered while the kept MAC has not been found silent: the kept MAC asked at once, N not written yet.
    assert.deepEqual(step({ hold, entry: N, answered: true, keptAnswered: 1200, now: 1500 }), {
      hold: { ...hold, entry: N, candidate: N, keptAnswered: 1200 },
      ask: 'probe',
      askKeptNow: true,
    });
  });

  it('keeps the kept MAC while it answers: the bound runs from its last answer (an entry re-written every second)', () => {
    const hold: NeighbourHold = { kept: A, candidate: W, entry: W, since: 1000 };
    const t = 1000 + NEIGHBOUR_HOLD_MS;
    const s = step({ hold, now: t, keptAnswered: t - 900 });
    assert.deepEqual(s, { hold: { ...hold, keptAnswered: t - 900 }, ask: 'probe' }, 'answered 0.9 s ago: kept');
    // What it answered is remembered: a pass that reads no newer answer does not end it before its bound.
    assert.deepEqual(step({ hold: s.hold, now: t + 500 }).hold, s.hold);
    assert.deepEqual(step({ hold: s.hold, now: t - 900 + NEIGHBOUR_HOLD_MS }).ended, { hold: s.hold, why: 'expired' });
    assert.deepEqual(step({ hold, now: t, keptAnswered: 500 }).ended, { hold, why: 'expired' }, 'an answer before it');
  });
});

describe('address conflicts: two MACs claiming one address at once', () => {
  const runs = (claims: [string, number][]) => {
    const m = new Map<string, { first: number; last: number }>();
    for (const [mac, t] of claims) noteClaim(m, mac, t);
    return m;
  };
  it('both claiming after the other first did: a conflict (a duplicate host, a spoofer)', () => {
    // A answers once a second; W's unsolicited replies every 0.1 s from 2.5 s on.
    const m = runs([
      [A, 0],
      [A, 1000],
      [A, 2000],
      [W, 2500],
      [W, 2600],
      [A, 3000],
    ]);
    assert.deepEqual(conflictingMacs(m, 3000), [A, W]);
    assert.deepEqual(conflictingMacs(m, 2600 + CONFLICT_MS), [A, W], 'both within CONFLICT_MS still');
    assert.equal(conflictingMacs(m, 2600 + CONFLICT_MS + 1), undefined, 'W silent for CONFLICT_MS: over');
  });
  it('one after the other (a host that took a new MAC, the old one silent since): no conflict', () => {
    const m = runs([
      [A, 0],
      [A, 1000],
      [W, 1400],
      [W, 2400],
    ]);
    assert.equal(conflictingMacs(m, 2400), undefined);
    assert.equal(conflictingMacs(runs([[A, 0]]), 0), undefined, 'one MAC');
  });
  it('a run starts over after a gap longer than CONFLICT_MS', () => {
    const m = runs([
      [A, 0],
      [W, 500],
      [A, 500 + CONFLICT_MS + 1],
    ]);
    assert.deepEqual(m.get(A), { first: 500 + CONFLICT_MS + 1, last: 500 + CONFLICT_MS + 1 });
    assert.equal(conflictingMacs(m, 500 + CONFLICT_MS + 1), undefined, 'W is silent for longer: no conflict');
  });
  it('keeps the MAC the datapath forwards with, whichever the entry holds', () => {
    const h = conflictHold({ hold: undefined, macs: [A, W], entry: W, written: A, now: 9 });
    assert.deepEqual(h, { kept: A, candidate: W, entry: W, since: 9, conflict: { macs: [A, W], since: 9 } });
    const held: NeighbourHold = { kept: A, candidate: W, entry: W, since: 4 };
    assert.deepEqual(conflictHold({ hold: held, macs: [A, N], entry: A, written: A, now: 9 }), {
      kept: A,
      candidate: N,
      entry: A,
      since: 4,
      conflict: { macs: [A, N], since: 9 },
    });
    const again = conflictHold({ hold: h, macs: [A, N], entry: N, written: A, now: 12 });
    assert.deepEqual(again.conflict, { macs: [A, N, W].sort(), since: 9 }, 'the MACs seen, the start kept');
    assert.equal(conflictHold({ hold: undefined, macs: [A, W], entry: W, written: undefined, now: 1 }).kept, W);
  });
});

describe('neighbour holds: at start', () => {
  const at = (o: Partial<Parameters<typeof startHold>[0]>) =>
    startHold({ entry: W, answered: false, handSet: false, forwarding: A, now: 7, ...o });
  it('keeps the MAC the datapath forwards with over an entry whose other MAC no probe of ours answered', () => {
    assert.deepEqual(at({}), { kept: A, candidate: W, entry: W, since: 7, unconfirmed: true });
    assert.equal(at({ answered: true }), undefined, 'the entry answered: followed');
    assert.equal(at({ handSet: true }), undefined, 'set by hand: followed (the operator’s statement)');
    assert.equal(at({ forwarding: undefined }), undefined, 'not forwarded to: nothing to keep');
    assert.equal(at({ entry: undefined }), undefined, 'no entry: Facts.keptMacs, not a hold');
    assert.equal(at({ entry: A.toUpperCase() }), undefined, 'the same MAC');
  });
  it('ends as any hold ends: a MAC that answers, the kept one back, a hand-set entry, time', () => {
    const hold = at({})!;
    const s = (o: Partial<Parameters<typeof stepNeighbourHold>[0]>) =>
      stepNeighbourHold({
        entry: W,
        answered: false,
        handSet: false,
        written: A,
        confirmed: undefined,
        hold,
        now: 8,
        ...o,
      });
    assert.deepEqual(s({}), { hold, ask: 'probe' });
    assert.deepEqual(s({ entry: A, answered: true }).ended, { hold, why: 'kept' });
    assert.deepEqual(s({ entry: W, answered: true }).ended, { hold, why: 'answered' });
    assert.deepEqual(s({ now: 7 + NEIGHBOUR_HOLD_MS }).ended, { hold, why: 'expired' });
    // The kept MAC answered a request of ours: confirmed, kept as any hold (no longer `unconfirmed`).
    const { unconfirmed: _, ...confirmed } = hold;
    assert.deepEqual(s({ now: 9, keptAnswered: 8 }), { hold: { ...confirmed, keptAnswered: 8 }, ask: 'probe' });
    assert.equal(s({ now: 9, keptAnswered: 7 }).hold, hold, 'an answer not after it started: still unconfirmed');
  });
});

/** Modelled maps with a neighbour table whose answers to our probes the test decides. */
class Neighbours extends ModelDataplane {
  readonly answers = new Map<string, string>();
  readonly probes: string[] = [];
  override neighbourAnswered(ip: string, iface: string): string | undefined {
    return this.answers.get(`${ip}@${iface}`);
  }
  override verifyNeighbour(ip: string, iface: string): boolean {
    if (!this.neighbours.has(`${ip}@${iface}`)) return false; // as the kernel's: no MAC to probe
    this.probes.push(`unicast ${ip}@${iface} ${this.neighbours.get(`${ip}@${iface}`)}`);
    return true;
  }
  override probeNeighbour(ip: string, iface: string): void {
    this.probes.push(`broadcast ${ip}@${iface}`);
  }
  /** "ip@iface|mac" -> when that MAC last answered a request of ours (ms ago, the adapter's clock). */
  readonly answerAges = new Map<string, number>();
  readonly asks: string[] = [];
  override neighbourAnswerAge(ip: string, iface: string, mac: string): number | undefined {
    return this.answerAges.get(`${ip}@${iface}|${mac}`);
  }
  override askNeighbour(ip: string, iface: string, mac: string): boolean {
    this.asks.push(`${ip}@${iface} ${mac}`);
    return true;
  }
  readonly handSet = new Set<string>();
  override neighbourHandSet(ip: string, iface: string): string | undefined {
    return this.handSet.has(`${ip}@${iface}`) ? 'PERMANENT' : undefined;
  }
  /** "ip@iface" -> the MACs claiming it at once (an address conflict). */
  readonly conflicts = new Map<string, string[]>();
  override neighbourConflict(ip: string, iface: string): string[] | undefined {
    return this.conflicts.get(`${ip}@${iface}`);
  }
  noArp?: string;
  override arpUnavailable(): string | undefined {
    return this.noArp;
  }
  /**
   * Called where a reconciler pass has written what it re-applies and goes on (its links read next) and where a
   * write has recorded its rules and clears the slots they replaced: what a read that came then would get.
   */
  onMidway?: (where: string) => void;
  override listLinks(): [number, number][] {
    this.onMidway?.('a pass, after its writes');
    return super.listLinks();
  }
  override clearRuleSlot(...a: Parameters<ModelDataplane['clearRuleSlot']>): void {
    this.onMidway?.('a write, clearing the slot it replaced');
    super.clearRuleSlot(...a);
  }
}

describe('neighbour holds: the reconciler', () => {
  const KEY = '10.0.0.1@b0';
  /** One rule with one backend given without MAC (10.0.0.1 on b0). */
  const rule = (): Parameters<Controller['createRule']>[0] => ({
    name: 'r',
    protocol: 'udp',
    port: 5000,
    destination: '',
    sourcePrefixes: [],
    ingressInterfaces: ['in0'],
    backends: [{ ip: '10.0.0.1', mac: '', interface: 'b0', weight: 1 }],
    udpChecksum: 'update',
    labels: {},
  });
  const hex = (mac: string) => mac.replace(/:/g, '');
  async function setup() {
    const dp = new Neighbours();
    const lines: Line[] = [];
    const clock = { t: 1_000_000 };
    const c = new Controller(dp, { mode: 'generic', fixVethPeers: false, log: captureLog(lines), now: () => clock.t });
    dp.neighbours.set(KEY, A);
    dp.answers.set(KEY, A);
    await c.createRule(rule());
    await c.resync();
    const b = () => c.getRule('r').status.backends[0];
    assert.equal(b().mac, A);
    assert.equal(b().message, 'MAC resolved from the neighbour table');
    const inMaps = (mac: string) => dp.snapshot().backends.some((e) => e.includes(hex(mac)));
    assert.ok(inMaps(A));
    return { dp, c, lines, clock, b, inMaps };
  }

  it('keeps the answered MAC in the datapath while a new one is unanswered, and keeps it when it never answers', async () => {
    const { dp, c, lines, clock, b, inMaps } = await setup();
    dp.neighbours.set(KEY, W); // another tool: ip neigh replace ... lladdr W nud reachable
    dp.answers.delete(KEY);
    await c.resync();
    assert.ok(inMaps(A) && !inMaps(W), 'the datapath keeps A');
    assert.equal(b().mac, A);
    assert.equal(b().receiving, true);
    assert.match(b().message, new RegExp(`^MAC ${A} kept .*now holds ${W}, which no probe of ours has had answered`));
    assert.equal(c.getRule('r').status.state, 'active');
    assert.deepEqual(dp.probes.slice(-1), [`unicast ${KEY} ${W}`], 'W probed at once');
    assert.equal(lines.filter((l) => /its neighbour entry changed from/.test(l.msg)).length, 1);
    // Another write, another unanswered MAC: still A, N probed now.
    dp.neighbours.set(KEY, N);
    await c.resync();
    assert.ok(inMaps(A) && !inMaps(N));
    assert.deepEqual(dp.probes.slice(-1), [`unicast ${KEY} ${N}`]);
    // N does not answer: the entry fails, is resolved again (broadcast) and A answers.
    clock.t += 3000;
    dp.neighbours.delete(KEY);
    await c.resync();
    assert.ok(inMaps(A), 'still A');
    assert.match(b().message, new RegExp(`new MAC ${N} did not answer \\(the entry failed\\); resolving it again$`));
    assert.deepEqual(dp.probes.slice(-1), [`broadcast ${KEY}`]);
    clock.t += 100;
    dp.neighbours.set(KEY, A);
    dp.answers.set(KEY, A);
    await c.resync();
    assert.equal(b().message, 'MAC resolved from the neighbour table');
    assert.ok(inMaps(A) && !inMaps(W) && !inMaps(N));
    const said = lines.map((l) => l.msg).filter((m) => /^backend 10\.0\.0\.1 on b0: /.test(m));
    assert.deepEqual(said.slice(1), [
      `backend 10.0.0.1 on b0: its neighbour entry now holds ${N}, not answered yet either: ${A} still kept, probing ${N}`,
      `backend 10.0.0.1 on b0: ${N} did not answer (its neighbour entry failed); ${A} still kept, resolving the entry again`,
      `backend 10.0.0.1 on b0: ${A} answered an ARP probe of ours again after 3100 ms (${N} did not): kept, ${N} never written`,
    ]);
    assert.ok(!lines.some((l) => l.msg === 'the host changed: re-applying rules'), 'nothing re-applied');
    await c.resync();
    assert.equal(lines.filter((l) => /^backend 10\.0\.0\.1 on b0: /.test(l.msg)).length, 4, 'each said once');
  });

  it('follows a new MAC once it answers (a real change), and the entry after NEIGHBOUR_HOLD_MS without answers', async () => {
    const { dp, c, lines, clock, b, inMaps } = await setup();
    dp.neighbours.set(KEY, N); // the host moved to N and announced it
    dp.answers.delete(KEY);
    await c.resync();
    assert.ok(inMaps(A) && !inMaps(N));
    clock.t += 40;
    dp.answers.set(KEY, N); // our probe of N answered
    await c.resync();
    assert.ok(inMaps(N) && !inMaps(A), 'N written');
    assert.equal(b().mac, N);
    assert.ok(
      lines.some(
        (l) =>
          l.msg === `backend 10.0.0.1 on b0: ${N} answered an ARP probe of ours after 40 ms: written instead of ${A}`,
      ),
    );
    assert.ok(
      lines.some((l) => l.msg === `backend 10.0.0.1 on b0 has a new MAC, ${A} -> ${N} (neighbour table): rewritten`),
    );

    // Now N is confirmed; the entry changes to W, which never answers and never fails: given up after the bound.
    dp.neighbours.set(KEY, W);
    dp.answers.delete(KEY);
    await c.resync();
    assert.ok(inMaps(N) && !inMaps(W));
    clock.t += NEIGHBOUR_HOLD_MS - 1;
    await c.resync();
    assert.ok(inMaps(N) && !inMaps(W), 'kept up to the bound');
    clock.t += 1;
    await c.resync();
    assert.ok(inMaps(W), 'followed after the bound');
    assert.match(b().message, /not confirmed yet/);
    assert.ok(lines.some((l) => l.level === 'warn' && /no MAC answered within 8000 ms/.test(l.msg)));
  });

  it('a hold lasts NEIGHBOUR_HOLD_MS by the monotonic clock, whatever the wall clock steps; condition times are the wall clock', async () => {
    const dp = new Neighbours();
    const wall = { t: Date.parse('2026-12-06T12:00:00Z') };
    const mono = { t: 1_000_000 };
    const c = new Controller(dp, {
      mode: 'generic',
      fixVethPeers: false,
      log: captureLog([]),
      now: () => wall.t,
      mono: () => mono.t,
    });
    const inMaps = (mac: string) => dp.snapshot().backends.some((e) => e.includes(mac.replace(/:/g, '')));
    dp.neighbours.set(KEY, A);
    dp.answers.set(KEY, A);
    await c.createRule(rule());
    await c.resync();
    dp.neighbours.set(KEY, W); // a new MAC nothing has answered: A held
    dp.answers.delete(KEY);
    await c.resync();
    assert.ok(inMaps(A) && !inMaps(W), 'A held');
    // The wall clock steps an hour forward (an NTP step): 100 ms passed, the hold goes on.
    wall.t += 3_600_000 + 100;
    mono.t += 100;
    await c.resync();
    assert.ok(inMaps(A) && !inMaps(W), 'A still held after a step forward');
    // And two hours back: the hold still ends NEIGHBOUR_HOLD_MS after it began, not two hours later.
    wall.t -= 7_200_000;
    mono.t += NEIGHBOUR_HOLD_MS;
    await c.resync();
    assert.ok(inMaps(W) && !inMaps(A), 'the entry followed once the hold expired');
    // What is shown as a time is the wall clock's: the create time and the conditions' first transitions.
    const T0 = Date.parse('2026-12-06T12:00:00Z');
    const r = c.getRule('r');
    assert.equal(r.createTime, T0);
    const times = r.status.conditions!.map((x) => x.lastTransitionTime);
    assert.ok(times.includes(T0), `condition times ${times.join(', ')}: the wall clock's`);
  });

  it('writes a never-resolved backend’s first MAC at once, unanswered (nothing better to keep)', async () => {
    const dp = new Neighbours();
    const c = new Controller(dp, { mode: 'generic', fixVethPeers: false, log: captureLog([]), now: () => 1 });
    await c.createRule(rule());
    await c.resync();
    assert.equal(c.getRule('r').status.backends[0].receiving, false);
    dp.neighbours.set(KEY, W);
    await c.resync();
    const b = c.getRule('r').status.backends[0];
    assert.deepEqual([b.mac, b.receiving], [W, true]);
    assert.match(b.message, /not confirmed yet/);
  });

  /**
   * A start after a wrong entry was written: the datapath forwards with A (answered before the stop); while the daemon was stopped
   * another tool wrote W into the entry. The start keeps A, unconfirmed (DEGRADED), probes W, and writes W only
   * once it answers; a start that writes another MAC (an entry set by hand) logs it as a MAC change.
   */
  async function restarted(write: (dp: Neighbours) => void) {
    const { dp, c, clock } = await setup();
    const stored = c.storedState();
    const dp2 = ModelDataplane.adopt(dp, new Neighbours());
    write(dp2);
    const lines: Line[] = [];
    const c2 = new Controller(dp2, {
      mode: 'generic',
      fixVethPeers: false,
      log: captureLog(lines),
      now: () => clock.t,
    });
    await c2.restore(stored);
    const inMaps = (mac: string) => dp2.snapshot().backends.some((e) => e.includes(hex(mac)));
    const said = (re: RegExp) => lines.filter((l) => re.test(l.msg)).length;
    return { dp: dp2, c: c2, lines, clock, inMaps, said, b: () => c2.getRule('r').status.backends[0] };
  }

  it('a start keeps the MAC the datapath forwards with over an unanswered entry, DEGRADED until one answers', async () => {
    const { dp, c, clock, inMaps, said, b } = await restarted((x) => x.neighbours.set(KEY, W));
    assert.ok(inMaps(A) && !inMaps(W), 'the start wrote nothing over A');
    assert.equal(said(/differed from the stored state/), 0);
    assert.equal(
      said(new RegExp(`^backend 10\\.0\\.0\\.1 on b0: its neighbour entry holds ${W}, which no ARP probe of ours`)),
      1,
    );
    assert.deepEqual(dp.probes, [`unicast ${KEY} ${W}`], 'W probed at once');
    // Read before the first pass: judged already.
    assert.equal(c.getRule('r').status.state, 'degraded');
    assert.equal(b().unverified, true);
    assert.match(
      b().message,
      new RegExp(`^MAC ${A} kept from the datapath, not confirmed yet: the neighbour entry holds ${W}`),
    );
    const br = c.getRule('r').status.conditions!.find((x) => x.type === 'BackendsReceiving')!;
    assert.deepEqual([br.status, br.reason], ['Unknown', 'BackendsUnverified']);
    await c.resync();
    assert.ok(inMaps(A) && !inMaps(W));
    assert.equal(c.getRule('r').status.state, 'degraded');
    assert.ok(
      c.problems().some((p) => /^rule r is DEGRADED/.test(p)),
      c.problems().join('; '),
    );
    // W never answers: the entry fails, is resolved again, and A answers.
    clock.t += 3000;
    dp.neighbours.delete(KEY);
    await c.resync();
    assert.ok(inMaps(A));
    assert.match(b().message, new RegExp(`MAC ${W} did not answer \\(the entry failed\\); resolving it again$`));
    clock.t += 100;
    dp.neighbours.set(KEY, A);
    dp.answers.set(KEY, A);
    await c.resync();
    assert.ok(inMaps(A) && !inMaps(W), 'W never written');
    assert.equal(b().message, 'MAC resolved from the neighbour table');
    assert.equal(c.getRule('r').status.state, 'active');
    assert.equal(
      said(
        new RegExp(
          `^backend 10\\.0\\.0\\.1 on b0: ${A} answered an ARP probe of ours after 3100 ms \\(${W} did not\\): kept`,
        ),
      ),
      1,
    );
    assert.equal(said(/has a new MAC/), 0);
  });

  it('a start’s kept MAC that answers a request of ours is confirmed: ACTIVE, still kept over the entry', async () => {
    const { dp, c, clock, inMaps, said, b } = await restarted((x) => x.neighbours.set(KEY, W));
    assert.deepEqual(dp.asks, [`${KEY} ${A}`], 'the kept MAC asked at once');
    assert.equal(c.getRule('r').status.state, 'degraded');
    clock.t += 30;
    dp.answerAges.set(`${KEY}|${A}`, 10);
    await c.resync();
    assert.ok(inMaps(A) && !inMaps(W));
    assert.equal(c.getRule('r').status.state, 'active');
    assert.equal(b().unverified, undefined);
    assert.match(
      b().message,
      new RegExp(`^MAC ${A} kept \\(it answered an ARP probe of ours\\): the neighbour entry now holds ${W}`),
    );
    assert.equal(said(/\(kept from the datapath\) answered an ARP request of ours: confirmed/), 1);
    await c.resync();
    assert.equal(said(/\(kept from the datapath\) answered an ARP request of ours: confirmed/), 1, 'said once');
  });

  it('a start writes the entry’s MAC once it answers, logged as a MAC change', async () => {
    const { dp, c, clock, inMaps, said, b } = await restarted((x) => x.neighbours.set(KEY, W));
    clock.t += 50;
    dp.answers.set(KEY, W);
    await c.resync();
    assert.ok(inMaps(W) && !inMaps(A));
    assert.equal(b().message, 'MAC resolved from the neighbour table');
    assert.equal(
      said(
        new RegExp(
          `^backend 10\\.0\\.0\\.1 on b0: ${W} answered an ARP probe of ours after 50 ms: written instead of ${A}`,
        ),
      ),
      1,
    );
    assert.equal(
      said(new RegExp(`^backend 10\\.0\\.0\\.1 on b0 has a new MAC, ${A} -> ${W} \\(neighbour table\\): rewritten$`)),
      1,
    );
  });

  it('a start over an entry set by hand asks its MAC like any other: the datapath’s MAC kept meanwhile', async () => {
    const { dp, inMaps, said, b } = await restarted((x) => {
      x.neighbours.set(KEY, W);
      x.handSet.add(KEY);
    });
    assert.ok(inMaps(A) && !inMaps(W), 'A kept');
    assert.equal(said(/has a new MAC/), 0);
    assert.match(
      b().message,
      new RegExp(`^MAC ${A} kept from the datapath, not confirmed yet: the neighbour entry holds ${W}`),
    );
    assert.deepEqual(dp.probes, [`unicast ${KEY} ${W}`], 'W asked at once');
  });

  it('a start that writes another MAC (an entry set by hand, no ARP request of ours possible) logs it as a MAC change', async () => {
    const { c, inMaps, said, b } = await restarted((x) => {
      x.neighbours.set(KEY, W);
      x.handSet.add(KEY);
      x.noArp = 'no CAP_NET_RAW to send ARP requests';
    });
    assert.ok(inMaps(W) && !inMaps(A), 'the operator’s entry followed');
    assert.equal(
      said(
        new RegExp(
          `^backend 10\\.0\\.0\\.1 on b0 has a new MAC, ${A} -> ${W} \\(neighbour table\\): rewritten at start$`,
        ),
      ),
      1,
    );
    assert.match(b().message, /not confirmed yet: .*set by hand.*cannot be confirmed: no CAP_NET_RAW/);
    assert.equal(c.getRule('r').status.state, 'degraded');
    await c.resync();
    assert.equal(said(/has a new MAC/), 1, 'said once');
  });

  it('two MACs answering at once: the answered MAC kept, DEGRADED (AddressConflict), logged once; the survivor followed', async () => {
    const { dp, c, lines, clock, b, inMaps } = await setup();
    // A duplicate announced itself: the entry holds W, which answers; so does A.
    dp.neighbours.set(KEY, W);
    dp.answers.set(KEY, W);
    dp.answerAges.set(`${KEY}|${A}`, 100);
    dp.answerAges.set(`${KEY}|${W}`, 50);
    dp.conflicts.set(KEY, [A, W]);
    for (let i = 0; i < 3; i++) {
      await c.resync();
      clock.t += 500;
      assert.ok(inMaps(A) && !inMaps(W), 'the datapath keeps A');
      const st = c.getRule('r').status;
      assert.equal(st.state, 'degraded');
      assert.match(st.message, /1 in an address conflict \(10\.0\.0\.1@b0: /);
      assert.equal(b().mac, A);
      assert.equal(b().unverified, true);
      assert.match(b().message, new RegExp(`^address conflict: ${A} and ${W} both answer ARP for this address`));
      const br = st.conditions!.find((x) => x.type === 'BackendsReceiving')!;
      assert.deepEqual([br.status, br.reason], ['Unknown', 'AddressConflict']);
    }
    const said = (re: RegExp) => lines.filter((l) => re.test(l.msg)).length;
    assert.equal(
      said(new RegExp(`^backend 10\\.0\\.0\\.1 on b0: two MACs answer ARP for its address, ${A} and ${W} `)),
      1,
    );
    assert.ok(dp.asks.includes(`${KEY} ${A}`) && dp.asks.includes(`${KEY} ${W}`), 'both asked');
    // A fell silent (its request unanswered): only W answers for CONFLICT_MS; then W, answered, is written.
    dp.conflicts.delete(KEY);
    dp.answerAges.delete(`${KEY}|${A}`);
    await c.resync();
    assert.equal(said(new RegExp(`^backend 10\\.0\\.0\\.1 on b0: only ${W} answers ARP for its address again`)), 1);
    assert.ok(inMaps(W) && !inMaps(A), 'the only MAC that answers written');
    assert.equal(c.getRule('r').status.state, 'active');
    assert.equal(b().message, 'MAC resolved from the neighbour table');
  });

  it('two MACs answering at once, then only the kept one: kept, ACTIVE again, nothing rewritten', async () => {
    const { dp, c, lines, clock, b, inMaps } = await setup();
    dp.neighbours.set(KEY, W);
    dp.answers.set(KEY, W);
    dp.answerAges.set(`${KEY}|${A}`, 100);
    dp.conflicts.set(KEY, [A, W]);
    await c.resync();
    assert.equal(c.getRule('r').status.state, 'degraded');
    // The spoofer stopped; the kernel's entry back on A (A's answers reach the kernel too).
    clock.t += 4000;
    dp.conflicts.delete(KEY);
    dp.neighbours.set(KEY, A);
    dp.answers.set(KEY, A);
    await c.resync();
    assert.ok(inMaps(A) && !inMaps(W));
    assert.equal(c.getRule('r').status.state, 'active');
    assert.equal(b().message, 'MAC resolved from the neighbour table');
    assert.equal(lines.filter((l) => /has a new MAC/.test(l.msg)).length, 0);
  });

  it('a read while a write or a re-applying pass goes on gets the status judged: never "resolved" for an unanswered MAC', async () => {
    const dp = new Neighbours();
    const c = new Controller(dp, { mode: 'generic', fixVethPeers: false, log: captureLog([]), now: () => 1 });
    await c.createRule(rule());
    await c.resync();
    const reads: string[] = [];
    dp.onMidway = (where) => {
      const s = c.getRule('r').status;
      if (s.backends[0]?.mac) reads.push(`${where}: ${s.state}, ${s.backends[0].mac}: ${s.backends[0].message}`);
    };
    // Another tool writes W (no probe of ours answers it): the pass re-applies the rule with it.
    dp.neighbours.set(KEY, W);
    await c.resync();
    // A client's change of the rule while W is still unanswered.
    await c.updateRule({ ...rule(), labels: { x: 'y' } }, 0);
    dp.onMidway = undefined;
    assert.ok(
      reads.some((r) => r.startsWith('a pass')) && reads.some((r) => r.startsWith('a write')),
      reads.join('\n'),
    );
    const unanswered = `degraded, ${W}: MAC ${W} from the neighbour table, not confirmed yet`;
    assert.deepEqual(
      reads.filter((r) => !r.includes(unanswered)),
      [],
      'each read said what was observed (before: "active, ... MAC resolved from the neighbour table")',
    );
  });

  it('a MAC that answered after the pass decided its holds, "resolved" by its judgement, is kept when the entry changes at once', async () => {
    const dp = new Neighbours();
    const clock = { t: 1_000_000 };
    const lines: Line[] = [];
    const c = new Controller(dp, { mode: 'generic', fixVethPeers: false, log: captureLog(lines), now: () => clock.t });
    dp.neighbours.set(KEY, A);
    await c.createRule(rule());
    await c.resync();
    const b = () => c.getRule('r').status.backends[0];
    assert.match(b().message, /not confirmed yet/);
    // A's answer to our probe is read off the wire while the next pass goes on: after its holds were decided,
    // before its judgement.
    dp.onMidway = () => {
      dp.answers.set(KEY, A);
      dp.answerAges.set(`${KEY}|${A}`, 0);
    };
    clock.t += 20;
    await c.resync();
    dp.onMidway = undefined;
    assert.equal(b().message, 'MAC resolved from the neighbour table');
    // At once a duplicate host announces itself: the entry holds its MAC, which no probe of ours has answered.
    dp.neighbours.set(KEY, W);
    clock.t += 20;
    await c.resync();
    const inMaps = (mac: string) => dp.snapshot().backends.some((e) => e.includes(hex(mac)));
    assert.ok(inMaps(A) && !inMaps(W), 'A, which the status called resolved, kept (before: W written at once)');
    assert.match(
      b().message,
      new RegExp(`^MAC ${A} kept \\(it answered an ARP probe of ours\\): the neighbour entry now holds ${W}`),
    );
    assert.equal(lines.filter((l) => /has a new MAC/.test(l.msg)).length, 0, 'nothing rewritten');
  });

  it('a start over an unchanged entry no probe of this process answered yet: DEGRADED until it answers', async () => {
    const { dp, c, said, b } = await restarted(() => {});
    assert.equal(said(/its neighbour entry holds/), 0, 'nothing to hold');
    assert.equal(c.getRule('r').status.state, 'degraded');
    assert.match(b().message, new RegExp(`^MAC ${A} from the neighbour table, not confirmed yet`));
    dp.answers.set(KEY, A);
    await c.resync();
    assert.equal(c.getRule('r').status.state, 'active');
    assert.equal(b().message, 'MAC resolved from the neighbour table');
  });
});
