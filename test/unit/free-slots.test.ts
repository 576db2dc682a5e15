/**
 * Another tool's writes into a rule slot or backend id no rule holds (twenty-third review, LOW-5), as the slot
 * watcher reports them (Dataplane.watchSlots, modelled here): the pass reads the free ones among what moved and
 * zeroes what holds any byte, one repair line each; held slots are compared as before, never zeroed; a report of
 * our own zeroing (read back as zero) says nothing. test/integration/slot-watch-free proves it with bpftool.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Controller } from '../../src/server/core/controller.js';
import { RING_SIZE } from '../../src/server/dataplane/codec.js';
import { captureLog, type LogLine } from '../helpers/log-capture.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';
import { confirmPeers, twoBackends, udpSpec } from '../helpers/rule-spec.js';

describe('free slots and backend ids written by another tool', () => {
  it('zeroed at the next pass and said once each; the rules’ own slots untouched', async () => {
    const dp = new ModelDataplane();
    confirmPeers(dp);
    const lines: LogLine[] = [];
    const c = new Controller(dp, { mode: 'native', fixVethPeers: true, log: captureLog(lines) });
    await c.applyRules([udpSpec('a', 5000, twoBackends(5000))], false);
    const k = c.storedState().rules[0].kernel!;
    const held = new Set(Object.values(k.backends).map((b) => b.id));
    const m = dp.model.maps;
    let report = { slots: new Set<number>(), backends: new Set<number>() };
    dp.watchSlots = () => {
      const r = { ...report, coverMs: 0, reads: 0, readMs: 0 };
      report = { slots: new Set(), backends: new Set() };
      return r;
    };
    const slot = 20;
    const id = 100;
    assert.ok(slot !== k.slot && !held.has(id), 'premise: free');
    m.ruleCfg.put(slot, { flags: 0x9, statsId: 7 });
    m.ruleRing.put(slot * RING_SIZE + 3, id);
    m.backends.put(id, {
      dmac: Uint8Array.from([2, 0, 0, 0, 0, 0x99]),
      smac: Uint8Array.from([2, 0, 0, 0, 0, 0x98]),
      ifindex: 7,
      statsId: 5,
      family: 2,
      addr: Uint8Array.from([10, 9, 9, 9]),
    });
    const before = dp.snapshot();
    report = { slots: new Set([slot, k.slot]), backends: new Set([id, ...held]) };
    await c.resync();
    assert.deepEqual(m.ruleCfg.get(slot), { flags: 0, statsId: 0 }, 'rule entry zeroed');
    assert.equal(m.ruleRing.get(slot * RING_SIZE + 3), 0, 'table entry zeroed');
    assert.equal(m.backends.get(id)!.ifindex, 0, 'backend entry zeroed');
    assert.ok(m.ruleCfg.get(k.slot)!.flags & 1, "a's rule entry kept");
    for (const b of held) assert.ok(m.backends.get(b)!.ifindex, `a's backend entry ${b} kept`);
    assert.notDeepEqual(dp.snapshot(), before);
    const said = () => lines.flatMap((l) => (l.fields.repaired as string[] | undefined) ?? []);
    assert.deepEqual(said(), [
      `rule slot ${slot} of no rule (maps rule_cfg, rule_ring): kernel flags word 0x9, stats id 7, 1 of ${RING_SIZE} ` +
        `table entries set (ids ${id}), desired zero (no rule holds it: another tool wrote it (writer not known)): zeroed`,
      `backend entry ${id} of no rule (map backends): kernel ifindex 7, MAC 02:00:00:00:00:99 from ` +
        '02:00:00:00:00:98, address 10.9.9.9 (family 2), stats id 5, desired empty (no rule holds it: another tool ' +
        'wrote it (writer not known)): zeroed',
    ]);
    // Our own zeroing, reported by the watcher at the next pass: read back as zero, nothing said.
    report = { slots: new Set([slot]), backends: new Set([id]) };
    await c.resync();
    assert.equal(said().length, 2, 'said once');
  });
});
