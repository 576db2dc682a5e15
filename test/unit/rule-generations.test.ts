/**
 * Rule generations (bpf/xdpctl.h XDPCTL_MATCH_GEN, tables.ts stageGeneration/switchGeneration/dropGeneration):
 * a many-rule change writes a copy of the active match entries as the other generation, changes it there, and
 * one rule_gen update switches every packet to it. Until the switch the active generation is untouched; after
 * it the old one is gone; a start (rebuildPortUse) deletes whatever generation is not active. And through the
 * controller: an ApplyRules of several rules switches the generation, a CreateRule of one entry does not.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  AF_INET,
  IPPROTO_UDP,
  PORTS_PER_GEN,
  type GenMatchKey,
  type MatchKey,
} from '../../src/server/dataplane/codec.js';
import {
  activeGeneration,
  activeMatches,
  dropGeneration,
  publishMatches,
  rebuildPortUse,
  removeMatches,
  stageGeneration,
  switchGeneration,
} from '../../src/server/dataplane/tables.js';
import { Controller } from '../../src/server/core/controller.js';
import type { RuleSpec } from '../../src/server/core/model.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';
import { udpSpec } from '../helpers/rule-spec.js';

/** A rule on `port` with one backend, 172.16.0.2 on `backend`. */
const spec = (name: string, port: number, backend = 'b0'): RuleSpec =>
  udpSpec(name, port, [{ ip: '172.16.0.2', mac: '02:42:ac:10:00:02', interface: backend, weight: 1 }], {
    udpChecksum: 'zero',
  });

const key = (ifindex: number, port: number): MatchKey => ({
  ifindex,
  dport: port,
  proto: IPPROTO_UDP,
  family: AF_INET,
  daddr: new Uint8Array(4),
});

const NONE = { any: 0, dst: 0 };
const sorted = (xs: [MatchKey, number][]) => xs.map(([k, s]) => `${k.ifindex}:${k.dport}->${s}`).sort();
const gens = (dp: ModelDataplane) => [...dp.model.maps.ruleMatch.entries()].map(([k]) => (k as GenMatchKey).gen ?? 0);

