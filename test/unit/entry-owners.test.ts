/**
 * core/entry-owners.ts: the repair subject of a kernel entry the reconciler rewrote, from the record the code that
 * rewrote it hands over (execute.ts writeRepairs, kernel-check.ts, dataplane/tables.ts: map, key, entry, owner,
 * and its line): one subject per entry whatever differed in it, and the rules and link directions that own it;
 * the line's wording plays no part.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { entrySubject, type EntryOwner, type EntryRepair } from '../../src/server/core/entry-owners.js';
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

/** A record as the producers make it: `entry`, then what differed after it in `line`. */
const repair = (map: string, key: string | number, entry: string, owner: EntryOwner, rest = ''): EntryRepair => ({
  line: `${entry}${rest}`,
  map,
  key: String(key),
  entry,
  owner,
});
/** `r` said in other words. */
const said = (r: EntryRepair, line: string): EntryRepair => ({ ...r, line });
/** The subjects of `r` said in each of `lines`. */
const subjects = (r: EntryRepair, ...lines: string[]) => lines.map((l) => entrySubject(said(r, l), state));

const web: EntryOwner = { kind: 'rule', rule: 'web' };
const backend = repair('backends', 5, 'rule web: backend 10.0.0.2@v2 (map backends, entry 5)', web);
const ruleEntry = repair('rule_cfg', 3, 'rule web: rule entry (map rule_cfg, rule slot 3)', web);
const matchEntry = 'match entry (map rule_match: ingress eth0 ifindex 4, UDP port 7813, any destination)';
const port = (p: number) =>
  repair('rule_ports', p, `port index (map rule_ports, port ${p})`, { kind: 'port', port: p });
const flags = (ifindex: number, name: string) =>
  repair('if_flags', ifindex, `interface flags of ${name} (map if_flags, ifindex ${ifindex})`, {
    kind: 'interface',
    ifindex,
    name,
  });
const egress = repair(
  'xc_egress',
  2,
  "link counters' egress (map xc_egress, index 2, link direction from of veth9 ifindex 9)",
  { kind: 'link', ifindex: 9 },
);

