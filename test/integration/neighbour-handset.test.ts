/**
 * Facts the daemon cannot check are not reported as good (docs/architecture.md, "observe, don't assume"), with real
 * namespaces, veths and datagrams:
 *  - a backend given without a MAC whose neighbour entry was set by hand (PERMANENT) with a wrong MAC: the
 *    kernel never confirms such an entry (no probe, no timeout), and the MAC never answers an ARP probe of
 *    ours, so the status says the MAC is not confirmed, naming the entry, never "MAC resolved from the
 *    neighbour table" (0 of 20 delivered, which is what such a MAC may do). Whether such a backend receives is
 *    not known, so its rule is DEGRADED (Ready False, BackendsReceiving Unknown), the xdpctl.datapath health
 *    NOT_SERVING and the metrics count it, logged once, as for a veth peer that cannot be inspected
 *    (egress-unverifiable.test.ts). The right MAC set by hand answers our probe: "resolved" (20 of 20), ACTIVE
 *    and SERVING (a review found it said "cannot be verified" though the daemon could ask); an entry the kernel
 *    resolves itself (ARP) stays so.
 *  - a backend whose MAC answered a probe of ours, when another tool writes a wrong MAC into its entry as
 *    REACHABLE (docs/architecture.md, promises 1 and 2): the wrong MAC is probed, never written; the answered MAC keeps
 *    delivering (6 s of traffic at 100/s across the window: 600 of 600; was 302 and 296 of 600, ~3 s lost until
 *    the probe failed and the broadcast request found the host's MAC) and the status says which MAC is kept and
 *    why;
 *  - a real change (the host takes a new MAC and announces it by a gratuitous ARP; the old MAC no longer
 *    answers) is still followed within 1 s: written once the host answered a probe of the new MAC (99-330 ms
 *    seen; 60-106 ms when it was written unanswered).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { metric, type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { backendOf, esc, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const { SERVING, NOT_SERVING } = HealthCheckResponse_ServingStatus;

describe('neighbour entries set by hand or written by another tool: confirmed only by an answer', kernelOnly(), () => {
  const lab = new Lab();
  const { status, health, count, rule, stream, dropEntry } = lab;
  let d: DaemonProcess;
  let c: Clients;
  let b1: Host, b2: Host;

  before(async () => {
    ({ b1, b2 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', b2: '198.18.2.2/24' }));
    ({ d, c } = await lab.start(['--log-level', 'info', '--prometheus', '127.0.0.1:0']));
  });
  after(() => lab.destroy());

  /** Send `n` datagrams from vm to the port over 10 flows; how many b1 and b2 received. */
  const send = (port: number, n = 20) => lab.send(port, [b1, b2], n, 10);

  it('a MAC from a PERMANENT neighbour entry is confirmed only by an ARP probe of ours: wrong, not confirmed; right, resolved', async () => {
    const wrong = lab.mac('77');
    lab.writeEntry(b1, wrong, 'permanent');
    try {
      await c.rules.createRule({ rule: rule('perm', 7984, [backendOf(b1, '')]) });
      const message = async () => (await status('perm')).backendStatus[0]?.message ?? '';
      await until('not confirmed', async () => /not confirmed yet: the neighbour entry/.test(await message()), 5000);
      const st = await status('perm');
      assert.equal(st.backendStatus[0].mac, wrong, 'the MAC written is the entry’s (nothing else was ever known)');
      assert.match(
        st.backendStatus[0].message,
        new RegExp(
          `^MAC ${wrong} not confirmed yet: the neighbour entry for ${b1.ip!.replace(/\./g, '\\.')} on ` +
            `${b1.hostIf} was set by hand \\(PERMANENT\\), which the kernel never confirms \\(no ARP probe, no ` +
            'timeout\\), and no ARP probe of ours to it has been answered \\(probing it\\)',
        ),
      );
      const fit = st.conditions.find((x) => x.type === 'BackendsReceiving')!;
      assert.deepEqual([fit.status, fit.reason], [ConditionStatus.CONDITION_STATUS_UNKNOWN, 'BackendsUnverified']);
      // Whether it receives cannot be verified: DEGRADED (proto RuleState), not ACTIVE.
      assert.equal(st.state, RuleState.RULE_STATE_DEGRADED, st.message);
      assert.match(st.message, /1 not confirmed yet \(.*\(PERMANENT\): MAC from a neighbour entry set by hand/);
      assert.equal(st.conditions.find((x) => x.type === 'Ready')!.status, ConditionStatus.CONDITION_STATUS_FALSE);
      await until('health NOT_SERVING', async () => (await health()) === NOT_SERVING, 5000);
      assert.equal(await metric(d.prometheus!, 'xdpctl_rules', { xdpctl_rule_state: 'degraded' }), 1);
      assert.equal(await metric(d.prometheus!, 'xdpctl_rules', { xdpctl_rule_state: 'active' }), 0);
      assert.ok((await metric(d.prometheus!, 'xdpctl_datapath_problems', {}))! >= 1, 'counted as a problem');
      const r = await send(7984);
      assert.equal(r.got[0], 0, `what a wrong MAC does: 0 of ${r.sent} delivered`);
      assert.equal((d.output.match(/"msg":"backend [^"]* not confirmed yet: the neighbour entry/g) ?? []).length, 1);
      assert.equal(count(/"msg":"rule perm is DEGRADED: .*MAC from a neighbour entry set by hand/), 1, 'logged once');
      assert.doesNotMatch(
        d.output,
        /cannot be verified: the neighbour entry/,
        'it was asked: not "cannot be verified"',
      );

      // The right MAC, still set by hand: it answers an ARP probe of ours, which confirms it as any other.
      lab.writeEntry(b1, b1.mac, 'permanent');
      await until('the new MAC in use', async () => (await status('perm')).backendStatus[0]?.mac === b1.mac, 5000);
      await until(
        'confirmed by an answer',
        async () => (await message()) === 'MAC resolved from the neighbour table',
        5000,
      );
      const r2 = await send(7984);
      assert.equal(r2.got[0], r2.sent, `the right MAC: ${r2.got[0]} of ${r2.sent} delivered`);
      assert.equal((await status('perm')).state, RuleState.RULE_STATE_ACTIVE, 'confirmed by an answer of the host');
      await until('health SERVING', async () => (await health()) === SERVING, 5000);
      assert.equal(count(/"msg":"rule perm is ACTIVE/), 1, 'the way back logged once');
    } finally {
      shQuiet('ip', ['neigh', 'del', b1.ip!, 'dev', b1.hostIf]);
    }
    // An entry the kernel resolves (ARP answered by the host): "resolved from the neighbour table" too.
    await until(
      'resolved from the neighbour table',
      async () => (await status('perm')).backendStatus[0]?.message === 'MAC resolved from the neighbour table',
      10_000,
    );
    const r3 = await send(7984);
    assert.equal(r3.got[0], r3.sent);
    assert.equal((await status('perm')).state, RuleState.RULE_STATE_ACTIVE);
    await until('health SERVING', async () => (await health()) === SERVING, 5000);
    assert.equal(await metric(d.prometheus!, 'xdpctl_datapath_problems', {}), 0);
    await c.rules.deleteRule({ name: 'perm', expectedGeneration: 0n });
  });

  it('a wrong entry written as REACHABLE is not taken for an answer: not "resolved", no static MAC "contradicted"', async () => {
    const wrong = lab.mac('78');
    await c.rules.createRule({ rule: rule('learned', 7985, [backendOf(b1, '')]) });
    await c.rules.createRule({ rule: rule('fixed', 7986, [backendOf(b1)]) });
    await until(
      'resolved by an answer',
      async () => (await status('learned')).backendStatus[0]?.message === 'MAC resolved from the neighbour table',
      10_000,
    );
    const from = d.output.length;
    const t0 = Date.now();
    lab.writeEntry(b1, wrong, 'reachable');
    // Watched every 100 ms until the right MAC is back: the status never claims what no answer showed.
    const claims: string[] = [];
    let backAt = 0;
    try {
      for (let n = 0; Date.now() - t0 < 12_000; n++) {
        const [l, f] = [await status('learned'), await status('fixed')];
        const lb = l.backendStatus[0];
        if (lb?.mac === wrong && /resolved/.test(lb.message)) claims.push(`learned: ${lb.message}`);
        if (!f.backendStatus[0]?.active || /contradicted/.test(f.backendStatus[0]?.message ?? ''))
          claims.push(`fixed: ${f.backendStatus[0]?.message}`);
        if (n > 5 && lb?.mac === b1.mac && lb.active && lb.message === 'MAC resolved from the neighbour table') {
          backAt = Date.now();
          break;
        }
        await sleep(100);
      }
    } finally {
      // Still the wrong one (the test failed): removed, so that the kernel resolves the right one.
      dropEntry(b1, wrong);
    }
    assert.deepEqual(claims, [], 'nothing claimed beyond what was observed');
    assert.ok(backAt > 0, 'the right MAC back, answered');
    console.log(`# the wrong REACHABLE entry replaced by the answered MAC after ${backAt - t0} ms`);
    assert.doesNotMatch(d.output.slice(from), /static MAC contradicted/);
    const r = await send(7986);
    assert.equal(r.got[0], r.sent, `the correct static MAC kept its backend: ${r.got[0]} of ${r.sent}`);
    const r2 = await send(7985);
    assert.equal(r2.got[0], r2.sent, `the learned one delivers again: ${r2.got[0]} of ${r2.sent}`);
    await c.rules.deleteRule({ name: 'learned', expectedGeneration: 0n });
    await c.rules.deleteRule({ name: 'fixed', expectedGeneration: 0n });
  });

  const events = async (e: string) =>
    (await metric(d.prometheus!, 'xdpctl_reconciler_events_total', { xdpctl_event: e })) ?? 0;

  it('a changed entry whose MAC no probe of ours answered is not written: the answered MAC keeps delivering', async () => {
    const wrong = lab.mac('79');
    await c.rules.createRule({ rule: rule('kept', 7987, [backendOf(b1, '')]) });
    await until(
      'resolved by an answer',
      async () => (await status('kept')).backendStatus[0]?.message === 'MAC resolved from the neighbour table',
      10_000,
    );
    const [held0, changes0] = [await events('neighbour_changes_held'), await events('neighbour_mac_changes')];
    const from = d.output.length;
    // 6 s of traffic; after 0.5 s another tool writes a wrong MAC as REACHABLE (which looks freshly confirmed).
    const received = await stream(b1, 7987, 6);
    await sleep(500);
    const t0 = Date.now();
    lab.writeEntry(b1, wrong, 'reachable');
    const written: string[] = [];
    const messages = new Set<string>();
    let backAt = 0;
    try {
      while (Date.now() - t0 < 12_000) {
        const st = await status('kept');
        const b = st.backendStatus[0];
        if (b.mac !== b1.mac || !b.active) written.push(`${b.mac} active=${b.active}: ${b.message}`);
        if (st.state !== RuleState.RULE_STATE_ACTIVE) written.push(`state ${st.state}: ${st.message}`);
        messages.add(b.message);
        if (messages.size > 1 && b.message === 'MAC resolved from the neighbour table') {
          backAt = Date.now();
          break;
        }
        await sleep(100);
      }
    } finally {
      dropEntry(b1, wrong);
    }
    const r = await received();
    console.log(
      `# wrong REACHABLE entry over an answered MAC: ${r.got} of ${r.sent} delivered over 6 s; the entry's own ` +
        `MAC answered again after ${backAt - t0} ms`,
    );
    assert.deepEqual(written, [], 'the answered MAC stays written, the rule ACTIVE, throughout');
    assert.equal(r.got, r.sent, `delivered throughout: ${r.got} of ${r.sent}`);
    assert.ok(backAt > 0, 'the entry answered from the kept MAC again');
    assert.ok(
      [...messages].some((m) =>
        new RegExp(
          `^MAC ${b1.mac} kept \\(it answered an ARP probe of ours\\): the neighbour entry now holds ${wrong}, `,
        ).test(m),
      ),
      [...messages].join(' | '),
    );
    const log = d.output.slice(from);
    const lines = (re: RegExp) => log.split('\n').filter((l) => re.test(l)).length;
    const who = `backend ${esc(b1.ip!)} on ${b1.hostIf}`;
    assert.equal(lines(new RegExp(`"msg":"${who}: its neighbour entry changed from ${b1.mac} to ${wrong}`)), 1);
    assert.equal(
      lines(
        new RegExp(
          `"msg":"${who}: ${b1.mac} answered an ARP probe of ours again after \\d+ ms \\(${wrong} did not\\): kept`,
        ),
      ),
      1,
    );
    assert.equal(lines(/has a new MAC/), 0, 'no MAC rewritten');
    assert.equal(lines(/re-applying rules/), 0, 'nothing re-applied');
    assert.equal(await events('neighbour_changes_held'), held0 + 1);
    assert.equal(await events('neighbour_mac_changes'), changes0);
    await c.rules.deleteRule({ name: 'kept', expectedGeneration: 0n });
  });

  it('a real MAC change (the old MAC stops answering; the host announces the new one) is followed within 1 s', async () => {
    const newMac = lab.mac('7a');
    await c.rules.createRule({ rule: rule('moved', 7988, [backendOf(b2, '')]) });
    await until(
      'resolved by an answer',
      async () => (await status('moved')).backendStatus[0]?.message === 'MAC resolved from the neighbour table',
      10_000,
    );
    const oldMac = b2.mac;
    const changes0 = await events('neighbour_mac_changes');
    const from = d.output.length;
    // The host sends a gratuitous ARP when its address changes (arp_notify): the kernel's entry takes the new
    // MAC (STALE), which no probe of ours has answered yet.
    sh('ip', ['netns', 'exec', b2.netns, 'sysctl', '-qw', 'net.ipv4.conf.eth0.arp_notify=1']);
    const received = await stream(b2, 7988, 4);
    await sleep(1000);
    const t0 = Date.now();
    sh('ip', ['-n', b2.netns, 'link', 'set', 'eth0', 'address', newMac]);
    b2.mac = newMac;
    let followed = 0;
    while (Date.now() - t0 < 5000) {
      if ((await status('moved')).backendStatus[0]?.mac === newMac) {
        followed = Date.now() - t0;
        break;
      }
      await sleep(20);
    }
    const r = await received();
    const lost = r.sent - r.got;
    console.log(
      `# a real MAC change announced by the host: followed in ${followed} ms; ${r.got} of ${r.sent} delivered ` +
        `(${lost} lost at 100/s: ~${lost * 10} ms)`,
    );
    assert.ok(followed > 0 && followed <= 1000, `the new MAC written within 1 s (${followed} ms)`);
    assert.ok(lost <= 100, `at most 1 s of traffic lost: ${lost} of ${r.sent}`);
    assert.match(sh('ip', ['neigh', 'show', b2.ip!, 'dev', b2.hostIf]), new RegExp(`lladdr ${newMac}`));
    await until(
      'answered: resolved',
      async () => (await status('moved')).backendStatus[0]?.message === 'MAC resolved from the neighbour table',
      5000,
    );
    assert.equal((await status('moved')).state, RuleState.RULE_STATE_ACTIVE);
    const log = d.output.slice(from);
    const lines = (s: string) => log.split('\n').filter((l) => l.includes(s)).length;
    assert.equal(
      lines(
        `"msg":"backend ${b2.ip!} on ${b2.hostIf} has a new MAC, ${oldMac} -> ${newMac} (neighbour table): rewritten"`,
      ),
      1,
    );
    // Written once the host answered from it (the old MAC, which no longer answers, kept until then).
    const who = `"msg":"backend ${b2.ip!} on ${b2.hostIf}: `;
    assert.equal(lines(`${who}its neighbour entry changed from ${oldMac} to ${newMac}, which no ARP probe`), 1);
    assert.equal(
      log
        .split('\n')
        .filter((l) =>
          new RegExp(`${who}${newMac} answered an ARP probe of ours after \\d+ ms: written instead of ${oldMac}"`).test(
            l,
          ),
        ).length,
      1,
    );
    assert.equal(await events('neighbour_mac_changes'), changes0 + 1);
    const r2 = await (await stream(b2, 7988, 1))();
    assert.equal(r2.got, r2.sent, `the new MAC delivers: ${r2.got} of ${r2.sent}`);
    await c.rules.deleteRule({ name: 'moved', expectedGeneration: 0n });
  });
});
