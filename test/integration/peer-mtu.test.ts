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
 *  - a backend behind a veth whose peer is in an unnamed namespace xdpctld cannot enter (only a socket keeps it; its MTU read through its namespace id): the
 *    same FramesFit False; and when only larger datagrams come, the egress watch's reason names that MTU
 *    as a cause, not only a peer without NAPI.
 * Changing the peer's MTU is the fault under test; everything else keeps the host's defaults.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients } from '../helpers/daemon.js';
import { kernelOnly, sh, sleep, until } from '../helpers/env.js';
import { backendOf, Lab, NOWHERE } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
import { datagramSizes } from '../helpers/udp.js';

describe('veth peer MTU: checked wherever the peer lives', kernelOnly(), () => {
  const lab = new Lab();
  const { id, topo, count } = lab;
  let c: Clients;
  let vm: Host, b1: Host;

  before(async () => {
    ({ vm, b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    ({ c } = await lab.start(['--log-level', 'info', '--xdp-mode', 'native']));
  });
  after(() => lab.destroy());

  /** UDP payloads of each size sent from `from` to the rule's port; the sizes received on ip in the namespace `enter` names. */
  const deliver = (from: Host, enter: string[], ip: string, port: number, sizes: number[]) =>
    datagramSizes(from.netns, NOWHERE, enter, ip, port, sizes);

  it('a backend whose veth peer in a named netns has a smaller MTU: DEGRADED, FramesFit False naming the peer', async (t) => {
    await c.rules.createRule({
      rule: lab.rule('pmtu', 7981, [backendOf(b1)]),
    });
    const status = () => lab.status('pmtu');
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
      const errors = () => lab.redirectErrors('pmtu', b1.ip!);
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
    const link = () => lab.linkStatus(l1.hostIf);
    const fit = async () => (await link()).conditions.find((x) => x.type === 'FramesFit')!;
    const ping = (size: number) => topo.pingDf('l1', l2.ip!, size);
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
    const if2 = `x${id}um`;
    // Only a socket keeps it: xdpctld cannot enter it (its NAPI is judged by the redirect counters), and reads
    // the peer's MTU all the same (through the namespace id).
    const ns2 = await lab.addSealedHost(if2, '198.18.52.2/24');
    try {
      const in2 = ns2.sh;
      in2('ip link set eth0 mtu 1000');
      const mac = JSON.parse(in2('ip -j link show eth0'))[0].address as string;
      await c.rules.createRule({
        rule: lab.rule('umtu', 7982, [{ ip: '198.18.52.2', mac, interface: if2 }]),
      });
      const status = () => lab.status('umtu');
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
      const enter = [ns2.netns];
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
      ns2.remove();
    }
  });
});
