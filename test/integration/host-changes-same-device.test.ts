/**
 * --cleanup-on-exit puts back every device setting the daemon changed (docs/architecture.md, promise 6) on the device it
 * changed it on, whatever that device's owner did to the device's settings since: its MAC address and its
 * name are settings, not its identity (a review found: a backend host changed its MAC, and the daemon left
 * GRO on, logging the device "replaced by another device (same name and ifindex 2, but MAC A then, B
 * now)"). With real namespaces and veths:
 *  - a daemon with --cleanup-on-exit switches GRO on on two backends' veth peers and turns tx VLAN offloads
 *    off on its ingress's peer (native mode);
 *  - the backend hosts change their devices: b1 its MAC (no gratuitous ARP, as in the finding), b2 its
 *    device's name (eth0 -> eth7), and the ingress host its MAC;
 *  - the daemon stops: GRO is off again on both, the offloads on again, and the log says so for each (by
 *    the name it has now), with nothing "left alone".
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Protocol, UdpChecksumMode } from '../../src/gen/xdpctl/v1/rule.js';
import { type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, sleep } from '../helpers/env.js';
import { backendOf, Lab, udpRule } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

describe(
  'host changes: a device whose MAC or name changed is still the device the daemon changed',
  kernelOnly(),
  () => {
    const lab = new Lab();
    const { topo } = lab;
    let d: DaemonProcess | undefined;
    let vm: Host, b1: Host, b2: Host, b3: Host;

    before(() => {
      ({ vm, b1, b2, b3 } = lab.addHosts(
        { vm: '198.18.1.1/24', b1: '198.18.2.1/24', b2: '198.18.2.2/24', b3: '198.18.2.3/24' },
        { routeVm: false },
      ));
    });
    after(() => lab.destroy());

    const feature = (h: Host, dev: string, name: string) =>
      new RegExp(`^${name}: (\\w+)`, 'm').exec(sh('ip', ['netns', 'exec', h.netns, 'ethtool', '-k', dev]))![1];
    const link = (h: Host, dev: string) =>
      JSON.parse(sh('ip', ['-n', h.netns, '-j', '-d', 'link', 'show', dev]))[0] as {
        ifindex: number;
        address: string;
        link_index?: number;
      };

    it('--cleanup-on-exit restores GRO and offloads after the MAC or name changed', async () => {
      assert.equal(feature(b1, 'eth0', 'generic-receive-offload'), 'off', "a new veth's default");
      assert.equal(feature(b2, 'eth0', 'generic-receive-offload'), 'off', "a new veth's default");
      assert.equal(feature(vm, 'eth0', 'tx-vlan-offload'), 'on', "a new veth's default");
      ({ d } = await lab.start(['--cleanup-on-exit', '--log-level', 'info', '--xdp-mode', 'native']));
      await d.clients().rules.createRule({
        rule: udpRule('web', 7984, [vm.hostIf], [backendOf(b1), backendOf(b2)]),
      });
      assert.equal(
        feature(b1, 'eth0', 'generic-receive-offload'),
        'on',
        'switched on by the daemon (--fix-veth-peers)',
      );
      assert.equal(
        feature(b2, 'eth0', 'generic-receive-offload'),
        'on',
        'switched on by the daemon (--fix-veth-peers)',
      );
      assert.equal(feature(vm, 'eth0', 'tx-vlan-offload'), 'off', 'turned off by the daemon for XDP');
      const was = { b1: link(b1, 'eth0'), b2: link(b2, 'eth0'), vm: link(vm, 'eth0') };

      // The hosts change their own devices' settings (nothing is deleted or made again).
      sh('ip', ['-n', b1.netns, 'link', 'set', 'eth0', 'address', '02:27:00:00:00:b1']);
      sh('ip', ['-n', vm.netns, 'link', 'set', 'eth0', 'address', '02:27:00:00:00:01']);
      sh('ip', ['-n', b2.netns, 'link', 'set', 'eth0', 'down']);
      sh('ip', ['-n', b2.netns, 'link', 'set', 'eth0', 'name', 'eth7']);
      sh('ip', ['-n', b2.netns, 'link', 'set', 'eth7', 'up']);
      const now = { b1: link(b1, 'eth0'), b2: link(b2, 'eth7'), vm: link(vm, 'eth0') };
      // The case under test: the same devices (ifindex, veth peer), other MACs and names.
      for (const h of ['b1', 'b2', 'vm'] as const) {
        assert.equal(now[h].ifindex, was[h].ifindex, `${h}: the same ifindex`);
        assert.equal(now[h].link_index, was[h].link_index, `${h}: the same veth peer`);
      }
      assert.notEqual(now.b1.address, was.b1.address);
      assert.notEqual(now.vm.address, was.vm.address);
      await sleep(2500); // passes of the reconciler see the changes (and follow them) before the stop

      assert.equal(await d.stop('SIGTERM'), 0);
      const done = d.output
        .split('\n')
        .filter((l) => l.includes('"msg":"cleanup: host restored"'))
        .map((l) => JSON.parse(l) as { restored: string[]; leftAlone?: string[]; failed?: string[] });
      d = undefined;
      assert.equal(feature(b1, 'eth0', 'generic-receive-offload'), 'off', 'GRO off again after the MAC changed');
      assert.equal(feature(b2, 'eth7', 'generic-receive-offload'), 'off', 'GRO off again after the name changed');
      assert.equal(feature(vm, 'eth0', 'tx-vlan-offload'), 'on', 'tx-vlan-offload on again after the MAC changed');
      assert.equal(done.length, 1);
      assert.equal(done[0].leftAlone, undefined, 'nothing left alone');
      assert.deepEqual(
        [...done[0].restored].sort(),
        [
          `eth0 in netns ${b1.netns}: GRO off again`,
          `eth0 in netns ${b2.netns}: GRO off again (now named eth7)`,
          `eth0 in netns ${vm.netns}: tx-vlan-offload, tx-vlan-stag-hw-insert on again`,
        ].sort(),
        'each setting put back is logged, on the device as it is named now',
      );
    });

    it('a veth pair made again in the same namespace is another device: left alone, and said so', async () => {
      ({ d } = await lab.start(['--cleanup-on-exit', '--log-level', 'info', '--xdp-mode', 'native']));
      const c = d.clients();
      await c.rules.createRule({
        rule: {
          name: 'one',
          match: { protocol: Protocol.PROTOCOL_UDP, port: 7986, destination: '', sourcePrefixes: [] },
          ingressInterfaces: [vm.hostIf],
          backends: [{ ip: b3.ip!, mac: b3.mac, interface: b3.hostIf, weight: 1 }],
          udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
          labels: {},
          generation: 0n,
        },
      });
      assert.equal(feature(b3, 'eth0', 'generic-receive-offload'), 'on', 'switched on by the daemon');
      const was = link(b3, 'eth0');
      const end = { ifindex: was.link_index, ifname: b3.hostIf, mac: b3.hostMac };
      // No rule uses b3 any more (the daemon has nothing to check there); its veth pair is deleted and made
      // again: the same names, a new ifindex in the same namespace, and its owner sets GRO on.
      await c.rules.deleteRule({ name: 'one', expectedGeneration: 0n });
      topo.unplug('b3');
      topo.replug('b3', '198.18.2.3/24');
      const now = link(b3, 'eth0');
      assert.notEqual(now.ifindex, was.ifindex, 'a new ifindex');
      sh('ip', ['netns', 'exec', b3.netns, 'ethtool', '-K', 'eth0', 'gro', 'on']);
      assert.equal(await d.stop('SIGTERM'), 0);
      const done = d.output
        .split('\n')
        .filter((l) => l.includes('"msg":"cleanup: host restored"'))
        .map((l) => JSON.parse(l) as { restored: string[]; leftAlone?: string[] });
      d = undefined;
      assert.equal(feature(b3, 'eth0', 'generic-receive-offload'), 'on', 'GRO left as its owner set it');
      assert.equal(done.length, 1);
      assert.ok(
        done[0].leftAlone?.includes(
          `eth0 in netns ${b3.netns}: replaced by another device (ifindex ${was.ifindex} then, ${now.ifindex} now; ` +
            `its veth peer then, ifindex ${end.ifindex} in this daemon's network namespace (${end.ifname} then), ` +
            `is gone too: no device has that ifindex here, nor its name and MAC address ${end.mac} in any other ` +
            'namespace this one has an id for and could read; the veth pair no longer exists): left alone',
        ),
        JSON.stringify(done[0]),
      );
    });
  },
);
