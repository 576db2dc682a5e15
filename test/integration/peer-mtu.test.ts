/**
 * The MTU of a veth egress's PEER, wherever the peer lives (docs/architecture.md, "observe, don't assume"): the kernel
 * drops a frame redirected into a veth that the peer's MTU does not allow (veth_xdp_xmit), whether the peer
 * is in our namespace, a named one or an unnamed one (a container's). With real namespaces, veths and
 * datagrams:
 *  - a rule's backend whose veth peer in a named netns has a smaller MTU than the ingress: DEGRADED, its
 *    FramesFit condition False naming the peer, its namespace, both MTUs and the largest datagram that
 *    passes, which real datagrams confirm (and the dropped ones are the backend's redirect errors); ACTIVE
 *    again when the MTU is put back;
 *  - a link direction into such a veth: FramesFit False naming the peer and its namespace; real pings
 *    confirm the limit; True again when it is put back;
 *  - a backend behind a veth whose peer is in an unnamed namespace (read through its namespace id): the
 *    same FramesFit False; and when only larger datagrams come, the egress watch's reason names that MTU
 *    as a cause, not only a peer without NAPI.
 * Changing the peer's MTU is the fault under test; everything else keeps the host's defaults.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { Protocol, RuleState, UdpChecksumMode } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { datagramSizes } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';

describe('veth peer MTU: checked wherever the peer lives', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess;
  let c: Clients;
  let vm: Host, b1: Host;

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    topo.defaultRouteVia('vm', '198.18.1.254', vm.hostMac);
    d = await DaemonProcess.start(id, ['--log-level', 'info', '--xdp-mode', 'native']);
    c = d.clients();
  });
  after(async () => {
    await d?.destroy();
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  const count = (re: RegExp) => d.output.split('\n').filter((l) => re.test(l)).length;

  /** UDP payloads of each size sent from `from` to the rule's port; the sizes received on ip in the namespace `enter` names. */
  const deliver = (from: Host, enter: string[], ip: string, port: number, sizes: number[]) =>
    datagramSizes(from.netns, NOWHERE, enter, ip, port, sizes);

  it('a backend whose veth peer in a named netns has a smaller MTU: DEGRADED, FramesFit False naming the peer', async (t) => {
    await c.rules.createRule({
      rule: {
        name: 'pmtu',
        match: { protocol: Protocol.PROTOCOL_UDP, port: 7981, destination: '', sourcePrefixes: [] },
        ingressInterfaces: [vm.hostIf],
        backends: [{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf, weight: 1 }],
        udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
        labels: {},
        generation: 0n,
      },
    });
    const status = async () => (await c.rules.getRule({ name: 'pmtu' })).rule!.status!;
    const fit = async () => (await status()).conditions.find((x) => x.type === 'FramesFit')!;
    const enter = [`--net=/run/netns/${b1.netns}`];
    await until('pmtu ACTIVE', async () => (await status()).state === RuleState.RULE_STATE_ACTIVE, 8000);
    assert.equal((await fit()).status, ConditionStatus.CONDITION_STATUS_TRUE);
    assert.deepEqual(await deliver(vm, enter, b1.ip!, 7981, [900, 1200]), [900, 1200], 'both delivered at MTU 1500');

    // The fault: the veth PEER's MTU (eth0 in b1's namespace) lowered below the ingress's (1500); our side
    // (b1.hostIf) keeps 1500.
    const t0 = Date.now();
    sh('ip', ['-n', b1.netns, 'link', 'set', 'eth0', 'mtu', '1000']);
    try {
      await until('pmtu DEGRADED', async () => (await status()).state === RuleState.RULE_STATE_DEGRADED, 5000);
      t.diagnostic(`DEGRADED ${Date.now() - t0} ms after the peer's MTU change`);
      const st = await status();
      const f = st.conditions.find((x) => x.type === 'FramesFit')!;
      assert.deepEqual([f.status, f.reason], [ConditionStatus.CONDITION_STATUS_FALSE, 'EgressMTUTooSmall']);
      assert.match(
        f.message,
        new RegExp(`egress ${b1.hostIf}'s veth peer eth0 in netns ${b1.netns} has MTU 1000, ingress ${vm.hostIf} 1500`),
      );
      assert.match(f.message, /whose IP packet exceeds 1004 bytes are dropped/);
      assert.match(f.message, /the largest that passes is an IP packet of 1004 bytes \(UDP payload 976; 1000 bytes/);
      assert.match(st.message, /cannot take the largest datagrams/);
      assert.deepEqual(
        st.backendStatus.map((b) => b.active),
        [true],
        'still in the table: smaller datagrams go',
      );
      // What the status says is what the kernel does: up to 976 bytes of payload pass, larger ones do not, and
      // (native mode) those are the backend's redirect errors.
      const errors = async () => {
        const { counters } = await c.counters.getCounters({ filter: { rules: ['pmtu'] } });
        return counters!.backends.find((b) => b.ip === b1.ip)?.redirectErrorPackets ?? 0n;
      };
      const before = await errors();
      assert.deepEqual(await deliver(vm, enter, b1.ip!, 7981, [900, 976, 977, 1200]), [900, 976]);
      await until('the 2 dropped datagrams counted as redirect errors', async () => (await errors()) - before === 2n);
      await sleep(1200);
      assert.equal(count(/"msg":"rule pmtu is DEGRADED: .*veth peer eth0 in netns .* has MTU 1000/), 1, 'logged once');
    } finally {
      sh('ip', ['-n', b1.netns, 'link', 'set', 'eth0', 'mtu', '1500']);
    }
    await until('pmtu ACTIVE again', async () => (await status()).state === RuleState.RULE_STATE_ACTIVE, 5000);
    assert.equal((await fit()).status, ConditionStatus.CONDITION_STATUS_TRUE);
    assert.deepEqual(await deliver(vm, enter, b1.ip!, 7981, [1200]), [1200]);
    await c.rules.deleteRule({ name: 'pmtu', expectedGeneration: 0n });
  });

  it('a link into a veth whose peer in a named netns has a smaller MTU: FramesFit False naming the peer', async () => {
    const l1 = topo.addHost('l1', '198.18.40.1/24');
    const l2 = topo.addHost('l2', '198.18.40.2/24');
    await c.links.connect({ link: { a: l1.hostIf, b: l2.hostIf, direction: 0 } });
    const link = async () => (await c.links.listLinks({})).links.find((x) => x.a === l1.hostIf)!.status!;
    const fit = async () => (await link()).conditions.find((x) => x.type === 'FramesFit')!;
    const ping = (size: number) => {
      try {
        topo.exec('l1', 'ping', ['-c', '1', '-W', '1', '-M', 'do', '-s', String(size), l2.ip!]);
        return true;
      } catch {
        return false;
      }
    };
    const counters = async () => {
      const { counters: k } = await c.counters.getCounters({ filter: { interfaces: [l1.hostIf] } });
      const x = k!.links.find((y) => y.fromInterface === l1.hostIf);
      return {
        bytes: x?.bytes ?? 0n,
        errors: x?.redirectErrorPackets ?? 0n,
        xmit: k!.global?.errors.xmit ?? 0n,
      };
    };
    await until('l1 reaches l2', () => ping(56), 10_000);
    assert.equal((await fit()).status, ConditionStatus.CONDITION_STATUS_TRUE);
    assert.equal(ping(1400), true, 'a 1428-byte IP packet passes at MTU 1500');
    // l2's own eth0 (the veth peer of l2.hostIf, in l2's namespace) gets MTU 1280; its replies are small.
    sh('ip', ['-n', l2.netns, 'link', 'set', 'eth0', 'mtu', '1280']);
    try {
      await until('FramesFit false', async () => (await fit()).status === ConditionStatus.CONDITION_STATUS_FALSE, 5000);
      const f = await fit();
      assert.equal(f.reason, 'EgressMTUTooSmall');
      assert.match(
        f.message,
        new RegExp(
          `${l1.hostIf} -> ${l2.hostIf}: ${l2.hostIf}'s veth peer eth0 in netns ${l2.netns} has MTU 1280, ${l1.hostIf} 1500`,
        ),
      );
      assert.match(f.message, /IP packet of 1284 bytes \(UDP payload 1256; 1280 bytes/);
      // ICMP echo payload 1256 = an IP packet of 1284 bytes: passes; one byte more does not.
      assert.equal(ping(1256), true, 'an IP packet of 1284 bytes passes');
      // The frames the peer drops are the link's redirect errors (and global xmit errors), not forwarded ones.
      const c0 = await counters();
      assert.equal(ping(1257), false, 'one byte more is dropped');
      assert.equal(ping(1400), false, 'a larger one is dropped');
      await until('2 redirect errors on l1 -> l2', async () => (await counters()).errors - c0.errors === 2n);
      const c1 = await counters();
      // Other frames may cross meanwhile (ARP, IPv6 router solicitations: tens of bytes each); either dropped
      // frame alone (1299 and 1442 bytes) would be more than all of them.
      assert.ok(
        c1.bytes - c0.bytes < 1299n,
        `the dropped frames are not counted as forwarded (${c1.bytes - c0.bytes} bytes)`,
      );
      assert.equal(c1.xmit - c0.xmit, 2n, 'global xmit errors');
    } finally {
      sh('ip', ['-n', l2.netns, 'link', 'set', 'eth0', 'mtu', '1500']);
    }
    await until('FramesFit true again', async () => (await fit()).status === ConditionStatus.CONDITION_STATUS_TRUE);
    assert.equal(ping(1400), true, 'the larger one passes again');
    await c.links.disconnect({ a: l1.hostIf, b: l2.hostIf });
  });

  it('a backend whose veth peer is in an unnamed netns: its MTU is read all the same, and named as a cause of drops', async () => {
    const ns2: ChildProcess = spawn('unshare', ['--net', 'sleep', '600'], { stdio: 'ignore' });
    const if2 = `x${id}um`;
    try {
      await sleep(200);
      const in2 = (cmd: string) => sh('nsenter', ['-t', String(ns2.pid), '-n', 'sh', '-c', cmd]);
      sh('ip', ['link', 'add', if2, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', String(ns2.pid)]);
      sh('ip', ['link', 'set', if2, 'up']);
      in2('ip link set lo up && ip addr add 198.18.52.2/24 dev eth0 && ip link set eth0 up && ethtool -K eth0 gro on');
      in2('ip link set eth0 mtu 1000');
      const mac = JSON.parse(in2('ip -j link show eth0'))[0].address as string;
      await c.rules.createRule({
        rule: {
          name: 'umtu',
          match: { protocol: Protocol.PROTOCOL_UDP, port: 7982, destination: '', sourcePrefixes: [] },
          ingressInterfaces: [vm.hostIf],
          backends: [{ ip: '198.18.52.2', mac, interface: if2, weight: 1 }],
          udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
          labels: {},
          generation: 0n,
        },
      });
      const status = async () => (await c.rules.getRule({ name: 'umtu' })).rule!.status!;
      const fit = async () => (await status()).conditions.find((x) => x.type === 'FramesFit')!;
      await until('FramesFit false', async () => (await fit()).status === ConditionStatus.CONDITION_STATUS_FALSE, 5000);
      const f = await fit();
      assert.equal(f.reason, 'EgressMTUTooSmall');
      assert.match(
        f.message,
        new RegExp(
          `egress ${if2}'s veth peer eth0 in an unnamed network namespace \\(nsid \\d+\\) has MTU 1000, ingress ${vm.hostIf} 1500`,
        ),
      );
      assert.notEqual((await status()).state, RuleState.RULE_STATE_ACTIVE);
      const enter = ['-t', String(ns2.pid), '-n'];
      // Small datagrams are taken (the watch verifies the egress), larger ones are dropped at the peer ...
      assert.deepEqual(await deliver(vm, enter, '198.18.52.2', 7982, [900, 976, 977]), [900, 976]);
      // ... and a window of only larger ones is not blamed on NAPI alone.
      assert.deepEqual(await deliver(vm, enter, '198.18.52.2', 7982, [1200, 1200, 1200, 1200, 1200, 1200]), []);
      await until(
        'the backend judged on the drops',
        async () => /MTU of its veth peer eth0/.test((await status()).backendStatus[0]?.message ?? ''),
        5000,
      );
      const b = (await status()).backendStatus[0];
      assert.match(
        b.message,
        /either it cannot receive native XDP redirects \(a veth whose peer has no NAPI\) or the frames were larger than the MTU of its veth peer eth0 in an unnamed network namespace \(nsid \d+\) \(1000; ingress /,
      );
      await c.rules.deleteRule({ name: 'umtu', expectedGeneration: 0n });
    } finally {
      ns2.kill();
      shQuiet('ip', ['link', 'del', if2]);
    }
  });
});
