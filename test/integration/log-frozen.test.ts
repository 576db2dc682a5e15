/**
 * A log FILE whose disk stops completing writes (fsfreeze on a small ext4 on a loop device, as store-frozen.test.ts)
 * never holds the event loop: xdpctld's stdout is appended to a file there (`>>`, as systemd StandardOutput=file:),
 * its state and stderr elsewhere. While frozen: Health/Check, ListRules and GetStatus answer within 1 s, changes are
 * made and told OK (the log is not their durability), lines beyond the pipe and --log-buffer-bytes are dropped and
 * counted, GetStatus says the log is not being written (ETIMEDOUT, not answering). Thawed: one line says how many
 * were dropped (the counter's number), every line of the file is JSON. Frozen again: SIGTERM ends the daemon within
 * a few seconds (exit 0); thawed, the writer writes what it held and exits. Before: the first log line after the
 * freeze held the event loop (writeSync) until the thaw: no answer at all, and SIGTERM did nothing.
 */
import assert from 'node:assert/strict';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { createChannel, createClient, type Channel } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonServiceDefinition } from '../../src/gen/xdpctl/v1/daemon.js';
import { RuleServiceDefinition } from '../../src/gen/xdpctl/v1/rule.js';
import { fileLogLines, fileText, promSample, startFileLoggedDaemon } from '../helpers/daemon.js';
import { alive, kernelOnly, runId, until, within } from '../helpers/env.js';
import { FrozenDisk } from '../helpers/frozen-disk.js';
import { backendOf, udpRule } from '../helpers/lab.js';
import { Topology, type Host } from '../helpers/topology.js';

