/**
 * A backend behind a veth whose peer xdpctld cannot inspect (in an unnamed network namespace that nothing it
 * could enter keeps: no process in it, no open file or bind mount of it, only a socket made in it; a namespace
 * it can enter is inspected there: unnamed-peer-repair.test.ts), on a native-mode ingress, with real traffic (docs/architecture.md, promises 1 and 2).
 * The kernel's ndo-xmit flag is all the daemon can read about it, and the flag stays set when the peer's
 * GRO is switched off while the peer is down (measured on 6.18: no NAPI, every redirected frame dropped;
 * a review saw 98 of 200 flows lost while the rule said ACTIVE). So the status says the backend cannot be
 * verified (DEGRADED, BackendsReceiving Unknown) until traffic shows it: frames the kernel took (ACTIVE);
 * redirect errors and none taken take it out of the table (its flows move to the other backend; the reason
 * names the observation; logged once; health NOT_SERVING), and it is tried again after a back-off and
 * verified again by traffic once the peer can receive. The peer's GRO is the subject here: the test sets it
 * as the fault and the repair (as reconciler-egress does); everything else has the host's defaults.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';
import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { RETRY_BASE_MS } from '../../src/server/core/egress-watch.js';
import { ifindexOf } from '../../src/server/dataplane/netdev.js';
import { XDP_ACT, xdpFeatures } from '../../src/server/dataplane/xdp-features.js';
import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { metric, type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sleep, until } from '../helpers/env.js';
import { backendOf, cond, Lab, type UnnamedHost } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
const { SERVING, NOT_SERVING } = HealthCheckResponse_ServingStatus;

describe('a backend whose veth peer cannot be inspected: judged by its redirect errors', kernelOnly(), () => {
  const lab = new Lab();
  const { id, topo, health, count } = lab;
  const hostIf = `x${id}un`;
  const ip2 = '198.18.2.2';
  const mac2 = lab.mac('02');
  let b2: UnnamedHost;
  let d: DaemonProcess;
  let c: Clients;
  let b1: Host;

  before(async () => {
    ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    // b2: a namespace with no name that only a socket keeps, its veth peer up with GRO switched on while up.
    b2 = await lab.addSealedHost(hostIf, `${ip2}/24`, mac2);
    ({ d, c } = await lab.start(['--log-level', 'info', '--xdp-mode', 'native', '--prometheus', '127.0.0.1:0']));
  });
  after(() => lab.destroy());

  const inNs = (cmd: string) => b2.sh(cmd);
  /** Send `n` datagrams over `flows` flows from vm; what b1 and b2 received. */
  const send = (n = 200, flows = 50) => lab.send(7995, [b1, b2], n, flows);
  const status = () => lab.status('web');
  const ndoXmit = () => ((xdpFeatures(ifindexOf(hostIf)) ?? 0n) & XDP_ACT['ndo-xmit']) !== 0n;

  it('says it cannot know, verifies by traffic, takes out a peer that drops everything, and puts it back', async (t) => {
    await c.rules.createRule({
      rule: lab.rule('web', 7995, [backendOf(b1), { ip: ip2, mac: mac2, interface: hostIf }]),
    });
    // 1. Before any traffic: not ACTIVE, the backend in the table, the status says why it cannot be known.
    await until('web DEGRADED: b2 cannot be verified', async () =>
      /cannot be verified/.test((await status()).backendStatus[1]?.message ?? ''),
    );
    let st = await status();
    assert.equal(st.state, RuleState.RULE_STATE_DEGRADED);
    assert.deepEqual(
      st.backendStatus.map((b) => b.active),
      [true, true],
    );
    assert.match(st.backendStatus[1].message, /unnamed network namespace/);
    assert.match(
      st.backendStatus[1].message,
      /no name in \/run\/netns, no bind mount, no process in it and no open namespace file of any process .*: xdpctld has no file to enter it by/,
    );
    assert.equal(cond(st, 'BackendsReceiving').status, ConditionStatus.CONDITION_STATUS_UNKNOWN);
    assert.equal(cond(st, 'BackendsReceiving').reason, 'BackendsUnverified');
    // The status says so from the CreateRule reply on; the health service follows at the reconciler's next pass.
    await until('health NOT_SERVING', async () => (await health()) === NOT_SERVING);

    // 2. Traffic shows the kernel takes its frames: ACTIVE.
    let r = await send();
    assert.equal(r.total, r.sent, `all delivered (${r.got})`);
    assert.ok(r.got[1] > 0, `b2 has flows (${r.got})`);
    await until('web ACTIVE: verified by traffic', async () => (await status()).state === RuleState.RULE_STATE_ACTIVE);
    assert.equal((await status()).backendStatus[1].message, '');
    await until('health SERVING', async () => (await health()) === SERVING);

    // 3. The fault: GRO switched off while the peer is down. The kernel keeps announcing ndo-xmit.
    inNs('ip link set eth0 down && ethtool -K eth0 gro off && ip link set eth0 up');
    assert.equal(ndoXmit(), true, 'premise: the kernel still announces ndo-xmit');
    // The peer went down and up: what was verified says nothing now.
    await until('b2 not verified any more', async () =>
      /cannot be verified/.test((await status()).backendStatus[1]?.message ?? ''),
    );
    r = await send();
    assert.ok(r.got[1] === 0 && r.total < r.sent, `premise: b2's flows are dropped (${r.got} of ${r.sent})`);
    t.diagnostic(`before the daemon saw it: ${r.total} of ${r.sent} delivered (${r.got})`);
    await until(
      'b2 taken out: its frames were dropped',
      async () => (await status()).backendStatus[1]?.active === false,
    );
    st = await status();
    assert.equal(st.state, RuleState.RULE_STATE_DEGRADED);
    assert.match(
      st.backendStatus[1].message,
      new RegExp(
        `the kernel dropped all of the last \\d+ frames redirected to ${hostIf} \\(redirect errors\\) and took none`,
      ),
    );
    assert.equal(cond(st, 'BackendsReceiving').status, ConditionStatus.CONDITION_STATUS_FALSE);
    assert.equal(await health(), NOT_SERVING);
    r = await send();
    assert.equal(r.total, r.sent, `every flow moved to b1 (${r.got})`);
    // A write that would put it in a table meanwhile is refused with the same observation.
    await assert.rejects(
      c.rules.createRule({
        rule: lab.rule('other', 7994, [{ ip: ip2, mac: mac2, interface: hostIf }]),
      }),
      (e: { code: Status; message: string }) => {
        assert.equal(e.code, Status.FAILED_PRECONDITION, e.message);
        assert.match(e.message, /rule\.backends\[0\]\.interface: .*the kernel dropped all/);
        return true;
      },
    );
    await sleep(1200);
    assert.equal(count(new RegExp(`"msg":"backend egress ${hostIf}: the kernel dropped all`)), 1, 'logged once');
    assert.equal(count(/"msg":"rule web is DEGRADED: .*the kernel dropped all/), 1, 'the rule transition logged once');
    assert.equal(
      await metric(d.prometheus!, 'xdpctl_reconciler_events_total', { xdpctl_event: 'egress_ejections' }),
      1,
      'the metric counts it',
    );

    // 4. The peer can receive again (GRO switched on while up). The backend is tried again after the back-off
    // and verified by the traffic it then gets.
    inNs('ethtool -K eth0 gro on');
    const t0 = Date.now();
    let back = false;
    while (!back && Date.now() - t0 < RETRY_BASE_MS + 10_000) {
      r = await send(100, 50);
      back = (await status()).state === RuleState.RULE_STATE_ACTIVE && r.total === r.sent && r.got[1] > 0;
      if (!back) await sleep(500);
    }
    assert.ok(
      back,
      `b2 back and verified (last ${r.got} of ${r.sent}; ${JSON.stringify((await status()).backendStatus[1])})`,
    );
    t.diagnostic(`b2 back ${Date.now() - t0} ms after its peer could receive (back-off ${RETRY_BASE_MS} ms)`);
    await until('health SERVING', async () => (await health()) === SERVING);
    await sleep(1200);
    assert.equal(count(new RegExp(`"msg":"backend egress ${hostIf}: its backends are put back on trial`)), 1);
    assert.equal(count(new RegExp(`"msg":"backend egress ${hostIf}: frames redirected to it are taken`)), 2);
    await c.rules.deleteRule({ name: 'web', expectedGeneration: 0n });
  });

  it('a link into such a veth: cannot be verified until frames are taken; not forwarding while all are dropped', async () => {
    // A second unnamed namespace that only a socket keeps: l2's side, its veth peer up with GRO switched on while up.
    const if2 = `x${id}ul`;
    const l2 = await lab.addSealedHost(if2, '198.18.50.2/24');
    try {
      const in2 = l2.sh;
      const l1 = topo.addHost('l1', '198.18.50.1/24');
      await c.links.connect({ link: { a: l1.hostIf, b: if2, direction: 0 } });
      const link = () => lab.linkStatus(l1.hostIf);
      const active = (st: Awaited<ReturnType<typeof link>>) => st.conditions.find((x) => x.type === 'Active')!;

      await until('l1 -> l2 not verified', async () => /cannot be verified/.test((await link()).warnings.join('\n')));
      let st = await link();
      assert.equal(st.aToBActive, true, 'in the datapath; the kernel announces ndo-xmit');
      assert.match(
        st.warnings.join('\n'),
        new RegExp(`${l1.hostIf} -> ${if2}: cannot be verified: .*unnamed network namespace`),
      );
      assert.deepEqual(
        [active(st).status, active(st).reason],
        [ConditionStatus.CONDITION_STATUS_UNKNOWN, 'EgressUnverified'],
      );
      // Said from the Connect reply on; the health service follows at the reconciler's next pass, unless frames
      // the namespaces send on their own (IPv6 DAD, router solicitations) verify the link before that pass:
      // then it is true that it forwards, and health stays SERVING (a fresh clone's CI run met that case).
      await until(
        'health NOT_SERVING, or the link verified by traffic first',
        async () =>
          (await health()) === NOT_SERVING || active(await link()).status === ConditionStatus.CONDITION_STATUS_TRUE,
        5000,
      );

      assert.equal(topo.ping('l1', '198.18.50.2'), true, 'l1 reaches l2 through the link');
      await until(
        'verified by traffic',
        async () => active(await link()).status === ConditionStatus.CONDITION_STATUS_TRUE,
      );
      assert.deepEqual((await link()).warnings, []);
      await until('health SERVING', async () => (await health()) === SERVING);

      // The fault: GRO off while l2's side is down; the kernel keeps announcing ndo-xmit. A pass sees the peer
      // down first (no carrier: not forwarding); once it is up again the direction cannot be verified, and is
      // not said to forward (before: "is forwarding again", while every frame was dropped).
      in2('ip link set eth0 down');
      await until('l1 -> l2 not forwarding: no carrier', async () =>
        /no carrier/.test((await link()).warnings.join('\n')),
      );
      in2('ethtool -K eth0 gro off && ip link set eth0 up');
      assert.equal(((xdpFeatures(ifindexOf(if2)) ?? 0n) & XDP_ACT['ndo-xmit']) !== 0n, true, 'premise: ndo-xmit');
      let reached = true;
      await until(
        'l1 -> l2 not forwarding: its frames were dropped',
        async () => {
          reached &&= topo.ping('l1', '198.18.50.2', 4);
          return !(await link()).aToBActive;
        },
        15_000,
      );
      assert.equal(reached, false, 'premise: l1 did not reach l2 meanwhile');
      st = await link();
      assert.equal(st.bToAActive, true, 'the other direction is not judged by this one');
      assert.match(
        st.warnings.join('\n'),
        new RegExp(`${l1.hostIf} -> ${if2}: the kernel dropped all of the last \\d+ frames redirected to ${if2}`),
      );
      assert.deepEqual(
        [active(st).status, active(st).reason],
        [ConditionStatus.CONDITION_STATUS_FALSE, 'EgressCannotTransmit'],
      );
      assert.equal(await health(), NOT_SERVING);
      await sleep(1200);
      assert.equal(
        count(new RegExp(`"msg":"link ${l1.hostIf} -> ${if2} is not forwarding: the kernel dropped all`)),
        1,
      );

      // Repaired (GRO on while up): the next frames taken show it forwards again.
      in2('ethtool -K eth0 gro on');
      await until(
        'l1 -> l2 forwarding again',
        async () => {
          topo.ping('l1', '198.18.50.2', 2);
          return (await link()).aToBActive;
        },
        10_000,
      );
      assert.equal(topo.ping('l1', '198.18.50.2'), true, 'l1 reaches l2 again');
      assert.equal(active(await link()).status, ConditionStatus.CONDITION_STATUS_TRUE);
      await until('health SERVING again', async () => (await health()) === SERVING);
      assert.equal(count(new RegExp(`"msg":"link ${l1.hostIf} -> ${if2} is forwarding again`)), 1);
      assert.equal(
        count(new RegExp(`"msg":"link ${l1.hostIf} -> ${if2} was not forwarding \\(egress ${if2} has no carrier`)),
        1,
        'the carrier back is said, without "forwarding"',
      );
      await c.links.disconnect({ a: l1.hostIf, b: if2 });
    } finally {
      l2.remove();
    }
  });
});
