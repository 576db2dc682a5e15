/**
 * What a daemon owns on disk, changed under it (docs/architecture.md, promises 3 and 6), with real daemons, veths and
 * datagrams:
 *  - the whole state directory removed (`rm -rf STATE_DIR`) under a running daemon: made again 0700,
 *    locked again, the desired state written into a fresh store at once, logged as an error; a second
 *    daemon on that state directory is refused, also in the window before the first one notices (the
 *    first is stopped with SIGSTOP in between); a restart restores everything, including changes made
 *    after the removal;
 *  - lock files: a clean stop removes the lock files of every socket (gRPC and HTTP/JSON) and of the
 *    state directory, and only while they are still its own: one put in its place by someone else is
 *    left, and the daemon says so; a lock file removed by hand is taken again.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { CLI, kernelOnly, runId, sh, sleep, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

function cleanupId(id: string): void {
  XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
  rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
  for (const s of [`/tmp/xdpctl-test-${id}.sock`, `/tmp/xdpctl-test-${id}-http.sock`]) {
    rmSync(s, { force: true });
    rmSync(`${s}.lock`, { force: true });
  }
}

/** Start a daemon that must refuse; what it printed (exit 1). */
async function refused(id: string, extra: string[]): Promise<string> {
  try {
    const d = await DaemonProcess.start(id, extra);
    await d.destroy();
  } catch (e) {
    const out = (e as Error).message;
    assert.match(out, /^xdpctld exited 1: /, 'a refusal exits 1');
    return out;
  }
  assert.fail(`a daemon started with ${extra.join(' ')}`);
}

/** UDP datagrams from `from` to `to` over the cross-connect: how many arrived of `n`. */
async function datagrams(from: Host, to: Host, n = 50): Promise<number> {
  const l = await UdpListener.start(to.netns, to.ip!, 7100);
  try {
    await sendUdp(from.netns, to.ip!, 7100, n, { perTick: 5, tickMs: 10 }).done;
    await sleep(200);
  } catch (e) {
    l.kill();
    throw e;
  }
  return (await l.stop()).unique;
}

describe('the state directory removed under a running daemon', kernelOnly(), () => {
  const id = runId();
  const other = `${id}b`;
  const topo = new Topology(id);
  let h1: Host, h2: Host, h3: Host, h4: Host;
  let first: DaemonProcess | undefined;

  before(async () => {
    h1 = topo.addHost('h1', '198.18.21.1/24');
    h2 = topo.addHost('h2', '198.18.21.2/24');
    h3 = topo.addHost('h3', '198.18.22.3/24');
    h4 = topo.addHost('h4', '198.18.22.4/24');
    first = await DaemonProcess.start(id, ['--xdp-mode', 'generic', '--log-level', 'info']);
    await first.clients().links.connect({ link: { a: h1.hostIf, b: h2.hostIf } });
    assert.equal(await datagrams(h1, h2), 50, 'the first daemon forwards');
  });
  after(async () => {
    first?.child.kill('SIGCONT');
    await first?.destroy();
    topo.destroy();
    cleanupId(id);
    cleanupId(other);
  });

  const logFrom = (d: DaemonProcess) => {
    const at = d.output.length;
    return () => d.output.slice(at);
  };
  const storedLinks = (dir: string) =>
    sh('sqlite3', ['-readonly', `${dir}/state.db`, 'SELECT a || "-" || b FROM links ORDER BY key'])
      .trim()
      .split('\n')
      .filter(Boolean);
  const recreated = /STATE DIRECTORY \S+ WAS REMOVED OR REPLACED UNDER THE RUNNING DAEMON/;

  it('is made again 0700, locked again, and a fresh store holds the desired state at once', async () => {
    const log = logFrom(first!);
    const dir = first!.stateDir;
    rmSync(dir, { recursive: true });
    // The daemon says the fresh store is written once it is (the file exists a moment before its tables do):
    // from that line on, the store must hold the desired state.
    await until(
      () => `the state directory made again: ${log()}`,
      () => recreated.test(log()) && existsSync(`${dir}/state.db`) && existsSync(`${dir}/xdpctld.lock`),
      6000,
    );
    assert.equal(statSync(dir).mode & 0o7777, 0o700, 'made again 0700');
    assert.deepEqual(storedLinks(dir), [`${h1.hostIf}-${h2.hostIf}`], 'the desired state is in the fresh store');
    assert.equal(JSON.parse(readFileSync(`${dir}/xdpctld.lock`, 'utf8')).pid, first!.child.pid, 'locked again');
    const lines = log()
      .split('\n')
      .filter((l) => recreated.test(l));
    assert.equal(lines.length, 1, 'logged once');
    assert.match(lines[0], /"level":50/, 'as an error');
    assert.match(lines[0], /\(0 rule\(s\), 1 link\(s\)\) written into a fresh store/);
    // A second daemon on that state directory is refused, naming the first.
    const msg = await refused(other, ['--state-dir', dir]);
    assert.match(msg, new RegExp(`state directory ${dir} is in use by another xdpctld \\(pid ${first!.child.pid}\\b`));
    assert.equal(await datagrams(h1, h2), 50, 'the first daemon still forwards');
    // A change made now is kept in the fresh store.
    await first!.clients().links.connect({ link: { a: h3.hostIf, b: h4.hostIf } });
    assert.deepEqual(storedLinks(dir).sort(), [`${h1.hostIf}-${h2.hostIf}`, `${h3.hostIf}-${h4.hostIf}`].sort());
  });

  it('refuses a second daemon on it in the window before the first notices (the first stopped)', async () => {
    const log = logFrom(first!);
    const dir = first!.stateDir;
    const want = (await first!.clients().links.listLinks({})).links.map((l) => `${l.a}-${l.b}`).sort();
    // The first daemon cannot run a pass in between: stopped while its state directory is removed.
    first!.child.kill('SIGSTOP');
    let msg: string;
    try {
      rmSync(dir, { recursive: true, force: true });
      msg = await refused(other, ['--state-dir', dir]);
    } finally {
      first!.child.kill('SIGCONT');
    }
    // Named by the lock it still holds on the removed file, with what it wrote there.
    assert.match(msg, new RegExp(`state directory ${dir} is in use by another xdpctld \\(pid ${first!.child.pid}\\b`));
    assert.match(msg, new RegExp(`listening on .*${first!.unix}`));
    await until(
      () => `the state directory made again: ${log()}`,
      () => recreated.test(log()) && existsSync(`${dir}/state.db`) && storedLinks(dir).sort().join() === want.join(),
      6000,
    );
    assert.equal(JSON.parse(readFileSync(`${dir}/xdpctld.lock`, 'utf8')).pid, first!.child.pid);
    assert.equal(await datagrams(h1, h2), 50, 'it forwards');
  });

  it('a restart restores the desired state from the fresh store', async () => {
    assert.equal(await first!.stop(), 0);
    first = await DaemonProcess.start(id, ['--xdp-mode', 'generic']);
    const links = (await first.clients().links.listLinks({})).links.map((l) => `${l.a}-${l.b}`);
    assert.deepEqual(links.sort(), [`${h1.hostIf}-${h2.hostIf}`, `${h3.hostIf}-${h4.hostIf}`].sort());
    assert.equal(await datagrams(h1, h2), 50);
    assert.equal(await datagrams(h4, h3), 50);
  });
});

