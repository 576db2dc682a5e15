/**
 * The port index check (tables.checkPortUse, the reconciler's and a repair's comparison of rule_ports with
 * the match entries) reads the match entries a batch at a time and yields between batches when given a
 * pacer: with 10 000 rules, reading, decoding and counting every entry at once held the event loop ~46 ms
 * of CPU in one turn (an ApplyRules whose unchanged rules were compared). Paced or not, it finds and
 * rewrites the same entries.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { checkPortUse, rebuildPortUse } from '../../src/server/dataplane/tables.js';
import { kernelOnly, runId } from '../helpers/env.js';
import { openDatapath } from '../helpers/fixture.js';

describe('port index check in batches', kernelOnly(), () => {
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${runId()}`;
  let dp: XdpDatapath;
  const N = 3000;

  before(() => {
    dp = openDatapath(pinRoot);
    const entries: [Parameters<typeof dp.maps.ruleMatch.put>[0], number][] = [];
    for (let i = 0; i < N; i++) {
      const daddr = i % 3 === 0 ? new Uint8Array(4) : Uint8Array.of(198, 18, (i >> 8) & 255, i & 255);
      entries.push([{ ifindex: 1 + (i % 7), dport: 1000 + (i % 1500), proto: 17, family: 2, daddr }, 1 + (i % 60)]);
    }
    dp.maps.ruleMatch.putMany(entries);
    rebuildPortUse(dp.maps);
  });
  after(() => {
    dp?.close();
    XdpDatapath.unpinAll(pinRoot);
  });

  it('yields between batches and rewrites exactly what differs, as the unpaced check does', async () => {
    assert.deepEqual(await checkPortUse(dp.maps), [], 'the rebuilt index holds');
    const right = dp.maps.rulePorts.get(1007)!;
    dp.maps.rulePorts.put(1007, { ...right, dst: right.dst + 5 });
    let yields = 0;
    const differed = await checkPortUse(dp.maps, async () => {
      yields++;
      await new Promise((r) => setImmediate(r));
    });
    assert.ok(yields >= Math.ceil(N / 1024), `yielded ${yields} times for ${N} match entries`);
    assert.equal(differed.length, 1);
    assert.match(differed[0].line, /^port index \(map rule_ports, port 1007\): kernel /);
    assert.deepEqual(dp.maps.rulePorts.get(1007), right);
    // The same tamper found by the check at once (no pacer).
    dp.maps.rulePorts.put(1007, { ...right, any: right.any + 1 });
    const once = await checkPortUse(dp.maps);
    assert.equal(once.length, 1);
    assert.deepEqual(dp.maps.rulePorts.get(1007), right);
    assert.deepEqual(await checkPortUse(dp.maps, () => Promise.resolve()), []);
  });
});
