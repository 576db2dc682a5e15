/**
 * Config-file mode never waits on what is not a file (a review's finding: `rm links.yaml; mkfifo links.yaml`
 * blocked a libuv worker in open() for good — wchan wait_for_partner — nothing logged, status "in force",
 * xdpctl.config SERVING; a good file moved into place afterwards was never applied; SIGTERM logged "stopped"
 * but the process never exited; a daemon started with the FIFO as --config never became ready for the
 * config). Each kind of non-file at the path: a FIFO, a symlink to /dev/zero (a read that never ends), a
 * directory, a dangling symlink, a symlink loop, a symlink to a directory (each said as such: "X is a symbolic
 * link to T, which does not exist", not ENOENT on X), a Unix socket, and a file larger than the 64 MiB read at
 * most (sparse): refused (a dangling link after one retry, as a missing file), unread,
 * reason Unreadable with a message naming the path and what it is, one log line, xdpctl.config NOT_SERVING,
 * the last good configuration forwarding (ping); then the next good file is applied. With a FIFO in place
 * SIGTERM ends the daemon (exit 0), and a start with a FIFO as --config serves, says why, and applies the good
 * file moved there later.
 */
import assert from 'node:assert/strict';
import { mkdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus as Serving } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import type { ConfigFileStatus } from '../../src/gen/xdpctl/v1/daemon.js';
import { xdpctl, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, sleep } from '../helpers/env.js';
import { esc, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

describe('config-file mode: a path that is not a regular file is refused, never waited on', kernelOnly(), () => {
  const lab = new Lab();
  const { id, topo } = lab;
  const dir = `/tmp/xdpctl-test-${id}-nf`;
  const file = `${dir}/links.yaml`;
  let d: DaemonProcess | undefined;
  let x: Host, y: Host, z: Host;
  let server: Server | undefined;

  before(() => {
    ({ x, y, z } = lab.addHosts({ x: '198.18.11.1/24', y: '198.18.11.2/24', z: '198.18.11.3/24' }));
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  });
  lab.onDestroy(() => {
    server?.close();
    rmSync(dir, { recursive: true, force: true });
  });
  after(() => lab.destroy());

  const status = async (): Promise<ConfigFileStatus> => (await d!.clients().daemon.getStatus({})).configFile!;
  const health = async (service: string) => (await d!.clients().health.check({ service })).status;
  async function until<T>(what: string, get: () => Promise<T>, ok: (v: T) => boolean, ms = 6000): Promise<T> {
    let v = await get();
    for (const end = Date.now() + ms; !ok(v) && Date.now() < end; v = await get()) await sleep(100);
    assert.ok(ok(v), `not within ${ms} ms: ${what}: ${JSON.stringify(v)}`);
    return v;
  }
  /** A good file moved into place (the path free), as an editor or a deploy tool does. */
  const putGood = (to: Host) => {
    const tmp = `${dir}/.links.yaml.tmp`;
    writeFileSync(tmp, `links:\n  ${x.hostIf}: ${to.hostIf}\n`);
    renameSync(tmp, file);
  };
  const clear = () => rmSync(file, { recursive: true, force: true });

  it('refuses a FIFO, a device, a directory, a socket and a huge file, keeps forwarding, applies the next good file', async () => {
    putGood(y);
    ({ d } = await lab.start(['--config', file, '--log-level', 'info']));
    assert.equal((await status()).inForce, true);
    assert.equal(topo.ping('x', y.ip!), true, 'the good file forwards');

    const cases: { name: string; make: () => void | Promise<void>; kind: RegExp }[] = [
      { name: 'a FIFO', make: () => void sh('mkfifo', [file]), kind: /is a FIFO \(named pipe\), not a regular file/ },
      {
        name: 'a symlink to /dev/zero',
        make: () => symlinkSync('/dev/zero', file),
        kind: /is a character device \(1:5\), not a regular file/,
      },
      { name: 'a directory', make: () => mkdirSync(file), kind: /is a directory, not a regular file/ },
      {
        name: 'a dangling symlink',
        make: () => symlinkSync(`${dir}/gone/links.yaml`, file),
        kind: new RegExp(`is a symbolic link to ${esc(dir)}/gone/links\\.yaml, which does not exist`),
      },
      {
        name: 'a symlink loop',
        make: () => {
          rmSync(`${dir}/loop.yaml`, { force: true });
          symlinkSync(file, `${dir}/loop.yaml`);
          symlinkSync(`${dir}/loop.yaml`, file);
        },
        kind: /, which is a symbolic link to .*: a loop of symbolic links \(ELOOP\)/,
      },
      {
        name: 'a symlink to a directory',
        make: () => {
          mkdirSync(`${dir}/conf.d`, { recursive: true });
          symlinkSync(`${dir}/conf.d`, file);
        },
        kind: new RegExp(`is a symbolic link to ${esc(dir)}/conf\\.d, which is a directory, not a regular file`),
      },
      {
        name: 'a Unix socket',
        make: () =>
          new Promise<void>((resolve) => {
            server = createServer().listen(file, () => resolve());
          }),
        kind: /is a socket, not a regular file/,
      },
      {
        name: 'a 65 MiB file',
        make: () => void sh('truncate', ['-s', String(65 << 20), file]),
        kind: /is 68157440 bytes, more than the 67108864 bytes read at most/,
      },
    ];
    let to = y;
    for (const c of cases) {
      clear();
      await c.make();
      const s = await until(
        `${c.name} refused`,
        status,
        (v) => !v.inForce && v.inForceCondition?.reason === 'Unreadable',
      );
      assert.match(s.inForceCondition!.message, c.kind, c.name);
      assert.match(s.inForceCondition!.message, new RegExp(esc(file)), `${c.name}: the path is named`);
      assert.equal(await health('xdpctl.config'), Serving.NOT_SERVING, `${c.name}: xdpctl.config NOT_SERVING`);
      assert.equal(await health('xdpctl.datapath'), Serving.SERVING, `${c.name}: the last good configuration runs`);
      assert.equal(topo.ping('x', to.ip!), true, `${c.name}: the last good configuration forwards`);
      // Said once (not at every periodic look): one line naming the path and what it is.
      await sleep(2500);
      const lines: string[] = d.output
        .split('\n')
        .filter((l) => c.kind.test(l) && l.includes(file) && /"level":50/.test(l));
      assert.equal(lines.length, 1, `${c.name}: one error line: ${lines.join('\n')}`);
      const cli = await xdpctl(d.tcp, ['status']);
      assert.match(cli.stdout, /config in force:\s+no \(Unreadable\)/, c.name);
      // The next good file: applied.
      server?.close();
      server = undefined;
      clear();
      to = to === y ? z : y;
      putGood(to);
      await until(`${c.name}: the good file after it applied`, status, (v) => v.inForce);
      assert.equal(await health('xdpctl.config'), Serving.SERVING, c.name);
      assert.equal(topo.ping('x', to.ip!), true, `${c.name}: the good file after it forwards`);
    }
  });

  it('stops on SIGTERM with a FIFO at the path', async () => {
    clear();
    sh('mkfifo', [file]);
    await until('the FIFO refused', status, (v) => v.inForceCondition?.reason === 'Unreadable');
    const t0 = Date.now();
    const exited = await Promise.race([d!.stop(), sleep(15_000).then(() => 'still running after 15 s')]);
    assert.equal(exited, 0, `exit code (${Date.now() - t0} ms)`);
  });

  it('starts with a FIFO as --config: serves, says why, applies the good file moved there later', async () => {
    await d?.stop('SIGKILL'); // a daemon the test before could not stop
    clear();
    sh('mkfifo', [file]);
    ({ d } = await lab.start(['--config', file, '--log-level', 'info']));
    const s = await until('the FIFO refused at start', status, (v) => v.inForceCondition?.reason === 'Unreadable');
    assert.match(s.inForceCondition!.message, /is a FIFO \(named pipe\), not a regular file/);
    assert.equal(await health('xdpctl.config'), Serving.NOT_SERVING);
    assert.match(s.running, /restored from the state store at start, 0 rules, 1 link/);
    clear();
    putGood(y);
    await until('the good file applied', status, (v) => v.inForce);
    assert.equal(topo.ping('x', y.ip!), true, 'the good file forwards');
    assert.equal(await d.stop(), 0);
  });
});
