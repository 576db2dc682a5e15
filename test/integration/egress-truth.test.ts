/**
 * What a backend's or a link's egress can carry, stated as observed (docs/architecture.md, promise 2: "status that never
 * says more than is true"), with real namespaces, veths and datagrams:
 *  - an egress MTU below the ingress's: the kernel drops every larger datagram on redirect (XDP does not
 *    fragment). The rule is DEGRADED (not ACTIVE) within a second of the change, its FramesFit condition
 *    names both MTUs and the largest datagram that still passes, which real datagrams confirm; it is
 *    ACTIVE again when the MTU is restored; each transition is logged once. The same for a link whose
 *    egress MTU is below its ingress's;
 *  - a link into a veth whose peer xdpctld cannot inspect (an unnamed namespace only a socket keeps) says it cannot be
 *    verified from the Connect reply on, as a backend behind such a veth does, not "forwarding" until a
 *    pass looks.
 * Changing the MTU is the fault under test here; everything else keeps the host's defaults.
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

describe('egress truth: MTU and unverifiable link egresses as observed', kernelOnly(), () => {
  const lab = new Lab();
  const { id, topo, count } = lab;
  let c: Clients;
  let vm: Host, b1: Host;

  before(async () => {
    ({ vm, b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    ({ c } = await lab.start(['--log-level', 'info', '--xdp-mode', 'native']));
  });
  after(() => lab.destroy());

  /** UDP payloads of each size sent from `from` to the rule's port; the sizes `to` received. */
  const deliver = (from: Host, to: Host, port: number, sizes: number[]) =>
    datagramSizes(from.netns, NOWHERE, [`--net=/run/netns/${to.netns}`], to.ip!, port, sizes);

  it('a backend egress MTU below the ingress MTU: DEGRADED, naming both MTUs and the largest datagram that passes', async (t) => {
    await c.rules.createRule({
      rule: lab.rule('mtu', 7990, [backendOf(b1)]),
    });
    const status = () => lab.status('mtu');
    const fit = async () => (await status()).conditions.find((x) => x.type === 'FramesFit')!;
    await until('mtu ACTIVE', async () => (await status()).state === RuleState.RULE_STATE_ACTIVE);
    assert.equal((await fit()).status, ConditionStatus.CONDITION_STATUS_TRUE);
    assert.deepEqual(await deliver(vm, b1, 7990, [1000, 1472]), [1000, 1472], 'both delivered at MTU 1500');

    // The fault: the backend's egress MTU lowered below the ingress's (1500).
    const t0 = Date.now();
    sh('ip', ['link', 'set', b1.hostIf, 'mtu', '1400']);
    try {
      await until('mtu DEGRADED', async () => (await status()).state === RuleState.RULE_STATE_DEGRADED, 5000);
      t.diagnostic(`DEGRADED ${Date.now() - t0} ms after the MTU change`);
      const st = await status();
      const f = st.conditions.find((x) => x.type === 'FramesFit')!;
      assert.deepEqual([f.status, f.reason], [ConditionStatus.CONDITION_STATUS_FALSE, 'EgressMTUTooSmall']);
      assert.match(f.message, new RegExp(`egress ${b1.hostIf} has MTU 1400, ingress ${vm.hostIf} 1500`));
      assert.match(f.message, /whose IP packet exceeds 1404 bytes are dropped/);
      assert.match(f.message, /the largest that passes is an IP packet of 1404 bytes \(UDP payload 1376; 1400 bytes/);
      assert.match(st.message, /cannot take the largest datagrams/);
      assert.equal(st.conditions.find((x) => x.type === 'Ready')!.status, ConditionStatus.CONDITION_STATUS_FALSE);
      assert.deepEqual(
        st.backendStatus.map((b) => b.active),
        [true],
        'still in the table: smaller datagrams go',
      );
      // What the status says is what the kernel does: up to 1376 bytes of payload pass, larger datagrams do not,
      // and those are counted as the backend's redirect errors (not dropped silently, not passed to the stack).
      const errors = () => lab.redirectErrors('mtu', b1.ip!);
      const before = await errors();
      const got = await deliver(vm, b1, 7990, [1000, 1372, 1376, 1377, 1400, 1472]);
      assert.deepEqual(got, [1000, 1372, 1376]);
      await until('the 3 dropped datagrams counted as redirect errors', async () => (await errors()) - before === 3n);
      await sleep(1500);
      assert.equal(count(/"msg":"rule mtu is DEGRADED: .*has MTU 1400/), 1, 'logged once, not every pass');
    } finally {
      sh('ip', ['link', 'set', b1.hostIf, 'mtu', '1500']);
    }
    await until('mtu ACTIVE again', async () => (await status()).state === RuleState.RULE_STATE_ACTIVE, 5000);
    assert.equal((await fit()).status, ConditionStatus.CONDITION_STATUS_TRUE);
    assert.deepEqual(await deliver(vm, b1, 7990, [1472]), [1472]);
    await sleep(1200);
    assert.equal(count(/"msg":"rule mtu is ACTIVE/), 1, 'the recovery logged once');
    await c.rules.deleteRule({ name: 'mtu', expectedGeneration: 0n });
  });

  it('a link whose egress MTU is below its ingress MTU: FramesFit false, naming both MTUs', async () => {
    const l1 = topo.addHost('l1', '198.18.40.1/24');
    const l2 = topo.addHost('l2', '198.18.40.2/24');
    await c.links.connect({ link: { a: l1.hostIf, b: l2.hostIf, direction: 0 } });
    const link = () => lab.linkStatus(l1.hostIf);
    const fit = async () => (await link()).conditions.find((x) => x.type === 'FramesFit')!;
    const ping = (size: number) => topo.pingDf('l1', l2.ip!, size);
    await until('l1 reaches l2', () => ping(56), 10_000);
    assert.equal((await fit()).status, ConditionStatus.CONDITION_STATUS_TRUE);
    sh('ip', ['link', 'set', l2.hostIf, 'mtu', '1280']);
    try {
      await until('FramesFit false', async () => (await fit()).status === ConditionStatus.CONDITION_STATUS_FALSE, 5000);
      const f = await fit();
      assert.equal(f.reason, 'EgressMTUTooSmall');
      assert.match(f.message, new RegExp(`${l1.hostIf} -> ${l2.hostIf}: ${l2.hostIf} has MTU 1280, ${l1.hostIf} 1500`));
      assert.match(f.message, /IP packet of 1284 bytes \(UDP payload 1256; 1280 bytes/);
      // ICMP echo payload 1256 = an IP packet of 1284 bytes: passes; one byte more does not.
      assert.equal(ping(1256), true, 'an IP packet of 1284 bytes passes');
      assert.equal(ping(1257), false, 'one byte more is dropped');
      assert.equal(ping(1400), false, 'a larger one is dropped');
    } finally {
      sh('ip', ['link', 'set', l2.hostIf, 'mtu', '1500']);
    }
    await until('FramesFit true again', async () => (await fit()).status === ConditionStatus.CONDITION_STATUS_TRUE);
    await c.links.disconnect({ a: l1.hostIf, b: l2.hostIf });
  });

  it('a link into a veth whose peer cannot be inspected says so from the Connect reply on', async () => {
    const if2 = `x${id}uv`;
    // Its eth0 has the backend's static MAC: the veth peer (read by its namespace id) agrees, so what the status
    // says cannot be verified is the egress itself (another MAC there would be a contradiction).
    const ns2 = await lab.addSealedHost(if2, '198.18.51.2/24', '02:00:00:00:51:02');
    try {
      const l3 = topo.addHost('l3', '198.18.51.1/24');
      // A backend behind that veth: the CreateRule reply says so (DEGRADED), not ACTIVE until a pass. Before the
      // link: a link from a backend's egress is refused (backend-behind-link).
      const created = await c.rules.createRule({
        rule: lab.rule('unverified', 7994, [{ ip: '198.18.51.2', mac: '02:00:00:00:51:02', interface: if2 }]),
      });
      const rs = created.rule!.status!;
      assert.equal(rs.state, RuleState.RULE_STATE_DEGRADED, JSON.stringify(rs));
      assert.match(rs.backendStatus[0].message, /^cannot be verified: .*unnamed network namespace/);
      await c.rules.deleteRule({ name: 'unverified', expectedGeneration: 0n });
      const reply = await c.links.connect({ link: { a: l3.hostIf, b: if2, direction: 0 } });
      const check = (st: NonNullable<NonNullable<typeof reply.link>['status']>, what: string) => {
        const active = st.conditions.find((x) => x.type === 'Active')!;
        assert.deepEqual(
          [active.status, active.reason],
          [ConditionStatus.CONDITION_STATUS_UNKNOWN, 'EgressUnverified'],
          `${what}: ${JSON.stringify(st)}`,
        );
        assert.match(st.warnings.join('\n'), new RegExp(`${l3.hostIf} -> ${if2}: cannot be verified: `), what);
      };
      check(reply.link!.status!, 'the Connect reply');
      check(await lab.linkStatus(l3.hostIf), 'ListLinks at once');
      // Traffic that the kernel takes verifies it (as before).
      assert.equal(topo.ping('l3', '198.18.51.2'), true, 'l3 reaches the unnamed namespace');
      await until(
        'verified by traffic',
        async () =>
          (await c.links.listLinks({})).links
            .find((x) => x.a === l3.hostIf)!
            .status!.conditions.find((x) => x.type === 'Active')!.status === ConditionStatus.CONDITION_STATUS_TRUE,
      );
      await c.links.disconnect({ a: l3.hostIf, b: if2 });
    } finally {
      ns2.remove();
    }
  });
});
