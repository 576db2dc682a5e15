/**
 * A backend given with a static MAC (`ip,mac,iface`) whose host changes its MAC, with no neighbour
 * involvement by the daemon (docs/architecture.md, "observe, don't assume"): before, the rule stayed ACTIVE while
 * every datagram hashed to that backend was dropped by its host (a frame to another MAC than its own),
 * although the host showed the contradiction. Now the reconciler checks each static MAC against definitive
 * evidence only (a freshly confirmed neighbour entry, after a probe: the host answered ARP from that MAC;
 * a veth peer, in the daemon's namespace or another), takes a contradicted backend out of the table with a reason
 * naming both MACs (its flows move to the others: every datagram delivered), logs it once, and puts it
 * back when they agree again. A static MAC that nothing confirms says "cannot be verified". Real
 * namespaces, veths and datagrams; the backend's MAC change is the fault under test, everything else keeps
 * the host's defaults.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { metric, type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { CLI, kernelOnly, sh, sleep, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const { SERVING, NOT_SERVING } = HealthCheckResponse_ServingStatus;

describe('static MACs: checked against what the host shows', kernelOnly(), () => {
  const lab = new Lab();
  const { id, topo, count, status, health, rule } = lab;
  let d: DaemonProcess;
  let c: Clients;
  let b1: Host, b2: Host;

  before(async () => {
    ({ b1, b2 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', b2: '198.18.2.2/24' }));
    ({ d, c } = await lab.start(['--log-level', 'info', '--prometheus', '127.0.0.1:0']));
  });
  after(() => lab.destroy());

  /** Send `n` datagrams over `flows` flows from vm to the port; what b1 and b2 received. */
  const send = (port: number, n = 200, flows = 50) => lab.send(port, [b1, b2], n, flows);

  it('a backend whose host changes its MAC leaves the table, naming both MACs, and comes back when they agree', async (t) => {
    const old = b2.mac;
    const other = lab.mac('99');
    await c.rules.createRule({
      rule: rule('web', 7991, [backendOf(b1), backendOf(b2)]),
    });
    // Both MACs confirmed by the hosts' ARP answers (the daemon probes): no "cannot be verified".
    await until('both static MACs confirmed', async () => {
      const st = await status('web');
      return st.state === RuleState.RULE_STATE_ACTIVE && st.backendStatus.every((b) => b.message === '');
    });
    let r = await send(7991);
    assert.equal(r.total, r.sent, `all delivered (${r.got})`);
    assert.ok(r.got[1] > 0, `b2 has flows (${r.got})`);

    // The fault: b2's host takes another MAC (no gratuitous ARP: arp_notify is off by default).
    const t0 = Date.now();
    topo.exec('b2', 'ip', ['link', 'set', 'eth0', 'address', other]);
    try {
      await until(
        'b2 out of the table: its static MAC is contradicted',
        async () => (await status('web')).backendStatus[1]?.active === false,
        30_000,
      );
      t.diagnostic(`b2 out of the table ${Date.now() - t0} ms after its host changed its MAC`);
      const st = await status('web');
      assert.equal(st.state, RuleState.RULE_STATE_DEGRADED);
      // b2's host is behind a veth whose peer (its eth0) is in its own namespace: that peer, read there by its
      // namespace id, shows the contradiction (before the peer was read: b2's ARP answers from the new MAC).
      assert.match(
        st.backendStatus[1].message,
        new RegExp(
          `^static MAC contradicted: the veth peer eth0 of ${b2.hostIf} has MAC ${other}, not the static ${old}`,
        ),
      );
      assert.equal(st.backendStatus[0].active, true);
      // Its flows moved to b1: nothing is lost.
      r = await send(7991);
      assert.equal(r.total, r.sent, `all delivered (${r.got})`);
      assert.equal(r.got[1], 0, 'nothing reaches b2 (its host drops frames to the static MAC)');
      await sleep(1500);
      assert.equal(
        count(new RegExp(`"msg":"backend ${b2.ip} on ${b2.hostIf}: static MAC contradicted: .*${other}.*${old}`)),
        1,
        'logged once',
      );
    } finally {
      topo.exec('b2', 'ip', ['link', 'set', 'eth0', 'address', old]);
    }
    const t1 = Date.now();
    await until(
      'b2 back: its host has the static MAC again',
      async () => (await status('web')).state === RuleState.RULE_STATE_ACTIVE,
      30_000,
    );
    t.diagnostic(`b2 back ${Date.now() - t1} ms after its host took the static MAC again`);
    r = await send(7991);
    assert.equal(r.total, r.sent, `all delivered (${r.got})`);
    assert.ok(r.got[1] > 0, `b2 has flows again (${r.got})`);
    await sleep(1200);
    assert.equal(count(new RegExp(`"msg":"backend ${b2.ip} on ${b2.hostIf}: its static MAC .* agrees`)), 1);
    await c.rules.deleteRule({ name: 'web', expectedGeneration: 0n });
  });

  it('a veth egress whose peer (in our namespace) takes another MAC: out within a second, back when they agree', async (t) => {
    const pa = `x${id}pa`;
    const pb = `x${id}pb`;
    sh('ip', ['link', 'add', pa, 'type', 'veth', 'peer', 'name', pb]);
    try {
      sh('ip', ['link', 'set', pa, 'up']);
      sh('ip', ['link', 'set', pb, 'up']);
      const old = (JSON.parse(sh('ip', ['-j', 'link', 'show', pb])) as { address: string }[])[0].address;
      const other = lab.mac('98');
      // The backend's address is held where the peer is (our namespace): frames the peer takes are delivered.
      sh('ip', ['addr', 'add', '198.18.61.2/32', 'dev', pb]);
      await c.rules.createRule({
        rule: rule('peer', 7993, [backendOf(b1), { ip: '198.18.61.2', mac: old, interface: pa }]),
      });
      await until('both static MACs confirmed', async () => {
        const st = await status('peer');
        return st.state === RuleState.RULE_STATE_ACTIVE && st.backendStatus.every((b) => b.message === '');
      });
      const t0 = Date.now();
      sh('ip', ['link', 'set', pb, 'address', other]);
      await until('out of the table', async () => (await status('peer')).backendStatus[1]?.active === false, 10_000);
      t.diagnostic(`out ${Date.now() - t0} ms after the peer changed its MAC (rtnetlink)`);
      const st = await status('peer');
      assert.equal(st.state, RuleState.RULE_STATE_DEGRADED);
      assert.match(
        st.backendStatus[1].message,
        new RegExp(`^static MAC contradicted: the veth peer ${pb} of ${pa} has MAC ${other}, not the static ${old}`),
      );
      // Every flow goes to b1 now.
      const r = await send(7993);
      assert.equal(r.got[0], r.sent, `all delivered to b1 (${r.got})`);
      const t1 = Date.now();
      sh('ip', ['link', 'set', pb, 'address', old]);
      await until('back', async () => (await status('peer')).state === RuleState.RULE_STATE_ACTIVE, 10_000);
      t.diagnostic(`back ${Date.now() - t1} ms after the peer took the static MAC again`);
      // The peer keeps the MAC but its host gives the address up: the peer's MAC alone confirms nothing (before:
      // ACTIVE for good, every frame taken by the peer and dropped). Nothing answers ARP for it: cannot be
      // verified, once the hold of the last confirmation (8 s) is over.
      const t2 = Date.now();
      sh('ip', ['addr', 'del', '198.18.61.2/32', 'dev', pb]);
      await until(
        'the peer without the address: cannot be verified',
        async () => /cannot be verified/.test((await status('peer')).backendStatus[1]?.message ?? ''),
        20_000,
      );
      t.diagnostic(`cannot be verified ${Date.now() - t2} ms after the peer's host gave the address up`);
      const u = await status('peer');
      assert.equal(u.state, RuleState.RULE_STATE_DEGRADED, u.message);
      assert.match(
        u.backendStatus[1].message,
        new RegExp(`the veth peer ${pb} of ${pa} has MAC ${old}, but no address 198\\.18\\.61\\.2 is held there`),
      );
      const ur = u.conditions.find((x) => x.type === 'BackendsReceiving')!;
      assert.equal(ur.status, ConditionStatus.CONDITION_STATUS_UNKNOWN);
      await c.rules.deleteRule({ name: 'peer', expectedGeneration: 0n });
    } finally {
      sh('ip', ['link', 'del', pa]);
    }
  });

  it('a confirmed static MAC whose host gives its address up: confirmed no more after the hold (not ACTIVE with 0 delivered)', async (t) => {
    // A review: a backend renumbered (a container restarted with another address on the same
    // veth) stayed ACTIVE / AllReceiving for good, 0 of 50 delivered: the confirmation once had was never
    // withdrawn when its host stopped answering.
    await c.rules.createRule({ rule: rule('renum', 7994, [backendOf(b1), backendOf(b2)]) });
    await until('both static MACs confirmed', async () => {
      const st = await status('renum');
      return st.state === RuleState.RULE_STATE_ACTIVE && st.backendStatus.every((b) => b.message === '');
    });
    const t0 = Date.now();
    topo.exec('b2', 'ip', ['addr', 'del', `${b2.ip}/24`, 'dev', 'eth0']);
    topo.exec('b2', 'ip', ['addr', 'add', '198.18.2.20/24', 'dev', 'eth0']);
    try {
      await until(
        'b2 cannot be verified',
        async () => /cannot be verified/.test((await status('renum')).backendStatus[1]?.message ?? ''),
        30_000,
      );
      t.diagnostic(`"cannot be verified" ${Date.now() - t0} ms after b2 gave its address up`);
      const st = await status('renum');
      assert.equal(st.state, RuleState.RULE_STATE_DEGRADED, st.message);
      assert.match(st.backendStatus[1].message, new RegExp(`^static MAC ${b2.mac} cannot be verified: `));
      const br = st.conditions.find((x) => x.type === 'BackendsReceiving')!;
      assert.deepEqual([br.status, br.reason], [ConditionStatus.CONDITION_STATUS_UNKNOWN, 'BackendsUnverified']);
      assert.equal(st.backendStatus[0].message, '', 'b1 still confirmed');
    } finally {
      topo.exec('b2', 'ip', ['addr', 'del', '198.18.2.20/24', 'dev', 'eth0']);
      topo.exec('b2', 'ip', ['addr', 'add', `${b2.ip}/24`, 'dev', 'eth0']);
    }
    await until(
      'b2 confirmed again',
      async () => (await status('renum')).state === RuleState.RULE_STATE_ACTIVE,
      20_000,
    );
    await c.rules.deleteRule({ name: 'renum', expectedGeneration: 0n });
  });

  it('a static MAC that nothing confirms: cannot be verified, the rule DEGRADED (not ACTIVE), health NOT_SERVING', async () => {
    // Nobody has 198.18.2.9: no ARP answer, no neighbour entry to compare with. Before: the backend's message
    // said "cannot be verified" while the rule was ACTIVE, BackendsReceiving True and health SERVING, 0 of
    // 200 delivered (the review's 0/50). Whether it receives cannot be verified: DEGRADED (proto RuleState),
    // as a MAC-less backend whose MAC nothing confirmed. The static MAC is the one of b1's eth0 (the veth
    // peer, read in b1's namespace): the peer takes the frames, but its host does not hold 198.18.2.9, so the
    // peer confirms nothing (another MAC there would contradict it).
    const mac = b1.mac;
    const created = await c.rules.createRule({
      rule: rule('ghost', 7992, [{ ip: '198.18.2.9', mac, interface: b1.hostIf }]),
    });
    // The reply judges it as a read does: not confirmed yet (DEGRADED: nothing says it receives); "cannot be
    // verified" once the first ARP answers had time to come (UNVERIFIED_GRACE_MS), not the moment after the change.
    const first = created.rule!.status!;
    assert.equal(first.state, RuleState.RULE_STATE_DEGRADED, first.message);
    assert.match(first.backendStatus[0].message, new RegExp(`^static MAC ${mac} not confirmed yet: `));
    await until(
      'cannot be verified',
      async () => /cannot be verified/.test((await status('ghost')).backendStatus[0]?.message ?? ''),
      10_000,
    );
    const st = await status('ghost');
    const b = st.backendStatus[0];
    const why = `^static MAC ${mac} cannot be verified: no resolved neighbour entry for 198\\.18\\.2\\.9 on ${b1.hostIf}`;
    assert.match(b.message, new RegExp(why));
    assert.match(
      b.message,
      new RegExp(`the veth peer eth0 of ${b1.hostIf} has MAC ${mac}, but no address 198\\.18\\.2\\.9`),
    );
    assert.equal(b.active, true, 'kept in the table: nothing contradicts it');
    assert.equal(st.state, RuleState.RULE_STATE_DEGRADED, st.message);
    assert.match(
      st.message,
      /1 cannot be verified \(198\.18\.2\.9@\S+: static MAC that nothing on the host confirms\)/,
    );
    const br = st.conditions.find((x) => x.type === 'BackendsReceiving')!;
    assert.deepEqual([br.status, br.reason], [ConditionStatus.CONDITION_STATUS_UNKNOWN, 'BackendsUnverified']);
    assert.match(br.message, new RegExp(`198\\.18\\.2\\.9@${b1.hostIf}: static MAC ${mac} cannot be verified`));
    assert.equal(st.conditions.find((x) => x.type === 'Ready')!.status, ConditionStatus.CONDITION_STATUS_FALSE);
    await until('health NOT_SERVING', async () => (await health('xdpctl.datapath')) === NOT_SERVING, 5000);
    assert.equal(await health(''), SERVING, 'the daemon itself serves');
    assert.equal(await metric(d.prometheus!, 'xdpctl_rules', { xdpctl_rule_state: 'degraded' }), 1);
    assert.equal(await metric(d.prometheus!, 'xdpctl_rules', { xdpctl_rule_state: 'active' }), 0);
    assert.ok((await metric(d.prometheus!, 'xdpctl_datapath_problems', {}))! >= 1, 'counted as a problem');
    // A write's reply says what a read says (an update of its labels: the verdict is kept).
    const cur = (await c.rules.getRule({ name: 'ghost' })).rule!;
    const upd = await c.rules.updateRule({
      rule: { ...cur, labels: { touched: '1' } },
      expectedGeneration: cur.generation,
    });
    assert.equal(upd.rule!.status!.state, RuleState.RULE_STATE_DEGRADED, upd.rule!.status!.message);
    assert.match(upd.rule!.status!.backendStatus[0].message, new RegExp(why));
    // The command line says it.
    const cli = execFileSync(CLI, ['--server', d.unix, 'rules', 'get', 'ghost'], { encoding: 'utf8' });
    assert.match(cli, /DEGRADED/, cli);
    assert.match(cli, /static MAC .* cannot be verified/, cli);
    // What the status says it cannot verify: nothing reaches a host that is not there.
    const r = await send(7992);
    assert.equal(r.total, 0, `0 of ${r.sent} delivered (${r.got})`);
    // Each of its two states logged once: not confirmed yet (from the change on), then cannot be verified.
    assert.equal(
      count(
        /"msg":"rule ghost is DEGRADED: .*1 not confirmed yet \(.*static MAC that nothing on the host confirms yet\)/,
      ),
      1,
      'logged once',
    );
    assert.equal(
      count(/"msg":"rule ghost is DEGRADED: .*1 cannot be verified \(.*static MAC that nothing on the host confirms\)/),
      1,
      'logged once',
    );
    await c.rules.deleteRule({ name: 'ghost', expectedGeneration: 0n });
    sh('ip', ['neigh', 'flush', 'dev', b1.hostIf]);
    await until('health SERVING without it', async () => (await health('xdpctl.datapath')) === SERVING, 5000);
  });
});
