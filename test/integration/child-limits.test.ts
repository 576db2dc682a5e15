/**
 * The daemon's child processes (`ethtool`, `ip`, `nsenter` under `setpriv`) that cannot be started or do not
 * answer, with real namespaces, veths and datagrams:
 *  - under a pids limit (a cgroup whose pids.max is the daemon's task count: every fork refused, EAGAIN, as a
 *    pod's pids limit or systemd's TasksMax does) a check that cannot be made is "cannot be verified": both
 *    backends stay in the table and forward (before: both taken out as "cannot receive", 0 of 100 delivered),
 *    and a restart under the same limit keeps the forwarding entries (before: zeroed backend MACs written over
 *    them, "kernel entries differed ... rewritten", 0 delivered);
 *  - a child that is stopped (SIGSTOP: as one in D state on a wedged driver) is killed at its deadline and its
 *    check "cannot be verified: ... did not answer within 5 s"; while the pass waits for it the daemon says so
 *    (GetStatus warnings, xdpctl.datapath, the problems gauge, xdpctl_reconciler_last_pass_age), and a
 *    host change made meanwhile is taken in (before: the pass waited for ever, statuses as they were).
 * The cgroup is made and removed by the test (the daemon moved back out first); stopped children are continued
 * and everything is removed even on failure.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';
import { DaemonProcess, metric } from '../helpers/daemon.js';
import { kernelOnly, sh, sleep, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

/** The pids controller's hierarchy: cgroup v2 (/sys/fs/cgroup with pids in cgroup.controllers) or v1's pids. */
function pidsRoot(): string | undefined {
  const v2 = '/sys/fs/cgroup';
  try {
    if (readFileSync(`${v2}/cgroup.controllers`, 'utf8').split(/\s+/).includes('pids')) return v2;
  } catch {
    // not v2 at /sys/fs/cgroup
  }
  return existsSync('/sys/fs/cgroup/pids/cgroup.procs') ? '/sys/fs/cgroup/pids' : undefined;
}

const tasks = (pid: number) => readdirSync(`/proc/${pid}/task`).length;
/** The daemon's children now (every thread's children file). */
const childrenOf = (pid: number): number[] => {
  const out: number[] = [];
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      for (const c of readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').split(/\s+/)) if (c) out.push(+c);
    } catch {
      // the thread ended
    }
  }
  return out;
};

