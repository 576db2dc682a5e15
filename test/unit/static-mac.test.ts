/**
 * Static MACs (core/static-mac.ts): which observations are definitive, what each verdict says, what is
 * asked of the kernel, and that the last definitive verdict stands while nothing is. The integration test
 * (static-mac) drives the same with real hosts changing their MACs; here every branch, with facts as given.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ruleConditions } from '../../src/server/core/conditions.js';
import type { RuleStatus } from '../../src/server/core/model.js';
import { judgeRule, type RuleObservation } from '../../src/server/core/rule-status.js';
import {
  FRESH_S,
  observeStaticMac,
  samePeer,
  STATIC_MAC_HOLD_MS,
  staticMacKey,
  stepStaticMac,
  unconfirmedYetWhy,
} from '../../src/server/core/static-mac.js';

const MAC = '02:00:00:00:00:01';
const OTHER = '02:00:00:00:00:99';
const peer = (mac: string, takesOthers = false) => ({ name: 'vb', mac, takesOthers });
const entry = (mac: string | undefined, states: string[], confirmed?: number) => ({ mac, states, confirmed });

describe('static MACs: observations', () => {
  it('a veth peer with the MAC confirms only while its host (our namespace) holds the address', () => {
    const holds = { ...peer(MAC), ips: ['10.0.0.1', '10.0.0.2'] };
    const o = observeStaticMac('10.0.0.2', 'va', MAC, holds, undefined);
    assert.deepEqual(
      [o.verdict, o.why],
      ['confirmed', `the veth peer vb of va has MAC ${MAC} and its host holds 10.0.0.2`],
    );
    // The address given up (a container renumbered): the neighbour evidence decides, and there is none.
    const lacks = { ...peer(MAC), ips: ['10.0.0.1', '10.0.0.20'] };
    const u = observeStaticMac('10.0.0.2', 'va', MAC, lacks, entry(undefined, ['INCOMPLETE']));
    assert.deepEqual([u.verdict, u.ask], ['unverified', 'resolve']);
    assert.match(u.why, /no resolved neighbour entry for 10\.0\.0\.2 on va/);
    assert.match(
      u.why,
      new RegExp(`the veth peer vb of va has MAC ${MAC}, but no address 10\\.0\\.0\\.2 is held there`),
    );
    // ... or an answer from another MAC contradicts it.
    const other = { ...entry(OTHER, ['REACHABLE'], 0), answered: true };
    assert.equal(observeStaticMac('10.0.0.2', 'va', MAC, lacks, other).verdict, 'contradicted');
    // Another MAC on the peer contradicts whatever it holds.
    assert.equal(
      observeStaticMac('10.0.0.2', 'va', MAC, { ...peer(OTHER), ips: [] }, undefined).verdict,
      'contradicted',
    );
    // A changed address list is a changed peer (judged again).
    assert.equal(samePeer(holds, lacks), false);
    assert.equal(samePeer(holds, { ...peer(MAC), ips: ['10.0.0.1', '10.0.0.2'] }), true);
  });

  it('a veth peer in our namespace decides, unless it takes frames for other MACs', () => {
    assert.equal(observeStaticMac('10.0.0.2', 'va', MAC, peer(MAC), undefined).verdict, 'confirmed');
    const o = observeStaticMac('10.0.0.2', 'va', MAC, peer(OTHER), entry(MAC, ['REACHABLE'], 0));
    assert.equal(o.verdict, 'contradicted', 'the peer outranks the neighbour table');
    assert.equal(
      o.why,
      `static MAC contradicted: the veth peer vb of va has MAC ${OTHER}, not the static ${MAC} (frames to ${MAC} are dropped there)`,
    );
    assert.equal(o.ask, undefined);
    // A bridge port, bond slave or promiscuous peer may take other MACs: the neighbour table decides.
    assert.equal(
      observeStaticMac('10.0.0.2', 'va', MAC, peer(OTHER, true), entry(MAC, ['REACHABLE'], 1)).verdict,
      'confirmed',
    );
  });

  it('a veth peer whose namespace cannot be read: no evidence, "cannot be verified" with the reason', () => {
    const why =
      'the veth peer of va is in a network namespace (nsid 3) that cannot be read: permission denied (EACCES)';
    const gone = { unreadable: why };
    const u = observeStaticMac('10.0.0.2', 'va', MAC, gone, entry(undefined, ['INCOMPLETE']));
    assert.deepEqual([u.verdict, u.ask], ['unverified', 'resolve']);
    assert.equal(
      u.why,
      `static MAC ${MAC} cannot be verified: no resolved neighbour entry for 10.0.0.2 on va (ARP asked; no answer yet); ${why}`,
    );
    // The neighbour evidence still decides when there is some.
    const answered = { ...entry(OTHER, ['REACHABLE'], 0), answered: true };
    assert.equal(observeStaticMac('10.0.0.2', 'va', MAC, gone, answered).verdict, 'contradicted');
    assert.equal(observeStaticMac('10.0.0.2', 'va', MAC, gone, entry(MAC, ['REACHABLE'], 0)).verdict, 'confirmed');
    // A peer read again, or unreadable for another reason, is judged again.
    assert.equal(samePeer(gone, { unreadable: why }), true);
    assert.equal(
      samePeer(gone, { unreadable: 'the veth peer of va (ifindex 4 in nsid 3) was not found there' }),
      false,
    );
    assert.equal(samePeer(gone, peer(MAC)), false);
    assert.equal(samePeer(peer(MAC), gone), false);
  });

  it('a freshly confirmed neighbour entry decides; its MAC compared case-blind', () => {
    const ok = observeStaticMac('10.0.0.2', 'eth1', MAC.toUpperCase(), undefined, entry(MAC, ['REACHABLE'], FRESH_S));
    assert.deepEqual([ok.verdict, ok.ask], ['confirmed', 'reprobe']);
    const bad = observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, entry(OTHER, ['REACHABLE'], 0));
    assert.equal(bad.verdict, 'contradicted');
    assert.match(bad.why, new RegExp(`^static MAC contradicted: 10.0.0.2 answers ARP on eth1 from ${OTHER} `));
    assert.match(bad.why, new RegExp(`not from the static ${MAC}`));
    assert.equal(bad.ask, 'reprobe', 'kept fresh, so that agreement is seen');
  });

  it('a fresh entry whose MAC answered no probe of ours contradicts nothing: probed, not "answers ARP"', () => {
    const written = { ...entry(OTHER, ['REACHABLE'], 0), answered: false };
    const o = observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, written);
    assert.deepEqual([o.verdict, o.ask], ['unverified', 'reprobe']);
    assert.match(o.why, new RegExp(`holds ${OTHER} \\(REACHABLE\\), which no ARP probe of ours has had answered yet`));
    assert.doesNotMatch(o.why, /answers ARP/);
    // The last definitive verdict stands meanwhile (for its hold): a confirmed static MAC stays confirmed.
    const prev = { mac: MAC, verdict: 'confirmed' as const, why: 'x', since: 0 };
    const held = stepStaticMac(prev, MAC, o, 1);
    assert.deepEqual([held.verdict, held.why, held.heldSince], ['confirmed', 'x', 1]);
    assert.equal(stepStaticMac(held, MAC, o, 2), held);
    // Answered: evidence again, either way.
    const answered = { ...entry(OTHER, ['REACHABLE'], 0), answered: true };
    assert.equal(observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, answered).verdict, 'contradicted');
    const same = { ...entry(MAC, ['REACHABLE'], 0), answered: false };
    assert.equal(observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, same).verdict, 'confirmed');
  });

  it('another MAC answering contradicts only when the static MAC, asked, does not: both answering is an address conflict', () => {
    // A host with two interfaces on one link answers ARP for its address from both (arp_ignore=0): the entry
    // holds one, the static MAC is the other. Before: "contradicted" from the entry alone.
    const answered = { ...entry(OTHER, ['REACHABLE'], 0), answered: true };
    const both = observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, answered, { own: 'answers', others: [OTHER] });
    assert.equal(both.verdict, 'conflict');
    assert.match(
      both.why,
      new RegExp(
        `^address conflict: 10\\.0\\.0\\.2 answers ARP on eth1 with ${MAC} \\(the static MAC: .*\\) and ${OTHER} \\(it answers ARP requests of ours on eth1\\): two MACs answer`,
      ),
    );
    assert.deepEqual(both.askMacs, [MAC, OTHER], 'both asked, once a second');
    // The same whichever MAC the kernel's entry holds now (it follows the last that answered).
    const flipped = { ...entry(MAC, ['REACHABLE'], 0), answered: true };
    const both2 = observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, flipped, { own: 'answers', others: [OTHER] });
    assert.deepEqual([both2.verdict, both2.why], ['conflict', both.why]);
    // Asked and silent: contradicted, said so.
    const silent = observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, answered, { own: 'silent', others: [OTHER] });
    assert.equal(silent.verdict, 'contradicted');
    assert.match(
      silent.why,
      new RegExp(`^static MAC contradicted: .*; ${MAC} asked by ARP requests of ours: no answer$`),
    );
    assert.deepEqual(silent.askMacs, [MAC], 'still asked: an answer later is a conflict, not a contradiction');
    // Not asked yet: not judged on the other's word alone.
    const unasked = observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, answered, { own: 'unasked', others: [] });
    assert.deepEqual([unasked.verdict, unasked.askMacs], ['unverified', [MAC]]);
    assert.match(
      unasked.why,
      new RegExp(`^static MAC ${MAC} cannot be verified: .*whether ${MAC} answers too is not known yet`),
    );
    // Nothing of ours can ask (no CAP_NET_RAW): the entry decides, as before.
    assert.equal(observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, answered).verdict, 'contradicted');
    // The same for what our own requests found (a NOARP egress: `via`).
    const via = { mac: OTHER, states: ['REACHABLE'], via: 'eth1 has ARP off (NOARP)' };
    const v = observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, via, { own: 'answers', others: [] });
    assert.equal(v.verdict, 'conflict');
    assert.match(v.why, new RegExp(`and ${OTHER} \\(it answers ARP requests of ours on eth1: eth1 has ARP off`));
    const vs = observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, via, { own: 'silent', others: [] });
    assert.equal(vs.verdict, 'contradicted');
    // The static MAC alone answers: confirmed as before (the entry holds it).
    const alone = observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, flipped, { own: 'answers', others: [] });
    assert.equal(alone.verdict, 'confirmed');
    // A veth peer that takes no other MAC decides alone: frames to another MAC are dropped there.
    const p = observeStaticMac('10.0.0.2', 'eth1', MAC, peer(OTHER), answered, { own: 'answers', others: [OTHER] });
    assert.equal(p.verdict, 'contradicted');
    // A conflict is definitive: it stands while nothing is, as any verdict.
    const st = stepStaticMac(undefined, MAC, both, 0);
    assert.equal(stepStaticMac(st, MAC, unasked, 1).verdict, 'conflict');
  });

  it('anything else cannot be verified, and asks the kernel for fresh evidence', () => {
    const stale = observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, entry(OTHER, ['STALE'], 100));
    assert.deepEqual([stale.verdict, stale.ask], ['unverified', 'reprobe']);
    assert.match(stale.why, /^static MAC 02:00:00:00:00:01 cannot be verified: .*not freshly confirmed \(STALE/);
    const old = observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, entry(OTHER, ['REACHABLE'], FRESH_S + 1));
    assert.deepEqual([old.verdict, old.ask], ['unverified', 'reprobe'], 'REACHABLE but not fresh');
    const probing = observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, entry(OTHER, ['PROBE'], 20));
    assert.deepEqual([probing.verdict, probing.ask], ['unverified', undefined], 'the kernel is at it already');
    for (const e of [undefined, entry(undefined, ['FAILED']), entry(undefined, ['INCOMPLETE'])]) {
      const o = observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, e);
      assert.deepEqual([o.verdict, o.ask], ['unverified', 'resolve']);
      assert.match(o.why, /no resolved neighbour entry for 10\.0\.0\.2 on eth1/);
    }
    const byHand = observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, entry(OTHER, ['PERMANENT']));
    assert.deepEqual([byHand.verdict, byHand.ask], ['unverified', undefined], 'not evidence of the host');
    assert.match(
      observeStaticMac('10.0.0.2', 'va', MAC, peer(OTHER, true), undefined).why,
      /the veth peer vb may take frames for other MACs/,
    );
  });
});

describe('static MACs: the kept verdict', () => {
  const obs = (verdict: 'confirmed' | 'contradicted' | 'unverified', why: string = verdict) => ({ verdict, why });
  it('the last definitive verdict stands while nothing is definitive, for STATIC_MAC_HOLD_MS at most', () => {
    let s = stepStaticMac(undefined, MAC, obs('unverified'));
    assert.equal(s.verdict, 'unverified');
    s = stepStaticMac(s, MAC, obs('contradicted', 'x'), 1000);
    assert.equal(s.verdict, 'contradicted');
    const kept = stepStaticMac(s, MAC, obs('unverified'), 2000);
    assert.deepEqual([kept.verdict, kept.why, kept.heldSince], ['contradicted', 'x', 2000], 'held from now');
    assert.equal(stepStaticMac(kept, MAC, obs('unverified'), 2000 + STATIC_MAC_HOLD_MS - 1), kept);
    s = stepStaticMac(kept, MAC, obs('confirmed'), 3000);
    assert.deepEqual([s.verdict, s.heldSince], ['confirmed', undefined], 'evidence again: no longer held');
    assert.equal(stepStaticMac(s, MAC, obs('confirmed'), 3500), s, 'unchanged: the same object');
    const c = stepStaticMac(s, MAC, obs('unverified', 'no answer'), 4000);
    assert.deepEqual([c.verdict, c.heldSince], ['confirmed', 4000]);
    // Evidence while held ends the hold (the same verdict, now observed).
    const again = stepStaticMac(c, MAC, obs('confirmed'), 5000);
    assert.deepEqual([again.verdict, again.heldSince], ['confirmed', undefined]);
  });
  it('a confirmation whose host stopped answering is withdrawn after the hold (the review: ACTIVE, 0/50 delivered)', () => {
    let s = stepStaticMac(undefined, MAC, obs('confirmed', 'answered'), 0);
    const gone = obs('unverified', `static MAC ${MAC} cannot be verified: no resolved neighbour entry`);
    s = stepStaticMac(s, MAC, gone, 10_000);
    assert.equal(s.verdict, 'confirmed', 'held');
    s = stepStaticMac(s, MAC, gone, 10_000 + STATIC_MAC_HOLD_MS);
    assert.deepEqual([s.verdict, s.why, s.heldSince], ['unverified', gone.why, undefined]);
    assert.equal(s.since, 0, 'first judged long ago: said at once (no grace)');
    // A contradiction likewise: nothing observed contradicts the MAC any more.
    let x = stepStaticMac(undefined, MAC, obs('contradicted', 'other MAC'), 0);
    x = stepStaticMac(x, MAC, gone, 1);
    x = stepStaticMac(x, MAC, gone, 1 + STATIC_MAC_HOLD_MS);
    assert.equal(x.verdict, 'unverified');
  });
  it('another static MAC starts over', () => {
    const s = stepStaticMac(undefined, MAC, obs('contradicted'));
    assert.equal(stepStaticMac(s, OTHER, obs('unverified')).verdict, 'unverified');
    assert.equal(staticMacKey('10.0.0.2', 'eth1', MAC.toUpperCase()), `10.0.0.2@eth1|${MAC}`);
  });
});

describe('static MACs: what a rule says about one that cannot be verified', () => {
  const written = (): RuleStatus => ({
    state: 'active',
    message: 'forwarding to 2 backend(s)',
    backends: [
      { ip: '10.0.0.2', interface: 'eth1', mac: MAC, resolved: true, receiving: true, message: '' },
      { ip: '10.0.0.3', interface: 'eth1', mac: OTHER, resolved: true, receiving: true, message: '' },
    ],
    warnings: [],
  });
  const rule = {
    ingressInterfaces: ['in0'],
    backends: [
      { ip: '10.0.0.2', interface: 'eth1', mac: MAC, weight: 1 },
      { ip: '10.0.0.3', interface: 'eth1', mac: OTHER, weight: 1 },
    ],
  };
  const WHY = `static MAC ${MAC} cannot be verified: no resolved neighbour entry for 10.0.0.2 on eth1 (ARP asked; no answer yet)`;
  const observe = (unverifiedMacs: ReadonlyMap<string, string>): RuleObservation => ({
    ingressProblems: new Map(),
    ingressDown: new Map(),
    unverifiedEgress: new Map(),
    unverifiedMacs,
    unanswered: new Map(),
    holds: new Map(),
    handSet: new Map(),
    ingressSettings: new Map(),
  });

  it('DEGRADED, BackendsReceiving Unknown (BackendsUnverified), naming it; kept in the table', () => {
    // Before: ACTIVE, BackendsReceiving True (AllReceiving), only the backend's message said it.
    const k: { status: RuleStatus; written?: RuleStatus } = { status: written() };
    judgeRule(k, rule, observe(new Map([[staticMacKey('10.0.0.2', 'eth1', MAC), WHY]])));
    assert.equal(k.status.state, 'degraded', k.status.message);
    assert.match(
      k.status.message,
      /1 cannot be verified \(10\.0\.0\.2@eth1: static MAC that nothing on the host confirms\)/,
    );
    assert.equal(k.status.backends[0].receiving, true, 'nothing contradicts it: in the table');
    assert.equal(k.status.backends[0].unverified, true);
    assert.equal(k.status.backends[0].message, WHY);
    assert.equal(k.status.backends[1].unverified, undefined);
    const c = ruleConditions(k.status, [1, 1], []);
    const br = c.find((x) => x.type === 'BackendsReceiving')!;
    assert.deepEqual([br.status, br.reason], ['Unknown', 'BackendsUnverified']);
    assert.match(br.message, /10\.0\.0\.2@eth1: static MAC .* cannot be verified/);
    assert.equal(c.find((x) => x.type === 'Ready')!.status, 'False');
    assert.ok(k.written, 'the written status kept');
  });

  it('an address conflict: kept in the table, DEGRADED, BackendsReceiving Unknown (AddressConflict), both MACs named', () => {
    const why = `address conflict: 10.0.0.2 answers ARP on eth1 with ${MAC} (the static MAC: x) and ${OTHER} (y): two MACs`;
    const k: { status: RuleStatus; written?: RuleStatus } = { status: written() };
    judgeRule(k, rule, observe(new Map([[staticMacKey('10.0.0.2', 'eth1', MAC), why]])));
    assert.equal(k.status.state, 'degraded', k.status.message);
    assert.match(
      k.status.message,
      new RegExp(`1 in an address conflict \\(10\\.0\\.0\\.2@eth1: static MAC ${MAC} and`),
    );
    assert.doesNotMatch(k.status.message, /cannot be verified/);
    assert.deepEqual(
      [k.status.backends[0].receiving, k.status.backends[0].unverified, k.status.backends[0].conflict],
      [true, true, true],
    );
    assert.equal(k.status.backends[0].message, why);
    const br = ruleConditions(k.status, [1, 1], []).find((x) => x.type === 'BackendsReceiving')!;
    assert.deepEqual([br.status, br.reason], ['Unknown', 'AddressConflict']);
  });

  it('within its first 3 s: "not confirmed yet", DEGRADED and BackendsReceiving Unknown all the same', () => {
    // Before: nothing said (ACTIVE) until UNVERIFIED_GRACE_MS, while nothing observed said it receives.
    const yet = unconfirmedYetWhy(WHY);
    assert.equal(
      yet,
      `static MAC ${MAC} not confirmed yet: no resolved neighbour entry for 10.0.0.2 on eth1 (ARP asked; no answer yet)`,
    );
    const k: { status: RuleStatus; written?: RuleStatus } = { status: written() };
    judgeRule(k, rule, observe(new Map([[staticMacKey('10.0.0.2', 'eth1', MAC), yet]])));
    assert.equal(k.status.state, 'degraded', k.status.message);
    assert.match(
      k.status.message,
      /; 1 not confirmed yet \(10\.0\.0\.2@eth1: static MAC that nothing on the host confirms yet\)$/,
    );
    assert.equal(k.status.backends[0].unverified, true);
    assert.equal(k.status.backends[0].message, yet);
    const br = ruleConditions(k.status, [1, 1], []).find((x) => x.type === 'BackendsReceiving')!;
    assert.deepEqual([br.status, br.reason], ['Unknown', 'BackendsUnverified']);
    // One of each: both said.
    const both = new Map([
      [staticMacKey('10.0.0.2', 'eth1', MAC), yet],
      [staticMacKey('10.0.0.3', 'eth1', OTHER), `static MAC ${OTHER} cannot be verified: x`],
    ]);
    const k2: { status: RuleStatus; written?: RuleStatus } = { status: written() };
    judgeRule(k2, rule, observe(both));
    assert.match(
      k2.status.message,
      /; 1 cannot be verified \(10\.0\.0\.3@eth1: .*; 1 not confirmed yet \(10\.0\.0\.2@eth1: /,
    );
  });

  it('a confirmed static MAC (not in the map) stays ACTIVE; a contradicted one (out of the table) as it is', () => {
    const k: { status: RuleStatus; written?: RuleStatus } = { status: written() };
    judgeRule(k, rule, observe(new Map()));
    assert.equal(k.status.state, 'active');
    const out = written();
    out.state = 'degraded';
    out.backends[0] = { ...out.backends[0], receiving: false, message: 'static MAC contradicted: x' };
    const k2: { status: RuleStatus; written?: RuleStatus } = { status: out };
    judgeRule(k2, rule, observe(new Map([[staticMacKey('10.0.0.2', 'eth1', MAC), WHY]])));
    assert.equal(k2.status, out, 'unchanged');
  });

  it('a drained one (weight 0) is said so but does not lower the rule', () => {
    const k: { status: RuleStatus; written?: RuleStatus } = { status: written() };
    const drained = { ...rule, backends: [{ ...rule.backends[0], weight: 0 }, rule.backends[1]] };
    judgeRule(k, drained, observe(new Map([[staticMacKey('10.0.0.2', 'eth1', MAC), WHY]])));
    assert.equal(k.status.state, 'active', k.status.message);
    assert.equal(k.status.backends[0].message, WHY);
  });
});
