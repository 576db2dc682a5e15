/**
 * A start adopts the rules the datapath already holds in place (the target:
 * a start with 10 000 rules within 2x the start with none): every
 * entry a rule needs is read back and compared with the desired state, and
 * only the entries that differ are written. Over modelled maps that count
 * every write: a restart over intact maps writes nothing, and a restart over
 * maps with tampered entries writes exactly those entries, leaving every map
 * byte for byte as an intact restart does. test/integration/daemon-restart
 * proves the same against the kernel once.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Controller } from '../../src/server/core/controller.js';
import type { RuleSpec } from '../../src/server/core/model.js';
import { RING_SIZE } from '../../src/server/dataplane/codec.js';
import { captureLog, type LogLine } from '../helpers/log-capture.js';
import { MODEL_CAPACITY, ModelDataplane } from '../helpers/model-dataplane.js';
import { confirmPeers, twoBackends, udpSpec } from '../helpers/rule-spec.js';

const rule = (name: string, port: number, extra: Partial<RuleSpec> = {}): RuleSpec =>
  udpSpec(name, port, twoBackends(port), extra);

async function installed() {
  const dp = new ModelDataplane();
  confirmPeers(dp);
  const c = new Controller(dp, { mode: 'native', fixVethPeers: true });
  await c.applyRules(
    [
      rule('a', 5000, { sourcePrefixes: ['10.9.0.0/16', '192.0.2.7/32'] }),
      rule('b', 5001, { ingressInterfaces: ['in0', 'in1'] }),
      rule('c', 5002, { udpChecksum: 'zero' }),
    ],
    false,
  );
  return { dp, c, stored: c.storedState() };
}

const ids = (stored: ReturnType<Controller['storedState']>, name: string) =>
  stored.rules.find((r) => r.name === name)!.kernel!;

describe('restore: rules adopted in place', () => {
  it('a restart over intact maps writes nothing and serves every rule', async () => {
    const { dp, c, stored } = await installed();
    const dp2 = ModelDataplane.adopt(dp);
    const before = dp2.snapshot();
    const writes = dp2.faults.writes;
    const c2 = new Controller(dp2, { mode: 'native', fixVethPeers: true });
    await c2.restore(stored);
    assert.equal(dp2.faults.writes - writes, 0, 'no map write');
    assert.deepEqual(dp2.snapshot(), before);
    assert.deepEqual(c2.storedState(), stored, 'same slots and ids: counters continue');
    assert.deepEqual(
      c2.listRules().map((r) => [r.name, r.status.state]),
      c.listRules().map((r) => [r.name, r.status.state]),
    );
  });

  it('a restart over tampered entries rewrites exactly those entries', async () => {
    const { dp, stored } = await installed();
    const intact = ModelDataplane.adopt(dp).snapshot();
    const dp2 = ModelDataplane.adopt(dp);
    const m = dp2.model.maps;
    const a = ids(stored, 'a');
    const b = ids(stored, 'b');
    const c = ids(stored, 'c');
    // One entry of each kind: a backend's address, a source prefix removed and a foreign one
    // added, a rule entry's flags, a match entry repointed at another rule's slot.
    const bId = Object.values(b.backends)[0].id;
    m.backends.put(bId, { ...m.backends.get(bId)!, addr: Uint8Array.of(203, 0, 113, 9) });
    m.srcAllow.delete({ slot: a.slot, length: 16, addr: Uint8Array.of(10, 9, 0, 0) });
    m.srcAllow.put({ slot: a.slot, length: 8, addr: Uint8Array.of(192, 0, 0, 0) }, 1);
    m.ruleCfg.put(c.slot, { ...m.ruleCfg.get(c.slot)!, flags: m.ruleCfg.get(c.slot)!.flags & ~0x4 });
    const key = [...m.ruleMatch.entries()].find(([, slot]) => slot === b.slot)![0];
    m.ruleMatch.put(key, a.slot);
    const tampered = 5;
    const writes = dp2.faults.writes;
    const lines: LogLine[] = [];
    const c2 = new Controller(dp2, { mode: 'native', fixVethPeers: true, log: captureLog(lines) });
    await c2.restore(stored);
    assert.deepEqual(dp2.snapshot(), intact, 'every map as an intact restart leaves it');
    assert.deepEqual(c2.storedState(), stored, 'same slots and ids');
    // One write per entry, plus the port index the repointed match entry folds into (rule_ports,
    // derived from rule_match): recounted once at start, refolded once by the repair.
    assert.equal(dp2.faults.writes - writes, tampered + 2);
    // The log names each entry by what it is (rule, backend, map, slot), never as a request field path: a
    // kernel backend id printed as `backends[2]` read like the request's third backend.
    const bBackend = Object.keys(b.backends)[0];
    const ifindex = (n: string) => dp2.lookupInterface(n)!.ifindex;
    const matchIngress = key.ifindex === ifindex('in0') ? 'in0' : 'in1';
    const repaired = lines.find((l) => /differed from the stored state/.test(l.msg))?.fields.repaired as
      string[] | undefined;
    assert.deepEqual(repaired?.sort(), [
      `rule a: source prefixes (map src_allow, rule slot ${a.slot}: 1 added, 1 removed)`,
      // With the field that differed, the kernel's value and the desired one.
      `rule b: backend ${bBackend} (map backends, entry ${bId}): destination IP: kernel 203.0.113.9, desired ${bBackend.split('@')[0]}`,
      `rule b: match entry (map rule_match: ingress ${matchIngress} ifindex ${key.ifindex}, UDP port 5001, any destination): ` +
        `kernel rule slot ${a.slot}, desired rule slot ${b.slot}`,
      `rule c: rule entry (map rule_cfg, rule slot ${c.slot}): flags: kernel 0x1, desired 0x5`,
    ]);
    for (const r of repaired!) assert.doesNotMatch(r, /\w\[\d+\]/, `${r}: no request-style index`);
    assert.deepEqual(
      c2.listRules().map((r) => r.status.state),
      ['active', 'active', 'active'],
    );
  });

  it('a backend table that does not hold its shares is refilled from itself, moving only the slots it must', async () => {
    const { dp, stored } = await installed();
    const intact = ModelDataplane.adopt(dp).snapshot();
    const dp2 = ModelDataplane.adopt(dp);
    const a = ids(stored, 'a');
    const [x, y] = Object.values(a.backends).map((v) => v.id);
    // Hand 40 of x's slots to y (weights 1:3 of 1031 slots: x holds 257 or 258), and one to a stranger.
    let moved = 0;
    for (let s = 0; s < RING_SIZE && moved < 40; s++) {
      const k = a.slot * RING_SIZE + s;
      if (dp2.model.maps.ruleRing.get(k) === x) {
        dp2.model.maps.ruleRing.put(k, y);
        moved++;
      }
    }
    const stranger = a.slot * RING_SIZE + 1030;
    dp2.model.maps.ruleRing.put(stranger, 4242);
    const tampered = dp2.readRing(a.slot);
    const c2 = new Controller(dp2, { mode: 'native', fixVethPeers: true });
    await c2.restore(stored);
    const ring = dp2.readRing(a.slot);
    const xs = ring.filter((v) => v === x).length;
    assert.ok(xs === 257 || xs === 258, `x holds ${xs}`);
    assert.equal(ring.filter((v) => v === y).length, RING_SIZE - xs, 'y holds the rest, the stranger none');
    const changed = ring.filter((v, s) => v !== tampered[s]).length;
    const xBefore = tampered.filter((v) => v === x).length;
    assert.equal(changed, xs - xBefore, "only the slots x needed back moved (the stranger's among them)");
    assert.deepEqual(dp2.snapshot().rule_cfg, intact.rule_cfg);
    assert.deepEqual(dp2.snapshot().backends, intact.backends);
  });
  it('backend MACs changed by hand while the daemon was stopped are rewritten, each one', async () => {
    const { dp, stored } = await installed();
    const intact = ModelDataplane.adopt(dp).snapshot();
    const dp2 = ModelDataplane.adopt(dp);
    const m = dp2.model.maps;
    // Every rule's first backend has the same MAC text (02:00:00:00:01:01): a start parses it once and
    // compares each entry with it; two of the three entries now hold other destination MACs.
    const first = (name: string) => Object.values(ids(stored, name).backends)[0].id;
    for (const [name, last] of [
      ['a', 0x99],
      ['c', 0x01 ^ 0x80],
    ] as const) {
      const id = first(name);
      m.backends.put(id, { ...m.backends.get(id)!, dmac: Uint8Array.of(2, 0, 0, 0, 1, last) });
    }
    const writes = dp2.faults.writes;
    const c2 = new Controller(dp2, { mode: 'native', fixVethPeers: true });
    await c2.restore(stored);
    assert.deepEqual(dp2.snapshot(), intact, 'every map as an intact restart leaves it');
    assert.equal(dp2.faults.writes - writes, 2, 'the two entries, nothing else');
    assert.deepEqual(
      c2.listRules().map((r) => r.status.state),
      ['active', 'active', 'active'],
    );
  });

  it('a veth-peer check that answers late at restore keeps its backend out of the table: the rule is not ACTIVE and says why', async () => {
    // docs/architecture.md, promise 5: a start keeps what can forward; a backend whose egress fails its check is kept out
    // of the table with the reason (it used to fail the whole rule). The comparison must see that: the
    // backend's entry ends cleared, never rewritten as receiving.
    const { dp, stored } = await installed();
    const dp2 = ModelDataplane.adopt(dp);
    const m = dp2.model.maps;
    // A tampered entry that adoption would rewrite as receiving if it compared before the checks answered.
    const bId = Object.values(ids(stored, 'b').backends)[0].id;
    m.backends.put(bId, { ...m.backends.get(bId)!, addr: Uint8Array.of(203, 0, 113, 9) });
    let checks = 0;
    // The checks answer late (as ip and ethtool do).
    dp2.redirectTarget = async () => {
      checks++;
      await new Promise((r) => setTimeout(r, 30));
      return { ok: false, detail: 'its peer has no NAPI (test)' };
    };
    const c2 = new Controller(dp2, { mode: 'native', fixVethPeers: true });
    await c2.restore(stored);
    assert.ok(checks > 0, 'the peers were checked');
    assert.equal(m.backends.get(bId)!.ifindex, 0, 'the backend that cannot receive is cleared, not rewritten');
    for (const r of c2.listRules()) {
      assert.notEqual(r.status.state, 'active', r.name);
      assert.match(JSON.stringify(r.status), /no NAPI \(test\)/);
    }
  });
  it('a backend the last run took out for a contradicted static MAC stays out: a restart writes nothing', async () => {
    // Thirty-sixth review: the start judged static MACs only after adopting the rules, so it wrote the backend back
    // ("kernel entries differed ... rewritten") and the first pass took it out again. Now judged before any write.
    const { dp, c } = await installed();
    dp.vethPeers.set('b1', { name: 'b1p', mac: '02:00:00:00:09:99', takesOthers: false }); // the host contradicts it
    await c.resync();
    for (const r of c.listRules()) assert.equal(r.status.backends[1].receiving, false, `${r.name}: b1 out`);
    const stored = c.storedState(); // the pass re-applied the rules (new slots)
    const before = ModelDataplane.adopt(dp).snapshot();
    const dp2 = ModelDataplane.adopt(dp);
    const writes = dp2.faults.writes;
    const c2 = new Controller(dp2, { mode: 'native', fixVethPeers: true });
    await c2.restore(stored);
    assert.equal(dp2.faults.writes - writes, 0, 'no map write: the backend is not written back');
    assert.deepEqual(dp2.snapshot(), before);
    for (const r of c2.listRules()) {
      assert.equal(r.status.backends[1].receiving, false, r.name);
      assert.match(
        r.status.backends[1].message,
        /^static MAC contradicted: the veth peer b1p of b1 has MAC 02:00:00:00:09:99/,
      );
    }
  });
});

describe('restore: slots no stored rule holds', () => {
  it('a crash between staging and the switch: the start clears the staged rules’ slots and counts them', async () => {
    const { dp, c, stored } = await installed();
    // The daemon dies at the commit point of a many-rule change adding d and e: their slots, tables and
    // backends are written, their match entries staged in the inactive generation, rule_gen not switched.
    dp.commitMatches = () => {
      dp.faults.crashed = true;
      throw new Error('killed at the switch');
    };
    await assert.rejects(
      c.applyRules(
        [
          ...stored.rules.map((r) =>
            rule(r.name, 5000 + 'abc'.indexOf(r.name), {
              sourcePrefixes: r.sourcePrefixes,
              ingressInterfaces: r.ingressInterfaces,
              udpChecksum: r.udpChecksum,
            }),
          ),
          rule('d', 5003),
          rule('e', 5004),
        ],
        false,
      ),
    );
    const storedSlots = new Set(stored.rules.map((r) => r.kernel!.slot));
    const written = (m: ModelDataplane) =>
      [...m.model.maps.ruleCfg.entries()]
        .filter(([s, v]) => !storedSlots.has(s as number) && (v.flags || v.statsId))
        .map(([s]) => s);
    const dp2 = ModelDataplane.adopt(dp);
    assert.equal(written(dp2).length, 2, 'premise: the staged rules d and e hold two slots');
    const lines: LogLine[] = [];
    const c2 = new Controller(dp2, { mode: 'native', fixVethPeers: true, log: captureLog(lines) });
    await c2.restore(stored);
    assert.deepEqual(written(dp2), [], 'the staged slots are cleared');
    for (const s of storedSlots) assert.ok(dp2.model.maps.ruleCfg.get(s)!.flags, `stored slot ${s} kept`);
    const done = lines.find((l) => l.msg.startsWith('restored: '));
    assert.equal(done?.fields.orphans, 2, 'the start says how many');
    assert.equal(done?.fields.unheldSlots, 2);
    assert.equal(lines.filter((l) => l.msg.startsWith('restore cleared rule slot ')).length, 2, 'each named');
    assert.deepEqual(
      c2.listRules().map((r) => [r.name, r.status.state]),
      c
        .listRules()
        .filter((r) => 'abc'.includes(r.name))
        .map((r) => [r.name, r.status.state]),
    );
  });

  it('30 slots left by a crash: the first 20 named at error level, the rest in one line with the exact count', async () => {
    // Before: one error line per slot (3 000 after a kill in the middle of a 3 000-rule change: more than the default
    // 1 MiB log buffer, lines dropped). Now 20 + 1, the other 10 at debug level.
    const dp = new ModelDataplane({ ...MODEL_CAPACITY, ruleSlots: 129, statsIds: 129, matches: 256, backends: 257 });
    confirmPeers(dp);
    const c = new Controller(dp, { mode: 'native', fixVethPeers: true });
    const old = [rule('a', 5000), rule('b', 5001)];
    await c.applyRules(old, false);
    const stored = c.storedState();
    dp.commitMatches = () => {
      dp.faults.crashed = true;
      throw new Error('killed at the switch');
    };
    const added = Array.from({ length: 30 }, (_, i) => rule(`n${i}`, 6000 + i));
    await assert.rejects(c.applyRules([...old, ...added], false));
    const dp2 = ModelDataplane.adopt(dp);
    const lines: LogLine[] = [];
    const c2 = new Controller(dp2, { mode: 'native', fixVethPeers: true, log: captureLog(lines) });
    await c2.restore(stored);
    const named = lines.filter((l) => l.msg.startsWith('restore cleared rule slot '));
    assert.equal(named.length, 30, 'each slot said once');
    assert.deepEqual(
      named.map((l) => l.level),
      [...Array<string>(20).fill('error'), ...Array<string>(10).fill('debug')],
      'the first 20 at error level, the rest at debug level',
    );
    const summary = lines.filter((l) => l.msg.startsWith('restore cleared 10 more rule slots (30 in all; 20 named'));
    assert.equal(summary.length, 1, 'one summary line');
    assert.equal(summary[0].level, 'error');
    assert.equal(summary[0].fields.count, 10);
    assert.equal(summary[0].fields.backendEntriesEmptied, 60, 'two backend entries per slot emptied');
    const ranged = String(summary[0].fields.slots)
      .split(', ')
      .flatMap((r) => {
        const [a, b = a] = r.split('-').map(Number);
        return Array.from({ length: b - a + 1 }, (_, i) => a + i);
      });
    assert.deepEqual(
      ranged,
      named
        .slice(20)
        .map((l) => l.fields.slot as number)
        .sort((x, y) => x - y),
    );
    assert.equal(lines.filter((l) => l.level === 'error').length, 21, 'error lines: 20 + 1 (was 30)');
    const done = lines.find((l) => l.msg.startsWith('restored: '));
    assert.equal(done?.fields.unheldSlots, 30, 'the total stays exact');
  });

  it("another tool's bytes in a free slot (a table of NO_BACKEND ids) and in free backend entries: cleared and said at start", async () => {
    const { dp, stored } = await installed();
    const m = dp.model.maps;
    const held = new Set(stored.rules.map((r) => r.kernel!.slot));
    const heldIds = new Set(stored.rules.flatMap((r) => Object.values(r.kernel!.backends).map((b) => b.id)));
    const slot = [...Array(dp.capacity.ruleSlots).keys()].find((s) => s > 0 && !held.has(s))!;
    // A table of NO_BACKEND ids and a zero rule entry (before: not taken for written, left).
    for (let i = 0; i < RING_SIZE; i++) m.ruleRing.put(slot * RING_SIZE + i, 0xffffffff);
    const free = [...Array(dp.capacity.backends).keys()].filter((id) => id > 0 && !heldIds.has(id)).slice(-3);
    const entry = {
      dmac: Uint8Array.from([2, 0, 0, 0, 0, 0x99]),
      smac: Uint8Array.from([2, 0, 0, 0, 0, 0x98]),
      ifindex: 7,
      statsId: 5,
      family: 2,
      addr: Uint8Array.from([10, 9, 9, 9]),
    };
    for (const id of free) m.backends.put(id, entry);
    const dp2 = ModelDataplane.adopt(dp);
    const lines: LogLine[] = [];
    const c2 = new Controller(dp2, { mode: 'native', fixVethPeers: true, log: captureLog(lines) });
    await c2.restore(stored);
    const m2 = dp2.model.maps;
    assert.equal(m2.ruleRing.get(slot * RING_SIZE), 0, 'the free slot’s table zeroed');
    for (const id of free) assert.equal(m2.backends.get(id)!.ifindex, 0, `backend entry ${id} emptied`);
    for (const r of stored.rules)
      for (const b of Object.values(r.kernel!.backends)) assert.ok(m2.backends.get(b.id)!.ifindex, `${r.name}: kept`);
    assert.ok(lines.some((l) => l.level === 'error' && l.msg.startsWith(`restore cleared rule slot ${slot} `)));
    for (const id of free)
      assert.ok(
        lines.some(
          (l) =>
            l.level === 'error' &&
            l.msg.startsWith(
              `restore emptied backend entry ${id} (map backends: kernel ifindex 7, MAC 02:00:00:00:00:99`,
            ),
        ),
        `backend entry ${id} named`,
      );
    const done = lines.find((l) => l.msg.startsWith('restored: '));
    assert.equal(done?.fields.freeBackends, 3);
    assert.equal(done?.fields.unheldSlots, 1);
  });
});
