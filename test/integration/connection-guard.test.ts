/**
 * Local denial of service: an unprivileged local user opens many loopback
 * TCP connections that never send an HTTP/2 preface (from several loopback
 * source addresses). The daemon closes them after the preface timeout, holds
 * at most --max-connections-per-peer per address and --max-connections per
 * listener, logs the refusals at a bounded rate, and the admin keeps the
 * Unix socket; file descriptors and memory come back afterwards.
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

  it('silent connections are closed after the preface timeout, bounded per address and per listener; the admin keeps the Unix socket', async () => {
    const pid = d.child.pid!;
    const port = d.tcp.slice(d.tcp.lastIndexOf(':') + 1);
    const fdsBefore = fds(pid);
    const rssBefore = rssMb(pid);
    const from = d.output.length;
    // 400 connections as nobody, 100 from 127.0.0.1 then from 10 loopback addresses in turn; held up to 6 s.
    const flood = spawn(
      'setpriv',
      ['--reuid=65534', '--regid=65534', '--clear-groups', '--', PYTHON, '-', port, '400', '6', '10'],
      { stdio: ['pipe', 'pipe', 'pipe'], cwd: '/' },
    );
    flood.stdin.end(readFileSync(`${ROOT}test/clients/flood.py`));
    let out = '';
    flood.stdout.on('data', (x) => (out += x));
    const done = new Promise<void>((r) => flood.on('close', () => r()));
    await sleep(1000);
    // Mid-flood: the daemon holds at most 60 of them, and the admin gets in over the Unix socket.
    const held = fds(pid) - fdsBefore;
    assert.ok(held <= 60 + 5, `the daemon holds ${held} more descriptors during the flood (bound 60)`);
    const admin = spawnSync(CLI, ['--server', d.unix, '--timeout', '5s', 'status'], {
      encoding: 'utf8',
    });
    assert.equal(admin.status, 0, admin.stderr);
    assert.match(admin.stdout, /serving:\s+yes/);
    await done;
    const r = JSON.parse(out) as { opened: number; closed: number; open_at_end: number; closed_within_1s: number };
    assert.equal(r.opened, 400, out);
    assert.equal(r.open_at_end, 0, `every silent connection was closed by the daemon: ${out}`);
    assert.ok(r.closed_within_1s >= 400 - 60, `those over the bounds were refused at once: ${out}`);
    await sleep(300);
    const log = d.output.slice(from);
    assert.match(log, /connection refused: 127\.0\.0\.\d+ already has 20 connections/);
    assert.match(log, /connection refused: the listener holds its maximum of 60 connections/);
    assert.match(log, /connection closed: no HTTP\/2 preface and SETTINGS in time/);
    const lines = log.split('\n').filter((l) => l.includes('"msg":"connection '));
    assert.ok(lines.length <= 3 * 5, `${lines.length} log lines for ~400 refusals (at most 5 per kind per 10 s)`);
    assert.ok(fds(pid) - fdsBefore <= 3, `descriptors back: ${fdsBefore} -> ${fds(pid)}`);
    assert.ok(rssMb(pid) - rssBefore < 64, `RSS ${rssBefore.toFixed(0)} -> ${rssMb(pid).toFixed(0)} MB`);
    // And the TCP listener serves again.
    const tcp = spawnSync(CLI, ['--server', d.tcp, '--timeout', '5s', 'status'], { encoding: 'utf8' });
    assert.equal(tcp.status, 0, tcp.stderr);
  });
});