describe('lock files', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let h1: Host, h2: Host;
  const holders: ChildProcess[] = [];
  const sock = `/tmp/xdpctl-test-${id}.sock`;
  const httpSock = `/tmp/xdpctl-test-${id}-http.sock`;
  const start = () => DaemonProcess.start(id, ['--xdp-mode', 'generic', '--http-listen', `unix:${httpSock}`]);

  before(() => {
    h1 = topo.addHost('h1', '198.18.23.1/24');
    h2 = topo.addHost('h2', '198.18.23.2/24');
  });
  after(() => {
    for (const h of holders) h.kill('SIGKILL');
    topo.destroy();
    cleanupId(id);
  });

  it('a clean stop removes every lock file it made: both sockets and the state directory', async () => {
    const d = await start();
    try {
      await d.clients().links.connect({ link: { a: h1.hostIf, b: h2.hostIf } });
      assert.equal(await datagrams(h1, h2), 50);
      for (const f of [`${sock}.lock`, `${httpSock}.lock`, `${d.stateDir}/xdpctld.lock`]) {
        assert.equal(JSON.parse(readFileSync(f, 'utf8')).pid, d.child.pid, f);
      }
      assert.equal(await d.stop(), 0);
      for (const f of [`${sock}.lock`, `${httpSock}.lock`, `${d.stateDir}/xdpctld.lock`, sock, httpSock]) {
        assert.equal(existsSync(f), false, `${f} removed`);
      }
    } finally {
      await d.destroy();
    }
  });

  it('a Unix socket removed by hand (gRPC, HTTP/JSON) is listened on again; a file put in its place is left, and said', async () => {
    const d = await start();
    try {
      const log = () => d.output;
      const cli = () => spawnSync(CLI, ['--server', d.unix, 'status'], { encoding: 'utf8' });
      const curl = () =>
        spawnSync(
          'curl',
          ['-sS', '--unix-socket', httpSock, '--json', '{}', 'http://x/xdpctl.v1.LinkService/ListLinks'],
          {
            encoding: 'utf8',
          },
        );
      assert.equal(cli().status, 0, 'the CLI reaches the gRPC socket');
      assert.equal(curl().status, 0, 'curl reaches the HTTP/JSON socket');
      const modes = [sock, httpSock].map((p) => statSync(p).mode & 0o777);
      // Removed (a /tmp cleaner): a new client cannot connect by the path, until the daemon listens there again.
      rmSync(sock);
      rmSync(httpSock);
      const again = (p: string) =>
        new RegExp(`Unix socket ${p} was removed under the running daemon: listening on it again`);
      await until(
        () => `both sockets listened on again: ${log()}`,
        () => again(sock).test(log()) && again(httpSock).test(log()),
        6000,
      );
      const c = cli();
      assert.equal(c.status, 0, `the CLI reaches the gRPC socket again: ${c.stderr}`);
      const h = curl();
      assert.equal(h.status, 0, `curl reaches the HTTP/JSON socket again: ${h.stderr}`);
      assert.deepEqual(JSON.parse(h.stdout), {}, 'and is answered');
      assert.deepEqual(
        [sock, httpSock].map((p) => statSync(p).mode & 0o777),
        modes,
        'made again with the same mode',
      );
      await sleep(1500);
      for (const p of [sock, httpSock]) {
        assert.equal(
          log()
            .split('\n')
            .filter((l) => again(p).test(l)).length,
          1,
          `${p}: logged once`,
        );
      }
      // Replaced by a file that is not ours: left alone, and the daemon says it does not listen there.
      rmSync(httpSock);
      writeFileSync(httpSock, 'not a socket\n');
      const ino = statSync(httpSock).ino;
      const foreign = new RegExp(
        `Unix socket ${httpSock} was replaced by another file \\(not ours\\): this daemon does not listen there`,
      );
      await until(
        () => `the daemon reports the socket path it lost: ${log()}`,
        () => foreign.test(log()),
        6000,
      );
      assert.equal(
        (await d.clients().health.check({ service: 'xdpctl.datapath' })).status,
        2,
        'NOT_SERVING while it does not listen there',
      );
      await sleep(1500);
      assert.equal(statSync(httpSock).ino, ino, 'the file put there is left where it is');
      assert.equal(
        log()
          .split('\n')
          .filter((l) => foreign.test(l) && /"level":50/.test(l)).length,
        1,
        'said once, as an error',
      );
      // Gone again: the daemon listens there again.
      rmSync(httpSock);
      await until(
        () => `the HTTP/JSON socket listened on again: ${log()}`,
        () =>
          log()
            .split('\n')
            .filter((l) => again(httpSock).test(l)).length === 2,
        6000,
      );
      assert.equal(curl().status, 0, 'curl reaches the HTTP/JSON socket again');
      assert.equal(await d.stop(), 0);
      assert.equal(existsSync(sock), false, 'its own sockets are removed at the stop');
      assert.equal(existsSync(httpSock), false);
    } finally {
      rmSync(httpSock, { force: true });
      await d.destroy();
    }
  });

  it('a lock file removed by hand is taken again; one put in its place by another process is left, and said', async () => {
    const d = await start();
    try {
      const log = () => d.output;
      // Removed (a /tmp cleaner): made again, with this daemon's pid.
      rmSync(`${sock}.lock`);
      await until(
        () => `the socket's lock file made again: ${log()}`,
        () =>
          existsSync(`${sock}.lock`) && JSON.parse(readFileSync(`${sock}.lock`, 'utf8') || '{}').pid === d.child.pid,
        6000,
      );
      // Replaced by a file that another process holds locked (renamed over it, atomically).
      const theirs = `${httpSock}.lock.theirs`;
      writeFileSync(theirs, 'not xdpctld\n');
      const holder = spawn('flock', ['--exclusive', theirs, 'sleep', '120'], { stdio: 'ignore' });
      holders.push(holder);
      await until(
        'the other process holds its lock',
        () => readFileSync('/proc/locks', 'utf8').includes(` ${holder.pid} `),
        6000,
      );
      const ino = statSync(theirs).ino;
      renameSync(theirs, `${httpSock}.lock`);
      const conflict = new RegExp(
        `socket lock ${httpSock}\\.lock could not be taken again: socket ${httpSock} is in use by another xdpctld \\(pid ${holder.pid}\\b`,
      );
      await until(
        () => `the daemon reports the lock it lost: ${log()}`,
        () => conflict.test(log()),
        6000,
      );
      assert.equal(
        (await d.clients().health.check({ service: 'xdpctl.datapath' })).status,
        2,
        'NOT_SERVING while it does not hold it',
      );
      await sleep(1500);
      assert.equal(
        log()
          .split('\n')
          .filter((l) => conflict.test(l) && /"level":50/.test(l)).length,
        1,
        'logged once, as an error',
      );
      assert.equal(await d.stop(), 0);
      assert.equal(statSync(`${httpSock}.lock`).ino, ino, "the other process's lock file is left where it is");
      assert.equal(existsSync(`${sock}.lock`), false, 'its own lock files are removed');
      assert.equal(existsSync(`${d.stateDir}/xdpctld.lock`), false);
    } finally {
      await d.destroy();
    }
  });
});
