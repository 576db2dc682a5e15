/**
 * Local denial of service: an unprivileged local user opens many loopback
 * TCP connections that never send an HTTP/2 preface (from several loopback
 * source addresses). The daemon closes them after the preface timeout, holds
 * at most --max-connections-per-peer per loopback uid (not per address: every
 * local user shares 127.0.0.1, and root must keep it) and --max-connections
 * per listener, logs the refusals at a bounded rate, and the admin keeps both
 * loopback TCP and the Unix socket; file descriptors and memory come back
 * afterwards.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { DaemonProcess } from '../helpers/daemon.js';
import { CLI, kernelOnly, ROOT, runId, sleep } from '../helpers/env.js';
import { PYTHON } from '../helpers/python-client.js';

const fds = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;
const rssMb = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;

describe('connection bounds (local denial of service)', kernelOnly(), () => {
  const id = runId();
  let d: DaemonProcess;
  before(async () => {
    d = await DaemonProcess.start(`cg${id}`, [
      '--max-connections-per-peer',
      '20',
      '--max-connections',
      '60',
      '--preface-timeout-seconds',
      '2',
    ]);
  });
  after(async () => {
    await d?.destroy();
  });

  /** Run flood.py as `uid`: COUNT silent connections to the TCP listener, held up to HOLD s, from SOURCES loopback addresses. */
  function flood(uid: number, count: number, hold: number, sources: number) {
    const port = d.tcp.slice(d.tcp.lastIndexOf(':') + 1);
    const child = spawn(
      'setpriv',
      [
        `--reuid=${uid}`,
        `--regid=${uid}`,
        '--clear-groups',
        '--',
        PYTHON,
        '-',
        port,
        String(count),
        String(hold),
        String(sources),
      ],
      { stdio: ['pipe', 'pipe', 'pipe'], cwd: '/' },
    );
    child.stdin.end(readFileSync(`${ROOT}test/clients/flood.py`));
    let out = '';
    child.stdout.on('data', (x) => (out += x));
    return new Promise<{ opened: number; closed: number; open_at_end: number; closed_within_1s: number }>((r) =>
      child.on('close', () => r(JSON.parse(out || '{}'))),
    );
  }

  it('silent connections are closed after the preface timeout, bounded per loopback uid; root keeps 127.0.0.1 and the admin the Unix socket', async () => {
    const pid = d.child.pid!;
    const fdsBefore = fds(pid);
    const rssBefore = rssMb(pid);
    const from = d.output.length;
    // 400 connections as nobody, 100 from 127.0.0.1 then from 10 loopback addresses in turn; held up to 6 s.
    const done = flood(65534, 400, 6, 10);
    await sleep(1000);
    // Mid-flood: nobody holds at most its 20 (per uid, whatever loopback address it binds), and root
    // still gets in over loopback TCP (it used to share 127.0.0.1's quota with nobody) and the Unix socket.
    const held = fds(pid) - fdsBefore;
    assert.ok(held <= 20 + 5, `the daemon holds ${held} more descriptors during the flood (nobody's bound: 20)`);
    for (const server of [d.tcp, d.unix]) {
      const admin = spawnSync(CLI, ['--server', server, '--timeout', '5s', 'status'], { encoding: 'utf8' });
      assert.equal(admin.status, 0, `${server}: ${admin.stderr}`);
      assert.match(admin.stdout, /serving:\s+yes/);
    }
    const r = await done;
    assert.equal(r.opened, 400, JSON.stringify(r));
    assert.equal(r.open_at_end, 0, `every silent connection was closed by the daemon: ${JSON.stringify(r)}`);
    assert.ok(r.closed_within_1s >= 400 - 20, `those over the bound were refused at once: ${JSON.stringify(r)}`);
    await sleep(300);
    const log = d.output.slice(from);
    assert.match(log, /connection refused: uid 65534 \(loopback\) already has 20 connections/);
    assert.doesNotMatch(log, /connection refused: uid 0 /, 'root was never refused');
    assert.match(log, /connection closed: no HTTP\/2 preface and SETTINGS in time/);
    const lines = log.split('\n').filter((l) => l.includes('"msg":"connection '));
    assert.ok(lines.length <= 3 * 5, `${lines.length} log lines for ~400 refusals (at most 5 per kind per 10 s)`);
    assert.ok(fds(pid) - fdsBefore <= 3, `descriptors back: ${fdsBefore} -> ${fds(pid)}`);
    assert.ok(rssMb(pid) - rssBefore < 64, `RSS ${rssBefore.toFixed(0)} -> ${rssMb(pid).toFixed(0)} MB`);
  });

  it('the listener holds at most --max-connections, from several local uids at once', async () => {
    const pid = d.child.pid!;
    const fdsBefore = fds(pid);
    // Four uids, 40 connections each: each is bounded at 20, and the listener at 60 in all.
    const floods = [65534, 65533, 65532, 65531].map((uid) => flood(uid, 40, 4, 1));
    await sleep(1500);
    const held = fds(pid) - fdsBefore;
    assert.ok(held <= 60 + 5, `the daemon holds ${held} more descriptors (bound 60)`);
    const results = await Promise.all(floods);
    for (const r of results) assert.equal(r.open_at_end, 0, JSON.stringify(r));
    const refusedAtOnce = results.reduce((n, r) => n + r.closed_within_1s, 0);
    assert.ok(refusedAtOnce >= 160 - 60, `${refusedAtOnce} of 160 refused at once: ${JSON.stringify(results)}`);
    // And the TCP listener serves again.
    const tcp = spawnSync(CLI, ['--server', d.tcp, '--timeout', '5s', 'status'], { encoding: 'utf8' });
    assert.equal(tcp.status, 0, tcp.stderr);
  });
});
