/**
 * A log file the disk refuses does not kill the daemon (a newcomer's review, finding 1): xdpctld's stdout and stderr
 * are files, as a supervisor's `StandardOutput=file:` or a shell's `>>` makes them, and their writes are refused:
 *  - the disk is full (ENOSPC): a 64 KiB tmpfs holding both files, filled by the test;
 *  - the file size limit (EFBIG): the daemon runs under `prlimit --fsize` and the test makes the file that size.
 * Meanwhile every CreateRule and Health/Check answers; the lines are dropped and counted
 * (xdpctl_log_lines_dropped_total, audit records apart, and xdpctl_log_write_errors_total by errno), GetStatus
 * log_write_problem says why; once the file takes lines again (the disk emptied, the file truncated), one log line
 * says how many were dropped, from when to when and why (the same number as the counter), stderr says it is
 * written again, GetStatus no longer has a problem, the lines after are whole JSON, and SIGTERM stops the daemon
 * with exit code 0. Every line of the file is one JSON object: the line a refusal cut short (part of it fitted in the
 * tmpfs page's slack, or below the size limit) is taken back out, with stdout opened O_APPEND (`>>`) or not (`>`:
 * the offset set back too, no hole of NUL bytes), and xdpctl_log_lines_cut_total stays 0. Before: the cut part
 * stayed, a fragment that is not JSON.
 * Before: the first refused write on stderr (the notice about stdout's) was an unhandled 'error': the daemon died
 * (exit 1) with its pins left as they were; with stderr elsewhere, stdout took no line ever again.
 */
import assert from 'node:assert/strict';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { appendFileSync, closeSync, mkdirSync, openSync, readSync, rmSync, statSync } from 'node:fs';
import { after, before, describe, it, type TestContext } from 'node:test';

import { createChannel, createClient, type Channel } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonServiceDefinition } from '../../src/gen/xdpctl/v1/daemon.js';
import { RuleServiceDefinition } from '../../src/gen/xdpctl/v1/rule.js';
import { fileLogLines, fileText, promSample, startFileLoggedDaemon, xdpctl } from '../helpers/daemon.js';
import { emptyDisk, fillDisk, kernelOnly, runId, sh, until, within } from '../helpers/env.js';
import { backendOf, udpRule } from '../helpers/lab.js';
import { Topology, type Host } from '../helpers/topology.js';

