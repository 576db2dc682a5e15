/**
 * A log reader that stops reading does not freeze the daemon (eleventh review, finding 8): xdpctld's stdout is
 * a FIFO whose reader (`cat`, SIGSTOPped after the 'ready' line: a stalled log driver or sidecar) holds it open
 * and reads nothing. 60 rule creations at --log-level debug (far more than the FIFO's 64 KiB and
 * --log-buffer-bytes 16384) each answer within 2 s, and so do Health/Check and a Prometheus scrape between
 * them; the lines beyond the bound are dropped and counted (xdpctl_log_lines_dropped_total, audit records
 * apart), the stall is said once on stderr naming stdout; once the reader reads again every line it gets is
 * whole JSON and one log line says how many were dropped, from when to when (the same number as the counter).
 * Stalled again, SIGTERM stops the daemon within its usual time, and stderr says what was left unwritten.
 * Before: the 26th call or so waited forever (the synchronous log write sat on the full pipe), Health/Check too.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { createChannel, createClient, type Channel } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { RuleServiceDefinition } from '../../src/gen/xdpctl/v1/rule.js';
import { metric, spawnRedirectedDaemon } from '../helpers/daemon.js';
import { kernelOnly, runId, sh, sleep, until, within } from '../helpers/env.js';
import { backendOf, udpRule } from '../helpers/lab.js';
import { Topology, type Host } from '../helpers/topology.js';

type Line = { msg?: string; level?: number; [k: string]: unknown };

describe('a log reader that stops reading', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const dir = `/tmp/xdpctl-test-${id}-log`;
  const fifo = `${dir}/stdout.fifo`;
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  const stateDir = `/tmp/xdpctl-test-${id}-state`;
  const sock = `/tmp/xdpctl-test-${id}.sock`;
  let vm: Host, b1: Host;
  let reader: ChildProcess | undefined;
  let daemon: ChildProcess | undefined;
  let channel: Channel | undefined;

  before(() => {
    mkdirSync(dir, { recursive: true });
    sh('mkfifo', [fifo]);
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
  });
  after(async () => {
    channel?.close();
    // The reader first gets SIGKILL, then SIGCONT (a stopped process takes SIGKILL all the same; CONT for certainty).
    if (reader && reader.exitCode === null && reader.signalCode === null) {
      reader.kill('SIGKILL');
      reader.kill('SIGCONT');
    }
    if (daemon && daemon.exitCode === null && daemon.signalCode === null) {
      const gone = new Promise((r) => daemon!.once('exit', r));
      daemon.kill('SIGKILL');
      await gone;
    }
    XdpDatapath.unpinAll(pinRoot);
    for (const p of [stateDir, dir, sock, `${sock}.lock`]) rmSync(p, { recursive: true, force: true });
    topo.destroy();
  });

  /** Rule creations: their log lines are ~4 times the FIFO's 64 KiB and --log-buffer-bytes together. */
  const N = 100;
  const state = (pid: number) => readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '')[0];

  it('the daemon answers within 2 s while stdout is not read, counts what it drops, says it, and stops on SIGTERM', async (t) => {
    // The reader opens the FIFO first; the shell opens it for writing (blocking, as a shell's > does) and execs.
    let got = '';
    reader = spawn('cat', [fifo], { stdio: ['ignore', 'pipe', 'ignore'] });
    reader.stdout!.on('data', (d) => (got += d));
    let err = '';
    daemon = spawnRedirectedDaemon({
      script: 'exec "$@" > "$0"',
      shArgs: [fifo],
      sock,
      pinRoot,
      stateDir,
      extra: ['--log-buffer-bytes', '16384'],
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    daemon.stderr!.on('data', (d) => (err += d));
    const lines = () =>
      got
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Line); // a torn or interleaved line fails here
    await until(
      () => `no ready line: ${got.slice(-2000)} ${err}`,
      () => lines().some((l) => l.msg === 'ready'),
      20_000,
    );
    const prometheus = lines().find((l) => l.msg === 'ready')!.prometheus as string;
    // From here on nothing reads the FIFO.
    reader.kill('SIGSTOP');
    await until('the reader stopped', () => state(reader!.pid!) === 'T', 2000);
    const readBefore = got.length;

    channel = createChannel(`unix://${sock}`);
    const rules = createClient(RuleServiceDefinition, channel);
    const health = createClient(HealthDefinition, channel);
    const timely = async <T>(what: string, p: Promise<T>) => {
      const t0 = Date.now();
      const r = await within(p, 2000, `${what}: no answer within 2 s`);
      assert.notEqual(r, `${what}: no answer within 2 s`, `${what}; stderr: ${err}`);
      return Date.now() - t0;
    };
    // The backends' egress is down: each rule is INACTIVE, and each change logs the datapath's problems (one
    // per rule not ACTIVE) as the daemon does on a host where an egress is down.
    sh('ip', ['link', 'set', b1.hostIf, 'down']);
    let slowest = 0;
    for (let i = 0; i < N; i++) {
      slowest = Math.max(
        slowest,
        await timely(
          `CreateRule ${i}`,
          rules.createRule({ rule: udpRule(`log${i}`, 7000 + i, [vm.hostIf], [backendOf(b1)]) }),
        ),
        await timely(`Health/Check after rule ${i}`, health.check({ service: '' })),
      );
      if (i % 10 === 9)
        slowest = Math.max(slowest, await timely('a scrape', metric(prometheus, 'xdpctl_log_bytes_waiting', {})));
    }
    t.diagnostic(`${N} CreateRule + Health/Check with stdout not read: slowest answer ${slowest} ms`);
    assert.equal(got.length, readBefore, 'nothing was read meanwhile');
    const dropped = async () =>
      ((await metric(prometheus, 'xdpctl_log_lines_dropped_total', { xdpctl_log_kind: 'log' })) ?? NaN) +
      ((await metric(prometheus, 'xdpctl_log_lines_dropped_total', { xdpctl_log_kind: 'audit' })) ?? NaN);
    const droppedWhileStalled = await dropped();
    const auditDropped = await metric(prometheus, 'xdpctl_log_lines_dropped_total', { xdpctl_log_kind: 'audit' });
    const waiting = await metric(prometheus, 'xdpctl_log_bytes_waiting', {});
    t.diagnostic(
      `while stalled: ${droppedWhileStalled} lines dropped (${auditDropped} audit records), ${waiting} bytes waiting`,
    );
    assert.ok(droppedWhileStalled > 0, `lines were dropped and counted: ${droppedWhileStalled}`);
    assert.ok(auditDropped! > 0, 'audit records are counted apart');
    assert.ok(waiting! > 0 && waiting! <= 16384 + 65536, `bounded backlog: ${waiting}`);
    const stallNotices = err.match(/xdpctld: stdout takes no more log lines: .*is its reader stalled\?/g) ?? [];
    assert.equal(stallNotices.length, 1, `one line on stderr when dropping starts: ${err}`);

    // The reader reads again: the backlog arrives whole, then one line says what was dropped.
    reader.kill('SIGCONT');
    const summaries = () =>
      lines().filter((l) => /log line\(s\) .*were dropped from .* to .*stdout took no more/.test(l.msg ?? ''));
    await until(
      () => `no drop summary: ${got.slice(-3000)}`,
      () => summaries().length > 0,
      5000,
    );
    const s = summaries();
    t.diagnostic(`read after the stall: ${got.length - readBefore} bytes, ${lines().length} lines in all`);
    assert.equal(s.length, 1, JSON.stringify(s));
    assert.equal(s[0].level, 40);
    assert.equal(s[0].dropped, await dropped(), 'the summary and the counter agree');
    assert.equal(s[0].droppedAudit, auditDropped);
    assert.ok(Date.parse(s[0].from as string) <= Date.parse(s[0].to as string));
    await until(
      () => `stderr does not say it is read again: ${err}`,
      () => /xdpctld: stdout is read again: \d+ log line\(s\) \(\d+ audit record\(s\)\) were dropped from /.test(err),
      2000,
    );
    // Every rule was created (the log lost lines, the daemon lost nothing).
    assert.equal((await rules.listRules({})).rules.length, N);

    // Stalled again, then SIGTERM: the daemon stops within its usual time.
    const before = await dropped();
    reader.kill('SIGSTOP');
    await until('the reader stopped', () => state(reader!.pid!) === 'T', 2000);
    // The egress flaps: each flip changes the state of every rule, a log line each.
    let flips = 0;
    for (; flips < 12 && (await dropped()) <= before; flips++) {
      const i = flips;
      sh('ip', ['link', 'set', b1.hostIf, i % 2 === 0 ? 'up' : 'down']);
      for (let j = 0; j < 3; j++) {
        await timely(`Health/Check with the egress ${i % 2 === 0 ? 'up' : 'down'}`, health.check({ service: '' }));
        await sleep(500);
      }
    }
    t.diagnostic(`stalled again: ${(await dropped()) - before} lines dropped after ${flips} flips of the egress`);
    assert.ok((await dropped()) > before, 'dropping again');
    const exited = new Promise<number | null>((r) => daemon!.once('exit', (code) => r(code)));
    const t0 = Date.now();
    daemon.kill('SIGTERM');
    const code = await within(exited, 30_000, 'still running 30 s after SIGTERM');
    const took = Date.now() - t0;
    t.diagnostic(`SIGTERM with stdout not read: exit ${code} after ${took} ms`);
    assert.equal(code, 0, err);
    // The orderly stop with nothing to flush takes ~1 s here; the log flush adds at most 1 s without progress.
    assert.ok(took < 5000, `took ${took} ms`);
    assert.match(err, /xdpctld: exiting with \d+ log line\(s\).* not written: stdout took nothing for \d+ ms/);
    await sleep(10);
  });
});