describe('entry owners', () => {
  it("a rule's own entries: that rule, one subject per entry whatever differed", () => {
    const [a, b] = subjects(
      backend,
      'rule web: backend 10.0.0.2@v2 (map backends, entry 5): destination MAC: kernel 02:00:00:00:00:01, desired 02:00:00:00:00:02',
      'rule web: backend 10.0.0.2@v2 (map backends, entry 5): absent in the kernel',
    );
    assert.equal(a.key, b.key);
    assert.equal(a.what, 'the kernel entry rule web: backend 10.0.0.2@v2 (map backends, entry 5)');
    assert.deepEqual(a.rules, ['web']);
    // Lines that do not open with the entry's words (what differed inside its parentheses): one subject each.
    const table = 'rule web: backend table (map rule_ring, rule slot 3)';
    const prefixes = 'rule web: source prefixes (map src_allow, rule slot 3)';
    for (const [map, entry, ...lines] of [
      [
        'rule_ring',
        table,
        'rule web: backend table (map rule_ring, rule slot 3, positions 0-9 of 1031)',
        'rule web: backend table (map rule_ring, rule slot 3, position 7 of 1031)',
      ],
      [
        'src_allow',
        prefixes,
        'rule web: source prefixes (map src_allow, rule slot 3: 1 added, 0 removed)',
        'rule web: source prefixes (map src_allow, rule slot 3: 0 added, 2 removed)',
      ],
    ]) {
      const [s1, s2] = subjects(repair(map, 3, entry, web), ...lines);
      assert.equal(s1.key, s2.key);
      assert.equal(s1.what, `the kernel entry ${entry}`);
      assert.deepEqual(s1.rules, ['web']);
    }
    const [c] = subjects(
      ruleEntry,
      'rule web: rule entry (map rule_cfg, rule slot 3): active: kernel false, desired true',
    );
    assert.equal(c.what, 'the kernel entry rule web: rule entry (map rule_cfg, rule slot 3)');
    assert.deepEqual(c.rules, ['web']);
    const m = entrySubject(
      repair('rule_match', '4/17/7813/0.0.0.0', `rule web: ${matchEntry}`, web, ': kernel absent, desired rule slot 3'),
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
    const [s] = subjects(
      port(7813),
      'port index (map rule_ports, port 7813): kernel {"any":0,"dst":0}, desired {"any":2,"dst":0}',
    );
    assert.equal(s.key, 'entry|rule_ports|7813');
    assert.equal(s.what, 'the kernel entry port index (map rule_ports, port 7813)');
    assert.deepEqual(s.rules, ['api', 'web']);
    const [none] = subjects(
      port(7822),
      'port index (map rule_ports, port 7822): kernel {"any":1,"dst":0}, desired {"any":0,"dst":0} (no match entry uses the port)',
    );
    assert.equal(none.rules, undefined, 'no rule uses it: a datapath problem only');
  });

  it("an interface's flags: the rules whose ingress it is and the link direction from it; a link's egress entry: the direction", () => {
    const [f] = subjects(
      flags(4, 'eth0'),
      'interface flags of eth0 (map if_flags, ifindex 4): kernel none, desired generic: our program runs in generic mode there',
    );
    assert.equal(f.key, 'entry|if_flags|4');
    assert.equal(f.what, 'the kernel entry interface flags of eth0 (map if_flags, ifindex 4)');
    assert.deepEqual(f.rules, ['dns', 'web']);
    assert.equal(f.links, undefined);
    const [l] = subjects(
      flags(9, 'veth9'),
      'interface flags of veth9 (map if_flags, ifindex 9): kernel none, desired xconnect',
    );
    assert.deepEqual(l.links, ['veth9']);
    const [e] = subjects(
      egress,
      "link counters' egress (map xc_egress, index 2, link direction from of veth9 ifindex 9): kernel ifindex 0, desired ifindex 10",
    );
    assert.deepEqual(e.links, ['veth9']);
    assert.equal(e.rules, undefined);
  });

  it('an entry no rule holds: no owner', () => {
    const s = entrySubject(
      repair(
        'rule_match',
        '4/17/9/0.0.0.0',
        'match entry (map rule_match: ingress eth0 ifindex 4, UDP port 9, any destination)',
        { kind: 'none' },
        ': kernel rule slot 8, desired absent (no rule holds it): deleted',
      ),
      state,
    );
    assert.equal(s.rules, undefined);
    assert.equal(s.links, undefined);
    assert.deepEqual(s.interfaces, []);
  });

  it('a reworded line changes neither the subject nor its owners (the line is not read)', () => {
    // Each record said as its producer says it, then in other words (which the old parser of lines gave other
    // owners, or none: it found them in the line's "rule NAME: " and "(map M, ...)").
    const cases: [EntryRepair, string][] = [
      [backend, 'backend 10.0.0.2 of rule api: destination MAC rewritten'],
      [ruleEntry, 'slot 3 (rule api on eth1) reactivated'],
      [port(7813), 'the per-port count of UDP 7813 was 0 where 2 belong: rewritten'],
      [flags(4, 'eth0'), 'flags word for ifindex 9 (map if_flags, ifindex 9) rewritten to generic mode'],
      [egress, 'egress of counters #2 set back to 10'],
    ];
    for (const [r, reworded] of cases) {
      const [before, after, empty] = subjects(r, `${r.entry}: kernel X, desired Y`, reworded, '');
      assert.ok(before.rules ?? before.links, `${r.entry}: has owners`);
      assert.deepEqual(after, before, reworded);
      assert.deepEqual(empty, before, `${r.entry}: with no line at all`);
    }
  });
});
