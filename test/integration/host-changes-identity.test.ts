/**
 * --cleanup-on-exit puts back only what the daemon changed, on the device it changed it on (docs/architecture.md: "the
 * daemon states only what it observed"). A network namespace deleted and made again numbers its devices
 * from the start: a new veth peer gets the same name AND the same ifindex as the one the daemon switched
 * GRO on (or turned tx VLAN offloads off) on. With real namespaces and veths:
 *  - a daemon switches GRO on on a backend's veth peer and turns tx-vlan-offload off on its ingress's peer
 *    (both recorded in host-changes.json), and stops without cleanup;
 *  - both namespaces are deleted and made again with the same names; the new peers get the same ifindexes;
 *    their owner sets GRO on and tx VLAN offloads off by hand;
 *  - a daemon with --cleanup-on-exit starts on the same state and stops: it leaves both new devices as their
 *    owner set them, and logs at its start each record whose device is gone for good and why (dropped from
 *    the record): the namespace is another one (its id, which
 *    the kernel never gives to another namespace; its nsfs inode number it does give back), or, for a record
 *    without the namespace's id (an earlier version's, or a kernel before 6.18), the veth peer is another one.
 *    Never the MAC: a setting (host-changes-same-device.test.ts).
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { netnsId } from '../../src/server/dataplane/netdev.js';
import { type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh } from '../helpers/env.js';
import { backendOf, Lab, udpRule } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

describe('host changes: a device made again with the same name and ifindex is left alone', kernelOnly(), () => {
  const lab = new Lab();
  const { id, topo } = lab;
  let d: DaemonProcess | undefined;
  let vm: Host, b1: Host;

  before(() => {
    ({ vm, b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }, { routeVm: false }));
  });
  after(() => lab.destroy());

  const peer = (h: Host) =>
    JSON.parse(sh('ip', ['-n', h.netns, '-j', '-d', 'link', 'show', 'eth0']))[0] as {
      ifindex: number;
      address: string;
      link_index: number;
    };
  const feature = (h: Host, name: string) =>
    new RegExp(`^${name}: (\\w+)`, 'm').exec(sh('ip', ['netns', 'exec', h.netns, 'ethtool', '-k', 'eth0']))![1];
  /** Delete the host's namespace (and its veth pair) and make both again with the same names. */
  function remake(h: Host, cidr: string) {
    sh('ip', ['link', 'del', h.hostIf]);
    sh('ip', ['netns', 'del', h.netns]);
    sh('ip', ['netns', 'add', h.netns]);
    sh('ip', ['-n', h.netns, 'link', 'set', 'lo', 'up']);
    topo.replug(h.role, cidr);
  }

  it('--cleanup-on-exit leaves the new devices as their owner set them, and says so', async () => {
    assert.equal(feature(b1, 'generic-receive-offload'), 'off', "a new veth's default");
    assert.equal(feature(vm, 'tx-vlan-offload'), 'on', "a new veth's default");
    ({ d } = await lab.start(['--log-level', 'info', '--xdp-mode', 'native']));
    await d.clients().rules.createRule({ rule: udpRule('web', 7983, [vm.hostIf], [backendOf(b1)]) });
    assert.equal(feature(b1, 'generic-receive-offload'), 'on', 'switched on by the daemon (--fix-veth-peers)');
    assert.equal(feature(vm, 'tx-vlan-offload'), 'off', 'turned off by the daemon for XDP');
    const before = { b1: peer(b1), vm: peer(vm) };
    const ends = { b1: { ifname: b1.hostIf, mac: b1.hostMac }, vm: { ifname: vm.hostIf, mac: vm.hostMac } };
    const nsInode = (h: Host) => sh('stat', ['-c', '%i', `/run/netns/${h.netns}`]).trim();
    const inodes = { b1: nsInode(b1), vm: nsInode(vm) };
    assert.equal(await d.stop('SIGTERM'), 0);
    d = undefined;
    // The GRO record as an earlier version wrote it (no namespace id): judged by the veth peer.
    const file = `/tmp/xdpctl-test-${id}-state/host-changes.json`;
    const record = JSON.parse(readFileSync(file, 'utf8')) as {
      gro: { netns: string; netnsId?: string; linkIndex?: number }[];
      offloads: { netns: string; netnsId?: string; features: string[] }[];
    };
    const gro = record.gro.find((c) => c.netns === b1.netns)!;
    const namespaceIds = { b1: gro.netnsId, vm: record.offloads.find((c) => c.netns === vm.netns)?.netnsId };
    const vmFeatures = record.offloads.find((c) => c.netns === vm.netns)!.features.join(', ');
    assert.match(namespaceIds.vm ?? '', /^\d+$/, 'the namespace id is recorded (Linux >= 6.18: NS_GET_ID)');
    assert.equal(gro.linkIndex, before.b1.link_index, 'the veth peer is recorded');
    delete gro.netnsId;
    writeFileSync(file, JSON.stringify(record));

    remake(b1, '198.18.2.1/24');
    remake(vm, '198.18.1.1/24');
    const now = { b1: peer(b1), vm: peer(vm) };
    // The case under test: the same names and ifindexes, other devices.
    assert.equal(now.b1.ifindex, before.b1.ifindex, 'the new backend peer has the old one ifindex');
    assert.equal(now.vm.ifindex, before.vm.ifindex, 'the new ingress peer has the old one ifindex');
    assert.notEqual(now.b1.link_index, before.b1.link_index, 'the new backend peer has another veth peer');
    // What a namespace's inode number is worth as its identity: usually given back at once (not asserted).
    const sameInode = { b1: nsInode(b1) === inodes.b1, vm: nsInode(vm) === inodes.vm };
    // Their owner's own settings: the very ones the old records would "put back".
    sh('ip', ['netns', 'exec', b1.netns, 'ethtool', '-K', 'eth0', 'gro', 'on']);
    sh('ip', ['netns', 'exec', vm.netns, 'ethtool', '-K', 'eth0', 'txvlan', 'off', 'tx-vlan-stag-hw-insert', 'off']);

    // The rule's interfaces are new devices: the restarted daemon attaches again; both settings are already
    // as XDP needs them, so it changes nothing on them.
    ({ d } = await lab.start(['--cleanup-on-exit', '--log-level', 'info', '--xdp-mode', 'native']));
    await d.clients().rules.deleteRule({ name: 'web', expectedGeneration: 0n });
    assert.equal(await d.stop('SIGTERM'), 0);
    assert.equal(feature(b1, 'generic-receive-offload'), 'on', 'GRO left as its owner set it');
    assert.equal(feature(vm, 'tx-vlan-offload'), 'off', 'tx-vlan-offload left as its owner set it');
    assert.equal(feature(vm, 'tx-vlan-stag-hw-insert'), 'off', 'tx-vlan-stag-hw-insert left as its owner set it');
    const done = d.output
      .split('\n')
      .filter((l) => l.includes('"msg":"cleanup: host restored"'))
      .map((l) => JSON.parse(l) as { restored: string[]; leftAlone?: string[] });
    assert.equal(done.length, 1, d.output.slice(-3000));
    assert.deepEqual(done[0].restored, [], 'nothing put back');
    assert.deepEqual(
      JSON.parse(readFileSync(file, 'utf8')),
      { gro: [], offloads: [] },
      'records left alone are dropped',
    );
    // Nor was the device recorded moved elsewhere: the veth it was the peer of, in the daemon's namespace, is
    // gone too (host-changes-moved-peer.test.ts follows one that was).
    const pairGone = (h: 'b1' | 'vm') =>
      `its veth peer then, ifindex ${before[h].link_index} in this daemon's network namespace (${ends[h].ifname} ` +
      `then), is gone too: no device has that ifindex here, nor its name and MAC address ${ends[h].mac} in any ` +
      'other namespace this one has an id for and could read; the veth pair no longer exists';
    // Judged at the start, from the record alone: each said once, with why, and dropped (nothing left for the
    // cleanup to leave alone).
    const said = d.output
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => (JSON.parse(l) as { msg: string }).msg)
      .filter((m) => m.startsWith('host-changes record: '));
    const dropped = '; nothing will be undone for it, and its record is dropped';
    assert.deepEqual(
      said,
      [
        `host-changes record: eth0 in netns ${b1.netns} (ifindex ${before.b1.ifindex}), GRO switched on by ` +
          `xdpctld, is gone for good: replaced by another device (ifindex ${now.b1.ifindex}, but its veth peer was ` +
          `ifindex ${before.b1.link_index} then, ifindex ${now.b1.link_index} now; ${pairGone('b1')})${dropped}`,
        `host-changes record: eth0 in netns ${vm.netns} (ifindex ${before.vm.ifindex}), ${vmFeatures} turned off ` +
          `by xdpctld, is gone for good: gone (/run/netns/${vm.netns} is another network namespace now: namespace ` +
          `id ${namespaceIds.vm} then, ${netnsId(vm.netns)} now; ${pairGone('vm')})${dropped}`,
      ],
      `each record of a device gone for good is logged once, with why (namespace inode number the same as before: ${JSON.stringify(sameInode)})`,
    );
    assert.deepEqual(done[0].leftAlone ?? [], [], 'nothing left for the cleanup to leave alone');
    d = undefined;
  });
});