describe('rule generations', () => {
  it('staged writes are not looked up until the one switch; the old generation is deleted after it', () => {
    const dp = new ModelDataplane();
    const m = dp.model.maps;
    publishMatches(m, [key(3, 7000)], 1);
    publishMatches(m, [key(3, 7001)], 2);
    const before = sorted(activeMatches(m, 0));
    const t = stageGeneration(m, 0);
    publishMatches(m, [key(3, 7000)], 5, t.next); // changed
    removeMatches(m, [key(3, 7001)], t.next); // deleted
    publishMatches(m, [key(3, 7002)], 6, t.next); // new
    t.ports.add(7002);
    assert.equal(activeGeneration(m), 0);
    assert.deepEqual(sorted(activeMatches(m, 0)), before, 'what packets look up is unchanged before the switch');
    assert.deepEqual(m.rulePorts.get(7002) ?? NONE, NONE, 'nor the active port index');
    switchGeneration(m, t);
    assert.equal(activeGeneration(m), 1, 'one update switched');
    assert.deepEqual(sorted(activeMatches(m, 1)), ['3:7000->5', '3:7002->6']);
    dropGeneration(m, t.active, t.before, t.ports);
    assert.deepEqual(gens(dp), [1, 1], 'the old generation deleted');
    for (const port of [7000, 7001, 7002])
      assert.deepEqual(m.rulePorts.get(port) ?? NONE, NONE, `old port ${port} zeroed`);
    assert.deepEqual(m.rulePorts.get(PORTS_PER_GEN + 7000), { any: 1, dst: 0, xorIfindex: 3, xorSlot: 5 });
    assert.deepEqual(m.rulePorts.get(PORTS_PER_GEN + 7001) ?? NONE, NONE);
  });

  it('a crash before the switch: the start deletes the staged generation and keeps the active one whole', () => {
    const dp = new ModelDataplane();
    const m = dp.model.maps;
    publishMatches(m, [key(3, 7000)], 1);
    const t = stageGeneration(m, 0);
    publishMatches(m, [key(3, 7000)], 5, t.next);
    publishMatches(m, [key(4, 7003)], 6, t.next);
    // (the daemon dies here: no switch, no cleanup)
    assert.equal(rebuildPortUse(m), 2, 'both staged entries deleted');
    assert.deepEqual(sorted(activeMatches(m, 0)), ['3:7000->1']);
    assert.deepEqual(gens(dp), [0]);
    assert.deepEqual(m.rulePorts.get(PORTS_PER_GEN + 7003) ?? NONE, NONE, 'the staged port index zeroed');
  });

  it('staging trusts nothing in the inactive generation: a foreign port index entry and match entry there are zeroed/deleted, and said', async () => {
    const dp = new ModelDataplane();
    const lines: string[] = [];
    const at = () => (_o: unknown, msg?: string) => void lines.push(String(msg ?? _o));
    const log = { debug: at(), info: at(), warn: at(), error: at(), child: () => log };
    (dp as unknown as { log: unknown }).log = log;
    const c = new Controller(dp, { mode: 'native', fixVethPeers: true });
    const m = dp.model.maps;
    await c.applyRules([spec('one', 7100), spec('two', 7101)], false);
    assert.equal(activeGeneration(m), 1, 'switched: generation 0 emptied by this daemon');
    const slot = activeMatches(m, 1)[0][1];
    // Another tool (bpftool) writes into the inactive generation 0: port 20000 (no rule) as an
    // any-destination entry of one, folded to a live slot, and a match entry for port 20001.
    const foreign = { any: 1, dst: 0, xorIfindex: 2, xorSlot: slot };
    m.rulePorts.put(20000, foreign);
    m.ruleMatch.put({ ...key(2, 20001), gen: 0 }, slot);
    await c.applyRules([spec('one', 7100), spec('two', 7101), spec('three', 7102), spec('four', 7103)], false);
    assert.equal(activeGeneration(m), 0, 'switched to generation 0');
    assert.deepEqual(m.rulePorts.get(20000) ?? NONE, NONE, 'the foreign port index entry did not go live');
    assert.deepEqual(
      activeMatches(m, 0)
        .map(([k]) => k.dport)
        .sort(),
      [7100, 7101, 7102, 7103],
      'the foreign match entry did not go live',
    );
    const said = lines.find((l) => l.includes('rule generation 0 (inactive) held 2 entries'));
    assert.ok(said, `a line says what was found: ${lines.join(' | ')}`);
    assert.match(said, /another tool wrote them/);
    assert.match(
      said,
      /map rule_ports, port 20000, inactive generation 0: index 20000\): kernel \{"any":1,"dst":0,"xorIfindex":2,"xorSlot":\d+\}, zeroed/,
    );
    assert.match(
      said,
      /map rule_match, generation 0: ifindex 2, UDP port 20001, any destination\): kernel rule slot \d+, deleted/,
    );
  });

  it('through the controller: ApplyRules of several rules switches the generation, one CreateRule switches in place', async () => {
    const dp = new ModelDataplane();
    const c = new Controller(dp, { mode: 'native', fixVethPeers: true });
    const m = dp.model.maps;
    await c.createRule(spec('one', 7100));
    assert.equal(activeGeneration(m), 0, 'one entry: in place');
    await c.applyRules([spec('one', 7100, 'b1'), spec('two', 7101), spec('three', 7102)], false);
    assert.equal(activeGeneration(m), 1, 'switched once');
    assert.deepEqual(gens(dp), [1, 1, 1], 'only the active generation remains');
    await c.applyRules([spec('two', 7101)], false);
    assert.equal(activeGeneration(m), 0, 'and back');
    assert.deepEqual(gens(dp), [0]);
    // One rule on two ingresses (two match entries) changed: in place, no staging copy of every entry.
    const created = await c.createRule({ ...spec('multi', 7200), ingressInterfaces: ['in0', 'in1'] });
    assert.equal(activeGeneration(m), 0, "one rule's entries created: in place");
    await c.updateRule({ ...spec('multi', 7200, 'b1'), ingressInterfaces: ['in0', 'in1'] }, created.generation);
    assert.equal(activeGeneration(m), 0, "one rule's entries changed: in place");
    assert.deepEqual(gens(dp), [0, 0, 0], 'two, and multi on in0 and in1: one generation');
  });
});
