/**
 * One rule's change costs O(1) + O(its backends), whatever the rule count. Here: the
 * judgement of a changed rule's status (resync.ts observeWrittenRules) reads the static-MAC verdicts of its
 * own backends only. It walked the whole grace list and copied every kept verdict (40 000 with 10 000 rules
 * of 4 static-MAC backends) at each change made while one of them was past its grace: ~6 ms a change at
 * 10 000 rules, none at 10. A fake host (no neighbour answers, so every static MAC stays unverified) and
 * counting maps show what a change touches; the status it gives is the one it gave before.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Controller } from '../../src/server/core/controller.js';
import type { RuleSpec } from '../../src/server/core/model.js';
import { UNVERIFIED_GRACE_MS } from '../../src/server/core/static-mac.js';
import type { NeighbourEntry } from '../../src/server/dataplane/netdev.js';
import { stateOf } from '../helpers/agree.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';

/** A host whose neighbour table is empty and where nothing answers: static MACs stay unverified. */
class SilentHost extends ModelDataplane {
  override async neighbourTable(): Promise<Map<string, NeighbourEntry>> {
    return new Map();
  }
  override vethPeerMac(): undefined {
    return undefined;
  }
  override neighbourAnswered(): undefined {
    return undefined;
  }
  override verifyNeighbour(): boolean {
    return false;
  }
  override probeNeighbour(): void {}
}

/** A Map that counts the walks over it and the copies made of it (a copy walks it too). */
class CountingMap<K, V> extends Map<K, V> {
  walks = 0;
  override [Symbol.iterator](): MapIterator<[K, V]> {
    this.walks++;
    return super[Symbol.iterator]();
  }
  override entries(): MapIterator<[K, V]> {
    this.walks++;
    return super.entries();
  }
  override keys(): MapIterator<K> {
    this.walks++;
    return super.keys();
  }
  override values(): MapIterator<V> {
    this.walks++;
    return super.values();
  }
  override forEach(fn: (v: V, k: K, m: Map<K, V>) => void): void {
    this.walks++;
    super.forEach(fn);
  }
}

const rule = (i: number, variant = 0): RuleSpec => ({
  name: `r${i}`,
  protocol: 'udp',
  port: 7000 + i,
  destination: '',
  sourcePrefixes: [],
  ingressInterfaces: ['in0'],
  backends: [0, 1].map((k) => ({
    ip: `10.${1 + k + 2 * variant}.${Math.floor(i / 250)}.${(i % 250) + 1}`,
    mac: `02:42:ac:10:0${k}:0${variant + 2}`,
    interface: `b${k}`,
    weight: 1,
  })),
  udpChecksum: 'zero',
  labels: {},
});

describe('the cost of one rule change', () => {
  it("judges its status from its own backends' static-MAC verdicts: no walk or copy of every rule's", async () => {
    let t = 1_000_000;
    const n = 200;
    const dp = new SilentHost({
      links: 16,
      ruleSlots: n + 8,
      statsIds: 4 * n,
      matches: 4 * n,
      srcPrefixes: 64,
      backends: 4 * n,
    });
    const c = new Controller(dp, { mode: 'native', fixVethPeers: true, now: () => t, staticMacWaitMs: 0 });
    await c.applyRules(
      Array.from({ length: n }, (_, i) => rule(i)),
      false,
    );
    await c.resync(); // every static MAC judged: unverified, in its grace ("not confirmed yet")
    const s = stateOf(c);
    assert.equal(s.staticMacGrace.size, 2 * n, 'every static MAC in its grace');
    assert.match(c.getRule('r1').status.message, /not confirmed yet/);
    // Their grace is over, and no pass has said so yet: a change made now says it of its own backends.
    t += UNVERIFIED_GRACE_MS + 1;
    const grace = new CountingMap(s.staticMacGrace);
    const verdicts = new CountingMap(s.staticMacUnverified);
    Object.assign(s, { staticMacGrace: grace, staticMacUnverified: verdicts });
    // r0 changes one backend (a new static MAC: judged afresh, in its grace) and keeps the other (past it).
    const next = rule(0);
    next.backends[1] = { ...next.backends[1], weight: 2 };
    next.backends[0] = { ...rule(0, 1).backends[0] };
    await c.updateRule(next, 0);
    assert.equal(grace.walks, 0, 'the grace list was not walked');
    assert.equal(verdicts.walks, 0, 'the kept verdicts were neither walked nor copied');
    const st = c.getRule('r0').status;
    const kept = `${next.backends[1].ip}@b1`;
    const fresh = `${next.backends[0].ip}@b0`;
    assert.match(st.message, new RegExp(`cannot be verified \\(${kept.replace(/\./g, '\\.')}:`), st.message);
    assert.match(st.message, new RegExp(`not confirmed yet \\(${fresh.replace(/\./g, '\\.')}:`), st.message);
    // Another rule's status is what the next pass makes it (not judged by r0's change).
    await c.resync();
    assert.match(c.getRule('r1').status.message, /cannot be verified/);
  });

  it('does not wait again for an address an earlier change waited for in vain (the kernel may have forgotten its FAILED entry)', async () => {
    const dp = new SilentHost();
    const c = new Controller(dp, { mode: 'native', fixVethPeers: true, staticMacWaitMs: 50 });
    const opts = (c as unknown as { opts: { staticMacWaitMs: number } }).opts;
    const a = rule(0);
    const b = rule(0, 1);
    await c.createRule(a); // waits 50 ms for a's addresses: nothing answers
    await c.updateRule(b, 0); // the same for b's
    await c.resync(); // a's static MACs forgotten (no rule names them): a change naming them judges them afresh
    // Back to a's: the empty neighbour table says nothing (no FAILED entry), yet these addresses went unanswered
    // 50 ms each just now. Before, this change waited the whole time again (here 60 s).
    opts.staticMacWaitMs = 60_000;
    const done = c.updateRule(a, 0).then(() => 'replied');
    const late = new Promise<string>((r) => setTimeout(() => r('still waiting after 20 s'), 20_000).unref());
    assert.equal(await Promise.race([done, late]), 'replied');
    assert.match(c.getRule('r0').status.message, /not confirmed yet/, 'said as a read says it');
  });
});
