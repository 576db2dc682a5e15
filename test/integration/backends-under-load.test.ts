/**
 * Backends that answer every ARP request, the daemon under load: its process stopped and continued again and
 * again (SIGSTOP/SIGCONT: its event loop stalls 0.2-1.5 s, the kernel meanwhile queues the answers on its
 * socket) while a CPU hog runs pinned to the daemon's CPU (taskset). They must never be reported as not
 * answering: no rule leaves ACTIVE, no backend says "not confirmed" or "cannot be verified", nothing is logged
 * as DEGRADED. Static-MAC backends (confirmed by the kernel's entries and our probes) and MAC-less ones (each
 * MAC asked by an ARP request of ours once a second, a silent one dropped at once: the verdict the daemon's own
 * lag could fake) on real namespaces and veths. Unit arp-lag drives the prober's judgement itself (a window the
 * loop did not watch is "cannot tell", an answer dated by its arrival).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { after, before, describe, it } from 'node:test';

import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, sleep, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

/** How long the daemon is stalled and loaded (ms). */
const LOAD_MS = 20_000;

describe('backends that answer ARP, the daemon under load', kernelOnly(), () => {
  const lab = new Lab();
  const { status, rule } = lab;
  let d: DaemonProcess;
  let c: Clients;
  let b1: Host, b2: Host, b3: Host;
  let hog: ChildProcess | undefined;

  before(async () => {
    ({ b1, b2, b3 } = lab.addHosts({
      vm: '198.18.1.1/24',
      b1: '198.18.2.1/24',
      b2: '198.18.2.2/24',
      b3: '198.18.2.3/24',
    }));
    ({ d, c } = await lab.start(['--log-level', 'info']));
    lab.onDestroy(() => {
      hog?.kill('SIGKILL');
      if (d.child.exitCode === null) d.child.kill('SIGCONT');
    });
  });
  after(() => lab.destroy());

  it('never reports them unanswered while its loop stalls and a CPU hog shares its CPU', async (t) => {
    // 15 more addresses of b3's, each a MAC-less backend: 16 MACs asked once a second.
    const many = Array.from({ length: 15 }, (_, k) => ({ ip: `198.18.2.${100 + k}`, mac: '', interface: b3.hostIf }));
    for (const m of many) lab.topo.exec('b3', 'ip', ['addr', 'add', `${m.ip}/24`, 'dev', 'eth0']);
    await c.rules.createRule({ rule: rule('st', 7991, [backendOf(b1), backendOf(b2)]) });
    await c.rules.createRule({ rule: rule('dy', 7992, [backendOf(b3, ''), ...many]) });
    const healthy = async () => {
      const out: string[] = [];
      for (const name of ['st', 'dy']) {
        const s = await status(name);
        if (s.state !== RuleState.RULE_STATE_ACTIVE) out.push(`${name} ${s.state}: ${s.message}`);
        for (const b of s.backendStatus) {
          if (b.message !== '' && b.message !== 'MAC resolved from the neighbour table') {
            out.push(`${name} ${b.ip}: ${b.message}`);
          }
        }
      }
      return out;
    };
    await until(
      async () => `first ACTIVE: ${(await healthy()).join('; ')}`,
      async () => !(await healthy()).length,
      30_000,
    );
    const pid = d.child.pid!;
    const cpu = sh('taskset', ['-p', '-c', String(pid)])
      .trim()
      .split(':')
      .pop()!
      .trim()
      .split(/[,-]/)[0];
    sh('taskset', ['-a', '-p', '-c', cpu, String(pid)]);
    hog = spawn('taskset', ['-c', cpu, 'sh', '-c', 'while :; do :; done'], { stdio: 'ignore' });
    const from = d.output.length;
    const bad: string[] = [];
    let stalls = 0;
    const t0 = Date.now();
    try {
      for (let i = 0; Date.now() - t0 < LOAD_MS; i++) {
        process.kill(pid, 'SIGSTOP');
        await sleep(200 + ((i * 397) % 1300));
        process.kill(pid, 'SIGCONT');
        stalls++;
        await sleep(100 + ((i * 131) % 700));
        bad.push(...(await healthy()));
      }
    } finally {
      process.kill(pid, 'SIGCONT');
      hog.kill('SIGKILL');
    }
    const degraded = d
      .logLines(from)
      .filter((l) => /is DEGRADED|is INACTIVE|not confirmed|cannot be verified/.test(l.msg));
    t.diagnostic(`${stalls} stalls in ${Date.now() - t0} ms beside a CPU hog on CPU ${cpu}; ${bad.length} bad reads`);
    assert.deepEqual(bad, [], 'never reported as not answering');
    assert.deepEqual(
      degraded.map((l) => l.msg),
      [],
      'nothing logged as degraded',
    );
  });
});
