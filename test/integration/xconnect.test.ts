/**
 * The xdp-xconnect demo with real packets: three hosts (namespaces) hang off
 * veths whose host ends run the XDP program. Host 1 reaches host 2 only once
 * 1-2 are connected; swapping the link to host 3 by a map update moves the
 * pings there. In native and in generic mode.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { ensureVethPeerNapi, ifindexOf } from '../../src/server/dataplane/netdev.js';
import { connectDirection, disconnectDirection, linkCounters } from '../../src/server/dataplane/tables.js';
import type { XdpMode } from '../../src/server/dataplane/xdp.js';
import { kernelOnly, runId } from '../helpers/env.js';
import { openDatapath } from '../helpers/fixture.js';
import { Topology } from '../helpers/topology.js';

for (const mode of ['native', 'generic'] as XdpMode[]) {
  describe(`cross-connect demo (${mode} mode)`, kernelOnly(), () => {
    const id = runId();
    const topo = new Topology(id);
    const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
    let dp: XdpDatapath | undefined;
    after(() => {
      dp?.close();
      topo.destroy(); // deleting the veths detaches the program
      XdpDatapath.unpinAll(pinRoot);
    });

    it('connects 1-2, swaps to 1-3, and counts', async () => {
      const h1 = topo.addHost('h1', '198.18.0.1/24');
      const h2 = topo.addHost('h2', '198.18.0.2/24');
      const h3 = topo.addHost('h3', '198.18.0.3/24');
      dp = openDatapath(pinRoot);
      for (const h of [h1, h2, h3]) {
        const r = dp.attach(h.hostIf, mode);
        assert.equal(r.mode, mode, `effective mode on ${h.hostIf}`);
        if (mode === 'native') {
          // Trap 3: native redirects into a veth need NAPI on its peer.
          const before = await ensureVethPeerNapi(h.hostIf, false);
          assert.equal(before.ok, false, 'a fresh veth peer has no NAPI: detected');
          assert.match(
            before.detail!,
            /would be dropped: its peer eth0 in netns .* has neither an XDP program nor GRO/,
          );
          const fixed = await ensureVethPeerNapi(h.hostIf, true);
          assert.deepEqual([fixed.ok, fixed.fixed], [true, true]);
        }
      }
      const [i1, i2, i3] = [h1, h2, h3].map((h) => ifindexOf(h.hostIf));

      assert.equal(topo.ping('h1', h2.ip!, 1), false, 'not connected yet: no ping');

      connectDirection(dp.maps, i1, i2);
      connectDirection(dp.maps, i2, i1);
      assert.equal(topo.ping('h1', h2.ip!), true, 'h1 -> h2 once connected');
      const c12 = linkCounters(dp.maps, i1)!;
      const c21 = linkCounters(dp.maps, i2)!;
      assert.ok(c12.packets >= 2n && c21.packets >= 2n, `counters rose: ${c12.packets}/${c21.packets}`);

      // Swap the link to host 3: one map update per direction.
      connectDirection(dp.maps, i1, i3);
      disconnectDirection(dp.maps, i2);
      connectDirection(dp.maps, i3, i1);
      assert.equal(topo.ping('h1', h3.ip!), true, 'h1 -> h3 after the swap');
      assert.equal(topo.ping('h1', h2.ip!, 1), false, 'h1 -> h2 no longer');
      assert.ok(linkCounters(dp.maps, i3)!.packets >= 2n, 'h3 -> h1 counted');
      assert.ok(linkCounters(dp.maps, i1)!.packets > c12.packets, 'h1 direction kept counting across the swap');
    });
  });
}
