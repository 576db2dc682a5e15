/**
 * The TLS files are never waited on (the kind of a review's finding on the --config file: a FIFO at the path
 * blocked a libuv worker in open() for good and the process could not exit). grpc-js's file watcher read them
 * with fs.promises.readFile at every refresh: a FIFO at the certificate's path blocked one more worker each
 * time, nothing was said of why, and SIGTERM logged "stopped" without the process ending; a start with a FIFO
 * as --tls-cert read it synchronously and never got anywhere. Now: a FIFO put there while running is refused
 * unread, said once with what it is, the certificate in use keeps serving, SIGTERM ends the daemon; a start
 * with a FIFO (or /dev/zero) as a TLS file is refused with a message naming it.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { DAEMON, DAEMON_NODE_FLAGS, kernelOnly, runId, sh, sleep } from '../helpers/env.js';
import { makePki, servedCnAt } from '../helpers/pki.js';

describe('TLS files: a FIFO or a device at the path is refused, never waited on', kernelOnly(), () => {
  const id = runId();
  const dir = mkdtempSync(join(tmpdir(), 'xdpctl-tls-nf-'));
  const f = (n: string) => join(dir, n);
  let d: DaemonProcess | undefined;
  const children: ChildProcess[] = [];

  before(() => {
    makePki(dir, { server: ['server', 'IP:127.0.0.1,DNS:localhost'] });
    copyFileSync(f('server.pem'), f('tls.pem'));
    copyFileSync(f('server.key'), f('tls.key'));
  });
  after(async () => {
    await d?.destroy();
    for (const c of children) c.kill('SIGKILL');
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  });

  const servedCn = () => servedCnAt(d!.tcp, f('ca.pem'));

  it('a FIFO at the certificate path while running: refused and said once, still serving, SIGTERM ends it', async () => {
    const args = ['--tls-cert', f('tls.pem'), '--tls-key', f('tls.key'), '--tls-refresh-seconds', '1'];
    d = await DaemonProcess.start(id, ['--log-level', 'info', ...args]);
    assert.equal(await servedCn(), 'server');
    rmSync(f('tls.pem'));
    sh('mkfifo', [f('tls.pem')]);
    await sleep(3500); // > 3 refresh periods
    const said = d.output
      .split('\n')
      .filter((l) => /"msg":"TLS files unreadable: keeping the certificate in use"/.test(l));
    assert.equal(said.length, 1, said.join('\n') || d.output.slice(-3000));
    assert.match(said[0], /is a FIFO \(named pipe\), not a regular file/);
    assert.equal(await servedCn(), 'server', 'the certificate in use keeps serving');
    const exited = await Promise.race([d.stop(), sleep(15_000).then(() => 'still running after 15 s')]);
    assert.equal(exited, 0);
  });

  for (const [name, make] of [
    ['a FIFO', () => sh('mkfifo', [f('bad.pem')])],
    ['/dev/zero', () => sh('ln', ['-s', '/dev/zero', f('bad.pem')])],
  ] as const) {
    it(`a start with ${name} as --tls-cert is refused, naming it`, async () => {
      rmSync(f('bad.pem'), { force: true });
      make();
      const t0 = Date.now();
      // Spawned here (not DaemonProcess.start) so that a start that never ends is killed by the test.
      const child = spawn(
        process.execPath,
        [
          ...DAEMON_NODE_FLAGS,
          DAEMON,
          '--listen',
          '127.0.0.1:0',
          '--pin-root',
          `/sys/fs/bpf/xdpctl-test-${id}`,
          '--state-dir',
          `/tmp/xdpctl-test-${id}-state`,
          '--tls-cert',
          f('bad.pem'),
          '--tls-key',
          f('server.key'),
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      children.push(child);
      let out = '';
      child.stdout.on('data', (x) => (out += x));
      child.stderr.on('data', (x) => (out += x));
      const r = await Promise.race([
        new Promise<string>((resolve) => child.once('exit', (code) => resolve(`xdpctld exited ${code}: ${out}`))),
        sleep(15_000).then(() => `nothing after 15 s: ${out}`),
      ]);
      child.kill('SIGKILL');
      assert.match(r, /^xdpctld exited \d+/, r);
      assert.doesNotMatch(r, /^xdpctld exited 0/, r);
      assert.match(
        r,
        name === 'a FIFO'
          ? /bad\.pem is a FIFO \(named pipe\), not a regular file/
          : // A symbolic link to /dev/zero: the link and what it leads to are named (regular-file.ts follows the chain).
            /bad\.pem is a symbolic link to \/dev\/zero, which is a character device \(1:5\), not a regular file/,
        r,
      );
      assert.ok(Date.now() - t0 < 10_000, `refused in ${Date.now() - t0} ms`);
    });
  }
});
