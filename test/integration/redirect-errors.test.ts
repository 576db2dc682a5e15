/**
 * Redirects the kernel drops after XDP_REDIRECT are counted where they
 * belong, not as "redirected": a rule's single backend is made unable to
 * take frames in one way per case, datagrams are sent, and every one must
 * show up in the rule's and the backend's redirect_errors (and the global
 * "xmit" error), with redirected unchanged. Native mode sees every case;
 * generic mode transmits skbs itself, so only what the kernel refuses before
 * transmitting (down, MTU) is reported there (drops inside a driver's
 * transmit have no tracepoint in generic mode, and a bridge transmits fine).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { GlobalStat } from '../../src/server/dataplane/codec.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { ensureVethPeerNapi } from '../../src/server/dataplane/netdev.js';
import { backendCounters, globalCounters, removeMatches, ruleCounters } from '../../src/server/dataplane/tables.js';
import type { XdpMode } from '../../src/server/dataplane/xdp.js';
import { kernelOnly, runId, sh, shQuiet } from '../helpers/env.js';
import { installRule, openDatapath } from '../helpers/fixture.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';

interface Case {
  name: string;
  modes: XdpMode[];
  /** Break the backend after the rule is written; returns the datagram size to send. */
  breakIt: (topo: Topology, h: Host) => number;
}

const CASES: Case[] = [
  {
    name: 'egress down',
    modes: ['native', 'generic'],
    breakIt: (_t, h) => (sh('ip', ['link', 'set', h.hostIf, 'down']), 100),
  },
  {
    name: 'egress MTU smaller than the frame',
    modes: ['native', 'generic'],
    breakIt: (_t, h) => (sh('ip', ['link', 'set', h.hostIf, 'mtu', '600']), 1000),
  },
  {
    name: 'egress without carrier (its veth peer down)',
    modes: ['native'],
    breakIt: (t, h) => (t.exec(h.role, 'ip', ['link', 'set', 'eth0', 'down']), 100),
  },
  {
    name: 'veth peer that lost NAPI after the rule was written',
    modes: ['native'],
    breakIt: (t, h) => (t.exec(h.role, 'ethtool', ['-K', 'eth0', 'gro', 'off']), 100),
  },
];

for (const mode of ['native', 'generic'] as XdpMode[]) {
  describe(`redirect errors are counted (${mode} mode)`, kernelOnly(), () => {
    const id = runId();
    const topo = new Topology(id);
    const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
    const bridge = `x${id}br`;
    let dp: XdpDatapath;
    let vm: Host;
    let slot = 0;

    before(() => {
      vm = topo.addHost('vm', '198.18.1.1/24');
      topo.routeToXdp('vm');
      dp = openDatapath(pinRoot);
      assert.equal(dp.traceWarning, undefined, 'tracepoint programs attached');
      assert.equal(dp.attach(vm.hostIf, mode).mode, mode);
    });
    after(() => {
      dp?.close();
      topo.destroy();
      shQuiet('ip', ['link', 'del', bridge]);
      XdpDatapath.unpinAll(pinRoot);
    });

    const run = async (backendIf: string, backendMac: string, size: number) => {
      slot++;
      const port = 8000 + slot;
      const keys = installRule(dp, {
        slot,
        statsId: slot,
        ingress: [vm.hostIf],
        port,
        backends: [{ id: slot, ip: '198.18.2.1', mac: backendMac, iface: backendIf }],
      });
      return { keys, port, size };
    };

    const check = async (keys: ReturnType<typeof installRule>, port: number, size: number) => {
      try {
        const before = globalCounters(dp.maps)[GlobalStat.ERR_XMIT];
        const unattributed = globalCounters(dp.maps)[GlobalStat.ERR_XMIT_UNATTRIBUTED];
        const { sent } = await sendUdp(vm.netns, NOWHERE, port, 50, { size }).done;
        await new Promise((r) => setTimeout(r, 200));
        const rs = ruleCounters(dp.maps, slot);
        const bs = backendCounters(dp.maps, slot);
        assert.equal(rs.matched, BigInt(sent), 'every datagram matched');
        assert.equal(rs.redirected, 0n, 'none counted as redirected');
        assert.equal(rs.redirectErrors, BigInt(sent), 'every one a redirect error of the rule');
        assert.equal(bs.packets, 0n);
        assert.equal(bs.redirectErrors, BigInt(sent), 'and of the backend');
        assert.equal(globalCounters(dp.maps)[GlobalStat.ERR_XMIT] - before, BigInt(sent), 'global xmit errors');
        assert.equal(
          globalCounters(dp.maps)[GlobalStat.ERR_XMIT_UNATTRIBUTED] - unattributed,
          0n,
          'each one attributed',
        );
      } finally {
        removeMatches(dp.maps, keys);
      }
    };

    for (const c of CASES.filter((x) => x.modes.includes(mode))) {
      it(c.name, async () => {
        const h = topo.addHost(`c${slot + 1}`, '198.18.2.1/24');
        if (mode === 'native') assert.ok((await ensureVethPeerNapi(h.hostIf, true)).ok);
        const { keys, port } = await run(h.hostIf, h.mac, 0);
        const size = c.breakIt(topo, h);
        await check(keys, port, size);
      });
    }

    if (mode === 'native') {
      it('egress is a bridge (no native XDP transmit)', async () => {
        sh('ip', ['link', 'add', bridge, 'type', 'bridge']);
        sh('ip', ['link', 'set', bridge, 'up']);
        const { keys, port, size } = await run(bridge, '02:00:00:00:00:09', 100);
        await check(keys, port, size);
      });
    }
  });
}
