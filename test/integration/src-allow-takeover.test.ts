/**
 * A rule that takes a slot owns exactly its source prefixes in src_allow there (the last helper's finding on the slot
 * work): another tool's src_allow entry for a free slot (`bpftool map update` of the LPM trie, keyed to that slot)
 * stayed when a rule with source prefixes took the slot, and widened its filter until the next sweep (start, full
 * comparison). Here bpftool writes, for the slot the next rule takes, a prefix holding vm's address; the rule allows
 * another prefix only. Before: vm's datagrams were delivered to the backend. After: the write that takes the slot
 * deletes the foreign entry (said), and vm's datagrams are filtered (counted as such on the rule, not delivered).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { openPinnedMap } from '../../src/server/dataplane/bpf-map.js';
import { matchKey, srcKey, u32, u8 } from '../../src/server/dataplane/codec.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import type { Clients, DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import type { Host } from '../helpers/topology.js';

const PORT = 7301;
const args = (b: Buffer) => [...b].map(String);

describe('a rule taking a slot owns exactly its source prefixes', kernelOnly(), () => {
  const lab = new Lab();
  let d: DaemonProcess;
  let c: Clients;
  let b1: Host;

  before(async () => {
    ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    ({ d, c } = await lab.start(['--log-level', 'info']));
  });
  after(() => lab.destroy());

  it("another tool's src_allow entry for the free slot a rule takes is deleted in the write; vm's datagrams are filtered", async (t) => {
    const pins = XdpDatapath.mapPinDir(d.pinRoot);
    const slotOf = (port: number) => {
      const m = openPinnedMap(`${pins}/rule_match`, matchKey, u32);
      try {
        return m.entriesBatch().find(([k]) => k.dport === port)?.[1];
      } finally {
        m.close();
      }
    };
    // The slot the next rule takes: a rule's, released (the pool hands out the most recently released first).
    await c.rules.applyRules({ rules: [lab.apiRule('probe', PORT, [backendOf(b1)])], validateOnly: false });
    await lab.untilActive('probe');
    const slot = slotOf(PORT)!;
    assert.ok(slot !== undefined, 'premise: the probe rule has a slot');
    await c.rules.applyRules({ rules: [], validateOnly: false });

    // Another tool: vm's prefix allowed in that free slot.
    const key = srcKey.encode({ slot, length: 24, addr: new Uint8Array([198, 18, 1, 0]) });
    sh('bpftool', ['map', 'update', 'pinned', `${pins}/src_allow`, 'key', ...args(key), 'value', '1']);

    const at = d.output.length;
    const rule = { ...lab.apiRule('filtered', PORT, [backendOf(b1)]) };
    rule.match = { ...rule.match!, sourcePrefixes: ['198.18.9.0/24'] };
    await c.rules.applyRules({ rules: [rule], validateOnly: false });
    await lab.untilActive('filtered');
    assert.equal(slotOf(PORT), slot, 'premise: the rule took the slot bpftool wrote for');

    const { got } = await lab.send(PORT, [b1], 50, 10);
    const { counters } = await c.counters.getCounters({ filter: { rules: ['filtered'] } });
    const r = counters!.rules.find((x) => x.rule === 'filtered')!;
    t.diagnostic(
      `vm's datagrams: b1 received ${got[0]} of 50; rule filtered ${r.filteredPackets}, redirected ${r.redirectedPackets}`,
    );
    assert.deepEqual(got, [0], "vm's source is not the rule's: nothing delivered");
    assert.ok(r.filteredPackets >= 50n, `counted as filtered on the rule (${r.filteredPackets})`);
    assert.equal(r.redirectedPackets, 0n);
    const src = openPinnedMap(`${pins}/src_allow`, srcKey, u8);
    try {
      const keys = [...src.keys()].filter((k) => k.slot === slot).map((k) => `${[...k.addr].join('.')}/${k.length}`);
      assert.deepEqual(keys, ['198.18.9.0/24'], "the slot holds exactly the rule's prefixes");
    } finally {
      src.close();
    }
    const said = d.output
      .slice(at)
      .split('\n')
      .filter((l) => l.includes(`takes rule slot ${slot}: map src_allow held 1 source prefixes`));
    assert.equal(said.length, 1, 'the deletion is said');
    assert.match(said[0], /198\.18\.1\.0\/24/);
  });
});
