/**
 * Static MACs (core/static-mac.ts): which observations are definitive, what each verdict says, what is
 * asked of the kernel, and that the last definitive verdict stands while nothing is. The integration test
 * (static-mac) drives the same with real hosts changing their MACs; here every branch, with facts as given.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { FRESH_S, observeStaticMac, staticMacKey, stepStaticMac } from '../../src/server/core/static-mac.js';

const MAC = '02:00:00:00:00:01';
const OTHER = '02:00:00:00:00:99';
const peer = (mac: string, takesOthers = false) => ({ name: 'vb', mac, takesOthers });
const entry = (mac: string | undefined, states: string[], confirmed?: number) => ({ mac, states, confirmed });

describe('static MACs: observations', () => {
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
    // The last definitive verdict stands meanwhile: a confirmed static MAC stays confirmed.
    const prev = { mac: MAC, verdict: 'confirmed' as const, why: 'x', since: 0 };
    assert.equal(stepStaticMac(prev, MAC, o, 1), prev);
    // Answered: evidence again, either way.
    const answered = { ...entry(OTHER, ['REACHABLE'], 0), answered: true };
    assert.equal(observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, answered).verdict, 'contradicted');
    const same = { ...entry(MAC, ['REACHABLE'], 0), answered: false };
    assert.equal(observeStaticMac('10.0.0.2', 'eth1', MAC, undefined, same).verdict, 'confirmed');
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
  it('the last definitive verdict stands while nothing is definitive', () => {
    let s = stepStaticMac(undefined, MAC, obs('unverified'));
    assert.equal(s.verdict, 'unverified');
    s = stepStaticMac(s, MAC, obs('contradicted', 'x'));
    assert.equal(s.verdict, 'contradicted');
    const kept = stepStaticMac(s, MAC, obs('unverified'));
    assert.equal(kept, s, 'still contradicted while the evidence is refreshed');
    s = stepStaticMac(kept, MAC, obs('confirmed'));
    assert.equal(s.verdict, 'confirmed');
    assert.equal(stepStaticMac(s, MAC, obs('unverified')), s);
    assert.equal(stepStaticMac(s, MAC, obs('confirmed')), s, 'unchanged: the same object');
  });
  it('another static MAC starts over', () => {
    const s = stepStaticMac(undefined, MAC, obs('contradicted'));
    assert.equal(stepStaticMac(s, OTHER, obs('unverified')).verdict, 'unverified');
    assert.equal(staticMacKey('10.0.0.2', 'eth1', MAC.toUpperCase()), `10.0.0.2@eth1|${MAC}`);
  });
});