describe('child processes that cannot start or do not answer', kernelOnly(), () => {
  const lab = new Lab();
  const { id, status } = lab;
  const root = pidsRoot();
  const cg = root && `${root}/xdpctl-test-${id}`;
  let vm: Host, b1: Host, b2: Host;
  const port = 7731;

  /** Move `pid` back to the root cgroup of the pids hierarchy (idempotent). */
  const release = (pid: number | undefined) => {
    if (!root || pid === undefined) return;
    try {
      writeFileSync(`${root}/cgroup.procs`, String(pid));
    } catch {
      // gone
    }
  };
  const removeCgroup = () => {
    if (!cg || !existsSync(cg)) return;
    for (const p of readFileSync(`${cg}/cgroup.procs`, 'utf8').split('\n').filter(Boolean)) release(+p);
    rmdirSync(cg);
  };
  /** A cgroup that lets `max` tasks run (its pids.max). */
  const limitTo = (max: number) => {
    if (!existsSync(cg!)) mkdirSync(cg!);
    writeFileSync(`${cg}/pids.max`, String(max));
  };

  before(async () => {
    ({ vm, b1, b2 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', b2: '198.18.3.1/24' }));
    lab.onDestroy(removeCgroup);
    await lab.start(['--log-level', 'info', '--xdp-mode', 'native']);
    await lab.c.rules.createRule({ rule: lab.rule('web', port, [backendOf(b1), backendOf(b2)]) });
    await until('web ACTIVE', async () => (await status('web')).state === RuleState.RULE_STATE_ACTIVE, 10_000);
  });
  after(async () => {
    release(lab.d?.child.pid);
    await lab.destroy();
    removeCgroup();
  });

  /** 100 datagrams over 50 flows: what b1 and b2 received. */
  const traffic = async () => (await lab.send(port, [b1, b2], 100, 50)).got;

  it(
    'under a pids limit: "cannot be verified", both backends kept and forwarding',
    { skip: !root && 'no pids cgroup' },
    async (t) => {
      const pid = lab.d!.child.pid!;
      const [g1, g2] = await traffic();
      assert.equal(g1 + g2, 100, `before the limit: ${g1} + ${g2}`);
      assert.ok(g1 > 0 && g2 > 0, `both receive before: ${g1} + ${g2}`);
      limitTo(tasks(pid));
      writeFileSync(`${cg}/cgroup.procs`, String(pid));
      try {
        // A check of each backend's egress starts ethtool (at the latest when the 30 s a verified veth is trusted
        // end): refused by the limit, it cannot be verified.
        await until(
          'both backends checked under the limit (a spawn refused)',
          async () => {
            const st = await status('web');
            return st.backendStatus.every((b) => /cannot check .*EAGAIN/.test(b.message));
          },
          45_000,
        );
        const st = await status('web');
        t.diagnostic(`under the limit: ${RuleState[st.state]}: ${st.message}`);
        assert.equal(st.state, RuleState.RULE_STATE_DEGRADED, st.message);
        for (const b of st.backendStatus) assert.match(b.message, /^cannot be verified: cannot check /, b.message);
        assert.deepEqual(
          st.backendStatus.map((b) => b.active),
          [true, true],
          `both kept in the table: ${JSON.stringify(st.backendStatus)}`,
        );
        assert.match(st.backendStatus[0].message, /spawn \S*setpriv EAGAIN: a pids limit\?/);
        assert.match(st.message, /could not be checked .*EAGAIN.*kept in the table/);
        assert.doesNotMatch(JSON.stringify(st), /taken out|cannot receive/);
        const [u1, u2] = await traffic();
        t.diagnostic(`under the limit: b1 ${u1} + b2 ${u2} of 100`);
        assert.equal(u1 + u2, 100, `delivered under the limit: ${u1} + ${u2}`);
        assert.ok(u1 > 0 && u2 > 0, `both still receive: ${u1} + ${u2}`);
        assert.notEqual((await status('web')).state, RuleState.RULE_STATE_INACTIVE);
        assert.equal(lab.count(/cannot receive|taken out of the table until it can receive/), 0);
      } finally {
        release(pid);
      }
      await until(
        'web ACTIVE once children start again',
        async () => (await status('web')).state === RuleState.RULE_STATE_ACTIVE,
        45_000,
      );
    },
  );

  it(
    'a restart under a pids limit keeps the forwarding entries (no zeroed MAC written)',
    { skip: !root && 'no pids cgroup' },
    async (t) => {
      const limit = tasks(lab.d!.child.pid!);
      await lab.d!.stop();
      const [s1, s2] = await traffic();
      assert.equal(s1 + s2, 100, `forwarding while the daemon is stopped: ${s1} + ${s2}`);
      limitTo(limit);
      // The daemon started inside the cgroup (a shell that moves itself in, then execs it).
      const d = await DaemonProcess.start(id, ['--log-level', 'info', '--xdp-mode', 'native'], {}, [
        'sh',
        '-c',
        `echo $$ > ${cg}/cgroup.procs && exec "$@"`,
        'sh',
      ]);
      lab.d = d;
      lab.c = d.clients();
      try {
        await sleep(3000);
        const log = d.output;
        t.diagnostic(
          `tasks limit ${limit}; first refusal: ${/"msg":"[^"]*EAGAIN[^"]*"/.exec(log)?.[0] ?? log.split('\n').find((l) => /EAGAIN/.test(l))}`,
        );
        assert.doesNotMatch(log, /desired 00:00:00:00:00:00/, 'no zero MAC written over a forwarding one');
        assert.doesNotMatch(log, /kernel entries differed from the stored state/);
        const [u1, u2] = await traffic();
        t.diagnostic(`after a start under the limit: b1 ${u1} + b2 ${u2} of 100`);
        assert.equal(u1 + u2, 100, `delivered after the start: ${u1} + ${u2}`);
        assert.ok(u1 > 0 && u2 > 0, `both receive: ${u1} + ${u2}`);
        const st = await status('web');
        assert.notEqual(st.state, RuleState.RULE_STATE_INACTIVE, st.message);
        assert.deepEqual(
          st.backendStatus.map((b) => b.active),
          [true, true],
          JSON.stringify(st.backendStatus),
        );
      } finally {
        release(d.child.pid);
      }
      await until(
        'web ACTIVE once children start again',
        async () => (await status('web')).state === RuleState.RULE_STATE_ACTIVE,
        45_000,
      );
    },
  );

  it('a stopped child: killed at its deadline, the overdue pass said, host changes taken in', async (t) => {
    // A daemon that says a pass is overdue after 3 s (10 s by default); children keep their 5 s deadline.
    await lab.d!.stop();
    const { d } = await lab.start(['--log-level', 'info', '--xdp-mode', 'native', '--prometheus', '127.0.0.1:0'], {
      XDPCTL_PASS_OVERDUE_MS: '3000',
    });
    await until('web ACTIVE', async () => (await status('web')).state === RuleState.RULE_STATE_ACTIVE, 10_000);
    const pid = d.child.pid!;
    // Every child the daemon starts from now on is stopped (its `ip monitor` keeps running).
    const running = new Set(childrenOf(pid));
    const daemonComm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    const stopped = new Set<number>();
    let stopping = true;
    const stopper = (async () => {
      while (stopping) {
        for (const c of childrenOf(pid)) {
          if (running.has(c) || stopped.has(c)) continue;
          // Only once it runs its command: a child stopped between fork and exec holds the daemon's spawn call
          // itself (libuv waits for the exec), which no deadline of the daemon's can end; a wedged `ethtool` is
          // one that runs.
          let comm = '';
          try {
            comm = readFileSync(`/proc/${c}/comm`, 'utf8').trim();
          } catch {
            continue;
          }
          if (comm === daemonComm) continue;
          try {
            process.kill(c, 'SIGSTOP');
            stopped.add(c);
          } catch {
            // ended already
          }
        }
        await sleep(20);
      }
    })();
    const cont = () => {
      for (const c of stopped) {
        try {
          process.kill(c, 'SIGCONT');
        } catch {
          // killed at its deadline
        }
      }
    };
    try {
      await until('a child stopped', async () => stopped.size > 0, 15_000);
      const t0 = Date.now();
      // While the pass waits: GetStatus says so, xdpctl.datapath is NOT_SERVING, the gauges too.
      await until(
        'the overdue pass in GetStatus',
        async () =>
          ((await lab.c.daemon.getStatus({})).datapath?.warnings ?? []).some((w) =>
            /the reconciler's pass has not ended for \d+ s/.test(w),
          ),
        8000,
      );
      t.diagnostic(`overdue said ${Date.now() - t0} ms after the first stop`);
      assert.equal(await lab.health(), HealthCheckResponse_ServingStatus.NOT_SERVING);
      const age = await metric(d.prometheus!, 'xdpctl_reconciler_last_pass_age', {});
      assert.ok(age !== undefined && age >= 3, `last pass age ${age}`);
      // Killed at its deadline: the check it made cannot be verified, said with the command.
      await until('a deadline said', async () => /did not answer within 5 s \(killed\)/.test(d.output), 15_000);
      t.diagnostic(`deadline said ${Date.now() - t0} ms after the first stop`);
      // Logged once per overdue pass (each pass waits for a child at a time here), not at every second's tick.
      const said = lab.count(/the reconciler's pass has not ended for/);
      assert.ok(said <= lab.count(/the reconciler's overdue pass ended/) + 1, `overdue logged ${said} times`);
      // A host change made while children are stopped is taken in (each pass bounded by its children's deadlines).
      sh('ip', ['link', 'set', b2.hostIf, 'down']);
      const t1 = Date.now();
      await until(
        'b2 down taken in',
        async () => (await status('web')).backendStatus.some((b) => /is down/.test(b.message)),
        30_000,
      );
      t.diagnostic(`b2 down taken in ${Date.now() - t1} ms after, with every new child stopped`);
    } finally {
      stopping = false;
      await stopper;
      cont();
      sh('ip', ['link', 'set', b2.hostIf, 'up']);
    }
    await until('web ACTIVE again', async () => (await status('web')).state === RuleState.RULE_STATE_ACTIVE, 45_000);
    assert.ok(lab.count(/the reconciler's overdue pass ended/) >= 1);
    void vm;
  });
});
