/**
 * core/entry-owners.ts: the repair subject of a kernel entry the reconciler rewrote, from the line that says it
 * (the formats of execute.ts writeRepairs and dataplane/tables.ts): one subject per entry whatever differed in
 * it, and the rules and link directions that own it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { entrySubject } from '../../src/server/core/entry-owners.js';
import type { CoreState } from '../../src/server/core/state.js';

const state = {
  rules: new Map([
    ['web', { ingressInterfaces: ['eth0'] }],
    ['api', { ingressInterfaces: ['eth1'] }],
    ['dns', { ingressInterfaces: ['eth0'] }],
  ]),
  ruleKernel: new Map([
    ['web', { matchKeys: [{ dport: 7813 }] }],
    ['api', { matchKeys: [{ dport: 7813 }] }],
    ['dns', { matchKeys: [{ dport: 53 }] }],
  ]),
  linkDirs: new Map([[9, { from: 'veth9', to: 'veth10' }]]),
} as unknown as CoreState;

describe('entry owners', () => {
  it("a rule's own entries: that rule, one subject per entry whatever differed", () => {
    const a = entrySubject(
      'rule web: backend 10.0.0.2@v2 (map backends, entry 5): destination MAC: kernel 02:00:00:00:00:01, desired 02:00:00:00:00:02',
      state,
    );
    const b = entrySubject('rule web: backend 10.0.0.2@v2 (map backends, entry 5): absent in the kernel', state);
    assert.equal(a.key, b.key);
    assert.equal(a.what, 'the kernel entry rule web: backend 10.0.0.2@v2 (map backends, entry 5)');
    assert.deepEqual(a.rules, ['web']);
    const r1 = entrySubject('rule web: backend table (map rule_ring, rule slot 3, positions 0-9 of 1031)', state);
    const r2 = entrySubject('rule web: backend table (map rule_ring, rule slot 3, position 7 of 1031)', state);
    assert.equal(r1.key, r2.key);
    assert.equal(r1.what, 'the kernel entry rule web: backend table (map rule_ring, rule slot 3)');
    const p1 = entrySubject('rule web: source prefixes (map src_allow, rule slot 3: 1 added, 0 removed)', state);
    const p2 = entrySubject('rule web: source prefixes (map src_allow, rule slot 3: 0 added, 2 removed)', state);
    assert.equal(p1.key, p2.key);
    assert.deepEqual(p1.rules, ['web']);
    const c = entrySubject(
      'rule web: rule entry (map rule_cfg, rule slot 3): active: kernel false, desired true',
      state,
    );
    assert.equal(c.what, 'the kernel entry rule web: rule entry (map rule_cfg, rule slot 3)');
    assert.deepEqual(c.rules, ['web']);
    const m = entrySubject(
      'rule web: match entry (map rule_match: ingress eth0 ifindex 4, UDP port 7813, any destination): kernel absent, desired rule slot 3',
      state,
    );
    assert.equal(
      m.what,
      'the kernel entry rule web: match entry (map rule_match: ingress eth0 ifindex 4, UDP port 7813, any destination)',
    );
    assert.deepEqual(m.rules, ['web']);
    assert.deepEqual(m.interfaces, []);
  });

  it("a port's index entry: the rules with a match entry on the port", () => {
    const s = entrySubject(
      'port index (map rule_ports, port 7813): kernel {"any":0,"dst":0}, desired {"any":2,"dst":0}',
      state,
    );
    assert.equal(s.key, 'entry|port index (map rule_ports, port 7813)');
    assert.deepEqual(s.rules, ['api', 'web']);
    const none = entrySubject(
      'port index (map rule_ports, port 7822): kernel {"any":1,"dst":0}, desired {"any":0,"dst":0} (no match entry uses the port)',
      state,
    );
    assert.equal(none.rules, undefined, 'no rule uses it: a datapath problem only');
  });

  it("an interface's flags: the rules whose ingress it is and the link direction from it; a link's egress entry: the direction", () => {
    const f = entrySubject(
      'interface flags of eth0 (map if_flags, ifindex 4): kernel none, desired generic: our program runs in generic mode there',
      state,
    );
    assert.equal(f.key, 'entry|interface flags of eth0 (map if_flags, ifindex 4)');
    assert.deepEqual(f.rules, ['dns', 'web']);
    assert.equal(f.links, undefined);
    const l = entrySubject('interface flags of veth9 (map if_flags, ifindex 9): kernel none, desired xconnect', state);
    assert.deepEqual(l.links, ['veth9']);
    const e = entrySubject(
      "link counters' egress (map xc_egress, index 2, link direction from of veth9 ifindex 9): kernel ifindex 0, desired ifindex 10",
      state,
    );
    assert.deepEqual(e.links, ['veth9']);
    assert.equal(e.rules, undefined);
  });

  it('an entry no rule holds: no owner', () => {
    const s = entrySubject(
      'match entry (map rule_match: ingress eth0 ifindex 4, UDP port 9, any destination): kernel rule slot 8, desired absent (no rule holds it): deleted',
      state,
    );
    assert.equal(s.rules, undefined);
    assert.equal(s.links, undefined);
    assert.deepEqual(s.interfaces, []);
  });
});
