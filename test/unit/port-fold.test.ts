/**
 * rule_ports' any_fold (bpf/xdpctl.h): the count of a port's any-destination
 * match entries with the XOR of their ingress ifindexes and slots, which names
 * the entry itself when there is one, so the datapath needs no rule_match
 * lookup. It must be a function of the entries alone: after any sequence of
 * publishes, moves and removals (and after one that failed and was taken
 * back) it equals a recount from rule_match, as the undo property and a
 * restart require.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import fc from 'fast-check';

import { AF_INET, IPPROTO_UDP, portUse, type MatchKey, type PortUse } from '../../src/server/dataplane/codec.js';
import { publishMatches, rebuildPortUse, removeMatches } from '../../src/server/dataplane/tables.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';

const key = (ifindex: number, port: number, dst: boolean): MatchKey => ({
  ifindex,
  dport: port,
  proto: IPPROTO_UDP,
  family: AF_INET,
  daddr: dst ? Uint8Array.of(192, 0, 2, 1) : new Uint8Array(4),
});

type Op =
  | { kind: 'publish'; ifindex: number; port: number; dst: boolean; slot: number }
  | { kind: 'remove'; ifindex: number; port: number; dst: boolean };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    kind: fc.constant('publish' as const),
    ifindex: fc.integer({ min: 2, max: 5 }),
    port: fc.integer({ min: 7000, max: 7001 }),
    dst: fc.boolean(),
    slot: fc.integer({ min: 1, max: 32 }),
  }),
  fc.record({
    kind: fc.constant('remove' as const),
    ifindex: fc.integer({ min: 2, max: 5 }),
    port: fc.integer({ min: 7000, max: 7001 }),
    dst: fc.boolean(),
  }),
);

const ports = (dp: ModelDataplane) => dp.snapshot().rulePorts;

/** What rule_ports must say of a port, from rule_match. */
function recount(dp: ModelDataplane, port: number): PortUse {
  const r: PortUse = { any: 0, dst: 0 };
  let x = 0;
  let s = 0;
  for (const [k, slot] of dp.model.maps.ruleMatch.entries()) {
    if (k.dport !== port) continue;
    if (k.daddr.some((b) => b !== 0)) {
      r.dst++;
      continue;
    }
    r.any++;
    x = (x ^ k.ifindex) >>> 0;
    s ^= slot;
  }
  if (x) r.xorIfindex = x;
  if (s) r.xorSlot = s;
  return r;
}

describe('rule_ports any_fold', () => {
  it('names the one any-destination entry of a port, in the bytes the datapath reads', () => {
    const dp = new ModelDataplane();
    publishMatches(dp.model.maps, [key(3, 7000, false)], 17);
    const raw = portUse.encode(dp.model.maps.rulePorts.get(7000)!);
    assert.equal(raw.readUInt32LE(0), 1, 'any');
    assert.equal(raw.readBigUInt64LE(8), (1n << 56n) | (17n << 32n) | 3n, 'count 1, slot 17, ifindex 3');
    publishMatches(dp.model.maps, [key(4, 7000, false)], 18);
    assert.equal(portUse.encode(dp.model.maps.rulePorts.get(7000)!).readBigUInt64LE(8) >> 56n, 2n, 'two: no name');
    removeMatches(dp.model.maps, [key(3, 7000, false)]);
    const one = portUse.encode(dp.model.maps.rulePorts.get(7000)!).readBigUInt64LE(8);
    assert.equal(one, (1n << 56n) | (18n << 32n) | 4n, 'back to one: the remaining entry');
    const folded = ports(dp);
    rebuildPortUse(dp.model.maps);
    assert.deepEqual(ports(dp), folded, "a restart's recount gives the same bytes");
  });

  it('equals a recount from rule_match after any sequence of steps, failed ones included', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(opArb, fc.integer({ min: 0, max: 3 })), { maxLength: 40 }), (steps) => {
        const dp = new ModelDataplane();
        const m = dp.model.maps;
        for (const [op, fault] of steps) {
          const before = dp.snapshot();
          dp.faults.failAt = fault ? dp.faults.writes + fault : 0;
          try {
            const k = key(op.ifindex, op.port, op.dst);
            if (op.kind === 'publish') publishMatches(m, [k], op.slot);
            else removeMatches(m, [k]);
          } catch {
            assert.deepEqual(dp.snapshot(), before, 'a failed step changes nothing');
          }
          dp.faults.failAt = 0;
          for (const port of [7000, 7001]) assert.deepEqual(m.rulePorts.get(port), recount(dp, port), `port ${port}`);
        }
      }),
      { numRuns: 300 },
    );
  });
});