describe('a log file whose writes are refused', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const disk = `/tmp/xdpctl-test-${id}-logdisk`;
  const dir = `/tmp/xdpctl-test-${id}-log`;
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  const stateDir = `/tmp/xdpctl-test-${id}-state`;
  const sock = `/tmp/xdpctl-test-${id}.sock`;
  /** The client host and the backend of the rules of the running test (each test its own: a stopped daemon's XDP stays). */
  let vm: Host, b1: Host;
  let daemon: ChildProcess | undefined;
  let channel: Channel | undefined;

  const kill = async () => {
    channel?.close();
    channel = undefined;
    if (daemon && daemon.exitCode === null && daemon.signalCode === null) {
      const gone = new Promise((r) => daemon!.once('exit', r));
      daemon.kill('SIGKILL');
      await gone;
    }
    daemon = undefined;
    XdpDatapath.unpinAll(pinRoot);
    for (const p of [stateDir, sock, `${sock}.lock`]) rmSync(p, { recursive: true, force: true });
  };

  /** The tmpfs off `disk`, if it is mounted there (lazily: a daemon still holding a file on it must not keep it). */
  const unmount = () => {
    while (spawnSync('mountpoint', ['-q', disk]).status === 0) sh('umount', ['-l', disk]);
  };

  before(() => {
    mkdirSync(disk, { recursive: true });
    mkdirSync(dir, { recursive: true });
  });
  after(async () => {
    await kill();
    unmount();
    for (const p of [disk, dir]) rmSync(p, { recursive: true, force: true });
    topo.destroy();
  });

  /**
   * xdpctld with stdout appended to `out` and stderr to `err` (`wrap` execs it: prlimit; `redirect` '>': opened without
   * O_APPEND); waits for its 'ready' line.
   */
  const start = async (out: string, err: string, wrap: string[] = [], redirect: '>>' | '>' = '>>') => {
    const d = await startFileLoggedDaemon({ out, err, redirect, wrap, sock, pinRoot, stateDir });
    daemon = d.child;
    const { exit, prometheus } = d;
    channel = createChannel(`unix://${sock}`);
    return {
      exit,
      prometheus,
      rules: createClient(RuleServiceDefinition, channel),
      health: createClient(HealthDefinition, channel),
      status: createClient(DaemonServiceDefinition, channel),
    };
  };
  const text = fileText;
  const tail = (f: string) => text(f).slice(-2000);
  const lines = fileLogLines;

  /**
   * Every line of `f` from byte `from` on (the whole file: 0) is one JSON object, and the file ends with a newline: no
   * part of a line cut short by a refused write stays (nor a hole of NUL bytes where one was).
   */
  const wholeJson = (t: TestContext, f: string, from = 0) => {
    const fd = openSync(f, 'r');
    const size = statSync(f).size;
    const buf = Buffer.alloc(size - from);
    try {
      readSync(fd, buf, 0, buf.length, from);
    } finally {
      closeSync(fd);
    }
    const all = buf.toString('utf8');
    const bad = all
      .split('\n')
      .slice(0, -1)
      .filter((l) => {
        try {
          return typeof JSON.parse(l) !== 'object';
        } catch {
          return true;
        }
      });
    t.diagnostic(`${f} from ${from}: ${all.split('\n').length - 1} lines, ${bad.length} not JSON`);
    assert.deepEqual(
      bad.map((l) => JSON.stringify(l.length > 300 ? `${l.slice(0, 150)}...${l.slice(-150)}` : l)),
      [],
      'every line is one JSON object',
    );
    assert.ok(
      all === '' || all.endsWith('\n'),
      `the file ends with a whole line: ...${JSON.stringify(all.slice(-200))}`,
    );
  };

  /** Rule creations and health checks while the file refuses writes: each answers within 2 s. */
  const busy = async (t: TestContext, d: Awaited<ReturnType<typeof start>>, from: number, n: number) => {
    for (let i = from; i < from + n; i++) {
      for (const [what, p] of [
        [`CreateRule ${i}`, d.rules.createRule({ rule: udpRule(`lw${i}`, 7000 + i, [vm.hostIf], [backendOf(b1)]) })],
        [`Health/Check after rule ${i}`, d.health.check({ service: '' })],
      ] as const) {
        const late = `${what}: no answer within 2 s`;
        assert.notEqual(await within(p as Promise<unknown>, 2000, late), late, `${what}; alive: ${daemon?.exitCode}`);
      }
    }
    t.diagnostic(`${n} CreateRule + Health/Check answered`);
  };
  /** Lines dropped (log and audit) and those refused with `code`, from one scrape. */
  const counts = async (prom: string, code: string) => {
    const text = await (await fetch(`http://${prom}/metrics`)).text();
    const kind = (k: string) => promSample(text, 'xdpctl_log_lines_dropped_total', { xdpctl_log_kind: k }) ?? NaN;
    return {
      dropped: kind('log') + kind('audit'),
      audit: kind('audit'),
      cut: promSample(text, 'xdpctl_log_lines_cut_total') ?? NaN,
      refused: promSample(text, 'xdpctl_log_write_errors_total', { xdpctl_log_error: code }) ?? NaN,
    };
  };

  /** The file takes lines again: the summary line, stderr's notice, GetStatus clear, whole lines after, exit 0. */
  const recovers = async (
    t: TestContext,
    d: Awaited<ReturnType<typeof start>>,
    out: string,
    err: string,
    cause: RegExp,
    code: string,
    from: number,
  ) => {
    // One more change: its lines are written, and before them the summary of what was dropped.
    await busy(t, d, 100, 1);
    const summary = () =>
      lines(out).filter((l) => /log line\(s\) .*were dropped from .* to .*: stdout refused them/.test(l.msg ?? ''));
    await until(
      () => `no drop summary: ${tail(out)}`,
      () => summary().length > 0,
      5000,
    );
    const s = summary();
    t.diagnostic(`summary: ${s[0].msg}`);
    assert.equal(s.length, 1, JSON.stringify(s));
    assert.equal(s[0].level, 40);
    assert.match(s[0].msg!, cause);
    const n = await counts(d.prometheus, code);
    assert.equal(s[0].dropped, n.dropped, 'the summary and the counter agree');
    assert.equal(s[0].droppedAudit, n.audit);
    assert.equal(n.refused, n.dropped, `every dropped line was refused with ${code}`);
    assert.match(
      text(err),
      /xdpctld: stdout is written again: \d+ log line\(s\) \(\d+ audit record\(s\)\) were dropped/,
    );
    assert.equal((await d.status.getStatus({})).logWriteProblem, undefined, 'GetStatus: no problem any more');
    // Everything written since the file took lines again is whole JSON (a line cut short before is ended by a
    // newline first): the summary and the CreateRule's audit record among it.
    const all = text(out);
    if (from > 0 && all[from - 1] !== '\n') assert.equal(all[from], '\n', 'a line cut short is ended before the next');
    const rest = all
      .slice(from)
      .split('\n')
      .filter((l) => l !== '');
    for (const l of rest) JSON.parse(l);
    // The summary is the first line written once the file takes lines again (README), before any other.
    assert.equal((JSON.parse(rest[0]) as { msg?: string }).msg, s[0].msg, `the first line written: ${rest[0]}`);
    assert.ok(
      rest.some((l) => l.includes('"audit":true') && l.includes('lw100')),
      'the audit record of the change',
    );
    assert.equal(
      (await d.rules.listRules({})).rules.length,
      21,
      'every change was made: the log lost lines, not the daemon',
    );
    // SIGTERM: an orderly stop.
    daemon!.kill('SIGTERM');
    const exitCode = await within(d.exit, 30_000, 'still running 30 s after SIGTERM');
    assert.equal(exitCode, 0, `${tail(out)} ${tail(err)}`);
  };

  /** The refusal as the daemon says it while it lasts: metrics, GetStatus; the daemon alive. */
  const refusing = async (t: TestContext, d: Awaited<ReturnType<typeof start>>, cause: RegExp, code: string) => {
    const p = (await d.status.getStatus({})).logWriteProblem;
    const { refused: errors, audit, dropped } = await counts(d.prometheus, code);
    t.diagnostic(
      `refused: ${errors} lines (${audit} audit records) ${code}; GetStatus: ${JSON.stringify(p, (_, v) => (typeof v === 'bigint' ? Number(v) : v))}`,
    );
    assert.ok(errors > 0, `lines refused with ${code} are counted: ${errors}`);
    assert.ok(audit > 0, 'audit records apart');
    assert.equal(errors, dropped, 'every dropped line was refused');
    assert.equal((await counts(d.prometheus, code)).cut, 0, 'no cut line left in the file');
    assert.ok(p, 'GetStatus says the log refuses writes');
    assert.equal(p.sink, 'stdout');
    assert.equal(p.code, code);
    assert.match(p.cause, cause);
    assert.ok(Number(p.linesDropped) > 0 && Number(p.linesDropped) <= errors, String(p.linesDropped));
    const cli = await xdpctl(`unix:${sock}`, ['status']);
    assert.equal(cli.code, 0, cli.stderr);
    assert.match(cli.stdout, /^log: +stdout cannot be written: .*\(since \S+\); \d+ line\(s\) dropped$/m);
    assert.ok(cli.stdout.includes(p.cause), cli.stdout);
    assert.equal(daemon!.exitCode, null, 'the daemon runs');
  };

  for (const [redirect, n] of [
    ['>>', 1],
    ['>', 5],
  ] as const)
    it(`on a full disk (ENOSPC), stdout ${redirect}: keeps serving, counts and says it, says when the disk takes lines again, every line whole`, async (t) => {
      sh('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'tmpfs', disk]);
      const out = `${disk}/xdpctld.log`;
      const err = `${disk}/xdpctld.err`;
      vm = topo.addHost(`vm${n}`, `198.18.${n}.1/24`);
      b1 = topo.addHost(`b${n}`, `198.18.${n + 1}.1/24`);
      try {
        const d = await start(out, err, [], redirect);
        sh('ip', ['link', 'set', b1.hostIf, 'down']); // every rule INACTIVE: more lines per change
        fillDisk(disk);
        await busy(t, d, 0, 20);
        await refusing(t, d, /^the disk is full \(ENOSPC\)$/, 'ENOSPC');
        const size = statSync(out).size;
        emptyDisk(disk);
        await recovers(t, d, out, err, /stdout refused them \(the disk is full \(ENOSPC\)\)/, 'ENOSPC', size);
        wholeJson(t, out);
      } finally {
        await kill();
        unmount();
      }
    });

  it('past the file size limit (EFBIG): keeps serving, names the limit, and says when the file takes lines again', async (t) => {
    vm = topo.addHost('vm2', '198.18.3.1/24');
    b1 = topo.addHost('b2', '198.18.4.1/24');
    const out = `${dir}/xdpctld.log`;
    const err = `${dir}/xdpctld.err`;
    // 64 MiB: far beyond what the state store writes in this test, so that only the log reaches it.
    const limit = 64 * 1024 * 1024;
    try {
      const d = await start(out, err, ['prlimit', `--fsize=${limit}`, '--']);
      // The log file gets 40 bytes short of the limit (a JSON line of padding: the test's own writes are not limited),
      // so that the next line is cut short by it; stderr reaches it (a sparse file).
      const pad = (n: number) => `{"pad":"${'x'.repeat(n - 11)}"}\n`;
      let before = 0;
      for (let i = 0; ; i++) {
        before = statSync(out).size;
        appendFileSync(out, pad(limit - 40 - before));
        if (statSync(out).size === limit - 40) break;
        // A line of the daemon's came in between: the padding out again (the daemon appends), and once more.
        assert.ok(i < 20, 'the log file never got still');
        sh('truncate', ['-s', String(before), out]);
      }
      sh('truncate', ['-s', String(limit), err]);
      await busy(t, d, 0, 20);
      const cause = new RegExp(`^the file size limit \\(RLIMIT_FSIZE ${limit} bytes\\) is reached \\(EFBIG\\)$`);
      await refusing(t, d, cause, 'EFBIG');
      wholeJson(t, out, before);
      assert.ok(statSync(out).size < limit, 'the cut line is not in the file');
      // Rotated as logrotate's copytruncate does: the file is empty again.
      // stderr first: the notice that stdout is written again goes there as soon as stdout takes a line.
      sh('truncate', ['-s', '0', err]);
      sh('truncate', ['-s', '0', out]);
      await recovers(
        t,
        d,
        out,
        err,
        /stdout refused them \(the file size limit \(RLIMIT_FSIZE \d+ bytes\) is reached \(EFBIG\)\)/,
        'EFBIG',
        0,
      );
    } finally {
      await kill();
    }
  });
});