describe('a log file on a frozen disk', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const dir = `/tmp/xdpctl-test-${id}-logfrz`;
  const img = `/tmp/xdpctl-test-${id}-logfrz.img`;
  const out = `${dir}/xdpctld.log`;
  const err = `/tmp/xdpctl-test-${id}-logfrz.err`;
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  const stateDir = `/tmp/xdpctl-test-${id}-state`;
  const sock = `/tmp/xdpctl-test-${id}.sock`;
  let daemon: ChildProcess | undefined;
  let channel: Channel | undefined;
  const disk = new FrozenDisk(dir, img, undefined);
  let vm: Host, b1: Host;
  const freeze = () => disk.freeze();
  const thaw = () => disk.thaw();
  const text = fileText;
  const tail = (f: string) => text(f).slice(-2000);
  const lines = fileLogLines;
  /** The writer processes of the daemon (children of its pid), found before it exits. */
  const writerPid = () => {
    const r = spawnSync('pgrep', ['-P', String(daemon!.pid)], { encoding: 'utf8' });
    return r.stdout
      .split('\n')
      .filter((l) => l !== '')
      .map(Number);
  };
  let writers: number[] = [];

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    disk.mount();
  });
  after(async () => {
    thaw();
    channel?.close();
    if (daemon && daemon.exitCode === null && daemon.signalCode === null) {
      const gone = new Promise((r) => daemon!.once('exit', r));
      daemon.kill('SIGKILL');
      await gone;
    }
    // The writer ends at EOF once thawed; should it not, it is ours to end.
    await until('writer gone', () => writers.every((p) => !alive(p)), 10_000).catch(() => {
      for (const p of writers) if (alive(p)) process.kill(p, 'SIGKILL');
    });
    XdpDatapath.unpinAll(pinRoot);
    for (const p of [stateDir, sock, `${sock}.lock`, err]) rmSync(p, { recursive: true, force: true });
    disk.remove();
    rmSync(dir, { recursive: true, force: true });
    topo.destroy();
  });

  it('frozen: answers within 1 s, changes OK, lines dropped and counted, GetStatus says so; thawed: summary, JSON; SIGTERM frozen: exits', async (t) => {
    const d = await startFileLoggedDaemon({ out, err, sock, pinRoot, stateDir, extra: ['--log-buffer-bytes', '4096'] });
    daemon = d.child;
    const { exit, prometheus: prom } = d;
    channel = createChannel(`unix://${sock}`);
    const rules = createClient(RuleServiceDefinition, channel);
    const health = createClient(HealthDefinition, channel);
    const status = createClient(DaemonServiceDefinition, channel);
    writers = writerPid();
    const soon = <T>(p: Promise<T>, what: string, ms = 1000) =>
      within(p, ms, `${what}: no answer within ${ms} ms`).then((r) => {
        assert.notEqual(r, `${what}: no answer within ${ms} ms`, `${what}; err: ${tail(err)}`);
        return r as T;
      });
    const dropped = async () => {
      const m = await soon(
        fetch(`http://${prom}/metrics`).then((r) => r.text()),
        '/metrics',
      );
      return (
        (promSample(m, 'xdpctl_log_lines_dropped_total', { xdpctl_log_kind: 'log' }) ?? 0) +
        (promSample(m, 'xdpctl_log_lines_dropped_total', { xdpctl_log_kind: 'audit' }) ?? 0)
      );
    };
    const rule = (i: number) => udpRule(`lf${i}`, 7000 + (i % 50), [vm.hostIf], [backendOf(b1)]);

    freeze();
    await soon(health.check({ service: '' }), 'Health/Check');
    await soon(rules.listRules({}), 'ListRules');
    await soon(status.getStatus({}), 'GetStatus');
    // Changes while frozen: each told OK; enough lines to fill the pipe and the buffer (lines dropped).
    let i = 0;
    for (; i < 600 && (await dropped()) === 0; i++) {
      await soon(rules.createRule({ rule: rule(i) }), `CreateRule ${i}`, 3000);
      await soon(rules.deleteRule({ name: `lf${i}` }), `DeleteRule ${i}`, 3000);
    }
    const n = await dropped();
    t.diagnostic(`frozen: ${i} changes made, ${n} lines dropped`);
    assert.ok(n > 0, 'lines dropped and counted');
    await soon(rules.createRule({ rule: rule(1000) }), 'CreateRule after drops', 3000);
    await until(
      'GetStatus: the log is not being written',
      async () => (await soon(status.getStatus({}), 'GetStatus')).logWriteProblem?.code === 'ETIMEDOUT',
      15_000,
    );
    const p = (await status.getStatus({})).logWriteProblem!;
    t.diagnostic(`GetStatus while frozen: ${p.code} ${p.cause} dropped ${p.linesDropped}`);
    assert.match(p.cause, /did not complete a write in 5 s \(not answering\)/);
    assert.ok(Number(p.linesDropped) > 0, 'GetStatus: lines dropped since');
    await soon(health.check({ service: '' }), 'Health/Check');

    thaw();
    await soon(rules.deleteRule({ name: 'lf1000' }), 'DeleteRule after thaw', 3000);
    const summary = () =>
      lines(out).filter((l) => /log line\(s\) .*were dropped from .* to .*: stdout/.test(l.msg ?? ''));
    await until(
      () => `no drop summary: ${tail(out)}`,
      () => summary().length > 0,
      10_000,
    );
    const s = summary()[0];
    t.diagnostic(`summary: ${s.msg}`);
    assert.equal(s.dropped, await dropped(), 'the summary and the counter agree');
    assert.equal(s.level, 40);
    // What was measured (the writer handled nothing while the event loop was free), not a guess.
    assert.match(
      s.msg!,
      /waited for the log writer process\): the log writer process has taken nothing for [\d.]+ m?s although the event loop was free to write/,
    );
    assert.match(text(err), /xdpctld: stdout takes no more log lines: .*is stdout's disk not completing writes/);
    await until(
      'GetStatus clear after the thaw',
      async () => (await status.getStatus({})).logWriteProblem === undefined,
      10_000,
    );
    for (const l of text(out).split('\n').slice(0, -1)) JSON.parse(l);

    // Frozen again: SIGTERM ends the daemon within a few seconds.
    freeze();
    await soon(rules.createRule({ rule: rule(2000) }), 'CreateRule frozen again', 3000);
    const t0 = Date.now();
    daemon.kill('SIGTERM');
    const code = await within(exit, 10_000, 'still running 10 s after SIGTERM (frozen log disk)');
    t.diagnostic(`SIGTERM while frozen: exit ${code} after ${Date.now() - t0} ms`);
    assert.equal(code, 0, tail(err));
    thaw();
    await until('the log writer exits after the thaw', () => writers.every((pid) => !alive(pid)), 15_000);
    for (const l of text(out).split('\n').slice(0, -1)) JSON.parse(l);
    assert.ok(text(out).endsWith('\n'));
    assert.ok(
      lines(out).some((l) => JSON.stringify(l).includes('lf2000')),
      'the held lines written after the thaw',
    );
  });
});
