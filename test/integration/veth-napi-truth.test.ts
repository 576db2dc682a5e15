/**
 * What a rule says about a veth backend agrees with what is delivered, through every way its peer's GRO
 * can be set (measured on 6.18; the daemon runs with --no-fix-veth-peers, so it only observes): GRO
 * switched on while the peer is up gives it NAPI (delivered); switched off while the peer is down,
 * the kernel keeps announcing ndo-xmit with no NAPI (0 delivered); switched on while the peer is down,
 * ethtool shows "on" with no NAPI (0 delivered) until GRO is switched off and on while up. Each step:
 * the rule's state, then real datagrams.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { ifindexOf } from '../../src/server/dataplane/netdev.js';
import { XDP_ACT, xdpFeatures } from '../../src/server/dataplane/xdp-features.js';
import { Protocol, RuleState, UdpChecksumMode } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sleep, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

describe('a veth backend: the status follows delivery, however its peer got its GRO setting', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess;
  let c: Clients;
  let vm: Host, b1: Host;
  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    topo.routeToXdp('vm');
    d = await DaemonProcess.start(id, ['--xdp-mode', 'native', '--no-fix-veth-peers']);
    c = d.clients();
  });
  after(async () => {
    await d?.destroy();
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  it('ACTIVE exactly when datagrams arrive', async () => {
    const ndoXmit = () => ((xdpFeatures(ifindexOf(b1.hostIf)) ?? 0n) & XDP_ACT['ndo-xmit']) !== 0n;
    const peer = (cmd: string) => topo.exec('b1', 'sh', ['-c', cmd]);
    const state = async () => (await c.rules.getRule({ name: 'web' })).rule!.status!;
    const deliver = async () => {
      const l = await UdpListener.start(b1.netns, b1.ip!, 7999);
      const { sent } = await sendUdp(vm.netns, '198.18.9.9', 7999, 100, { flows: 10 }).done;
      await sleep(150);
      return { sent, got: (await l.stop()).unique };
    };
    peer('ethtool -K eth0 gro on');
    await c.rules.createRule({
      rule: {
        name: 'web',
        match: { protocol: Protocol.PROTOCOL_UDP, port: 7999, destination: '', sourcePrefixes: [] },
        ingressInterfaces: [vm.hostIf],
        backends: [{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf, weight: 1 }],
        udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
        labels: {},
        generation: 0n,
      },
    });
    const steps: [string, string, boolean, RegExp?][] = [
      ['GRO on while up', 'true', true],
      [
        'GRO off while down (ndo-xmit still announced)',
        'ip link set eth0 down && ethtool -K eth0 gro off && ip link set eth0 up',
        false,
        /has neither an XDP program nor GRO/,
      ],
      ['GRO on and off again while up', 'ethtool -K eth0 gro on && ethtool -K eth0 gro off', false],
      [
        'GRO on while down (ethtool says on)',
        'ip link set eth0 down && ethtool -K eth0 gro on && ip link set eth0 up',
        false,
        /has GRO but no NAPI .*switch it off and on again/,
      ],
      ['GRO off and on while up', 'ethtool -K eth0 gro off && ethtool -K eth0 gro on', true],
    ];
    const premises: boolean[] = [];
    for (const [what, cmd, delivers, why] of steps) {
      peer(cmd);
      premises.push(ndoXmit());
      const want = delivers ? RuleState.RULE_STATE_ACTIVE : RuleState.RULE_STATE_INACTIVE;
      await until(
        async () => `${what}: rule ${want}; last ${JSON.stringify((await state()).backendStatus)}`,
        async () => {
          const st = await state();
          return st.state === want && (!why || why.test(st.backendStatus[0].message));
        },
        5000,
      );
      const r = await deliver();
      assert.equal(r.got, delivers ? r.sent : 0, `${what}: ${r.got} of ${r.sent} delivered`);
    }
    // What the kernel announced at each step: the two stale cases are what this test is about.
    assert.deepEqual(premises, [true, true, false, false, true], 'ndo-xmit per step (kernel behaviour)');
  });
});
