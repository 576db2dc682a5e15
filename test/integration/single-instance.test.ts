/**
 * One daemon per datapath (docs/architecture.md, promise 3) and pins that only xdpctld
 * controls (item 4), with real daemons: a second xdpctld on the same pin
 * root, state directory or socket path refuses to start and names the
 * running one, which keeps forwarding, keeps its maps and stays reachable on
 * its socket. A pin root that someone else owns or may write is refused; a
 * new one is created 0700; setup mounts bpffs 0700.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, ROOT, runId, sh, sleep, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';

/**
 * Start a daemon that must refuse; what it printed. A refusal exits 1 and is
 * logged once as a "start failed" record carrying the same message.
 */
async function refused(id: string, extra: string[]): Promise<string> {
  let out: string;
  try {
    const d = await DaemonProcess.start(id, extra);
    await d.destroy();
    assert.fail(`a daemon started with ${extra.join(' ')}`);
  } catch (e) {
    out = (e as Error).message;
  }
  assert.match(out, /^xdpctld exited 1: /, 'a refusal exits 1');
  const records = out
    .slice('xdpctld exited 1: '.length)
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg: string; level: number; err?: { message: string } });
  const failed = records.filter((r) => r.msg === 'start failed');
  assert.equal(failed.length, 1, 'the refusal is logged once');
  assert.equal(failed[0].level, 50, 'at level error');
  assert.ok(out.includes(`xdpctld: ${failed[0].err!.message}`), 'stderr and the log say the same');
  assert.ok(!records.some((r) => r.msg === 'ready'), 'it never served');
  return out;
}

function cleanupId(id: string): void {
  XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
  rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
  rmSync(`/tmp/xdpctl-test-${id}.sock`, { force: true });
  rmSync(`/tmp/xdpctl-test-${id}.sock.lock`, { force: true });
}

describe('one daemon per datapath', kernelOnly(), () => {
  const id = runId();
  const other = `${id}b`;
  const topo = new Topology(id);
  let h1: Host, h2: Host;
  let first: DaemonProcess | undefined;

  before(async () => {
    h1 = topo.addHost('h1', '198.18.6.1/24');
    h2 = topo.addHost('h2', '198.18.6.2/24');
    first = await DaemonProcess.start(id, ['--xdp-mode', 'generic']);
    await first.clients().links.connect({ link: { a: h1.hostIf, b: h2.hostIf } });
    assert.equal(topo.ping('h1', h2.ip!), true, 'the first daemon forwards');
  });
  after(async () => {
    await first?.destroy();
    topo.destroy();
    cleanupId(id);
    cleanupId(other);
  });

  /** The first daemon's log from here on. */
  const logFrom = (d: DaemonProcess) => {
    const at = d.output.length;
    return () => d.output.slice(at);
  };
  const stillServing = async (d: DaemonProcess, maps: unknown, log: () => string) => {
    assert.deepEqual(d.dumpMaps(), maps, "the first daemon's maps are untouched");
    assert.equal(topo.ping('h1', h2.ip!), true, 'the first daemon still forwards');
    const unix = d.clients(d.unix);
    assert.equal((await unix.links.listLinks({})).links.length, 1, 'the first daemon answers on its socket');
    assert.equal((await unix.health.check({ service: 'xdpctl.datapath' })).status, 1, 'SERVING');
    assert.equal((await unix.health.check({ service: '' })).status, 1, 'the daemon SERVING');
    // Nothing happened to the first daemon's datapath, so it has nothing to report: no repair, no
    // transition, no warning or error of any kind.
    assert.deepEqual(
      log()
        .split('\n')
        .filter((l) => /"level":(40|50|60)|not as desired|re-attached/.test(l)),
      [],
      "the first daemon's log",
    );
  };

  it('refuses a second daemon on the same pin root, naming the first', async () => {
    const maps = first!.dumpMaps();
    const log = logFrom(first!);
    const msg = await refused(other, ['--pin-root', first!.pinRoot]);
    assert.match(
      msg,
      new RegExp(`pin root ${first!.pinRoot} is in use by another xdpctld \\(pid ${first!.child.pid}\\b`),
    );
    assert.match(msg, /dist\/server\/main\.js/, "the message shows the holder's command line (the compiled daemon)");
    await stillServing(first!, maps, log);
  });

  it('refuses a second daemon on the same state directory, naming the first', async () => {
    const maps = first!.dumpMaps();
    const log = logFrom(first!);
    const msg = await refused(other, ['--state-dir', first!.stateDir]);
    assert.match(
      msg,
      new RegExp(`state directory ${first!.stateDir} is in use by another xdpctld \\(pid ${first!.child.pid}\\b`),
    );
    assert.match(msg, /started \d{4}-\d\d-\d\dT/);
    assert.match(msg, new RegExp(`listening on .*${first!.unix}`));
    await stillServing(first!, maps, log);
  });

  it('refuses a second daemon on the same socket path and never unlinks a live socket', async () => {
    const maps = first!.dumpMaps();
    const log = logFrom(first!);
    const socket = first!.unix.slice('unix:'.length);
    const inode = statSync(socket).ino;
    const msg = await refused(other, ['--listen', first!.unix]);
    assert.match(msg, new RegExp(`socket ${socket} is in use by another xdpctld \\(pid ${first!.child.pid}\\b`));
    assert.equal(statSync(socket).ino, inode, "the socket file is the first daemon's, untouched");
    await stillServing(first!, maps, log);
  });

  it('never unlinks a live socket whose lock file was removed (a /tmp cleaner), naming the process on it', async () => {
    const maps = first!.dumpMaps();
    const log = logFrom(first!);
    const socket = first!.unix.slice('unix:'.length);
    const inode = statSync(socket).ino;
    rmSync(`${socket}.lock`);
    // A new lock file at the path can be locked, but the first daemon still holds the lock on the removed
    // one (and takes the path's again at its next pass): refused, naming it; the socket left in place.
    const msg = await refused(other, ['--listen', first!.unix]);
    assert.match(msg, new RegExp(`socket ${socket} is in use by another xdpctld \\(pid ${first!.child.pid}\\b`));
    assert.equal(statSync(socket).ino, inode, "the socket file is the first daemon's, untouched");
    await until(
      'the first daemon takes its lock file again',
      () =>
        existsSync(`${socket}.lock`) && readFileSync(`${socket}.lock`, 'utf8').includes(`"pid":${first!.child.pid}`),
      3000,
    );
    await stillServing(first!, maps, () =>
      log().replace(/.*socket lock files removed or replaced under the running daemon: locked again.*\n/, ''),
    );
    // A process that is not an xdpctld listens on a socket path, with no lock file: refused, never unlinked.
    const path = `/tmp/xdpctl-test-${other}-live.sock`;
    const listener = spawn(
      'python3',
      [
        '-c',
        `import socket, time; s = socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(path)}); s.listen(8); print("up", flush=True); time.sleep(60)`,
      ],
      { stdio: ['ignore', 'pipe', 'ignore'] },
    );
    try {
      await new Promise((r) => listener.stdout!.once('data', r));
      const liveInode = statSync(path).ino;
      const live = await refused(other, ['--listen', `unix:${path}`]);
      assert.match(live, new RegExp(`socket ${path} is in use: pid ${listener.pid} ".*python3`));
      assert.match(live, /accepts connections.*a live socket is never removed/);
      assert.equal(statSync(path).ino, liveInode, 'the live socket file is untouched');
      assert.equal(existsSync(`${path}.lock`), false, 'the refused daemon removed its own lock file');
    } finally {
      listener.kill('SIGKILL');
      rmSync(path, { force: true });
      rmSync(`${path}.lock`, { force: true });
    }
  });

  it("refuses a pin root nested inside the first's, or one that holds the first's, naming the first", async () => {
    const maps = first!.dumpMaps();
    const log = logFrom(first!);
    const listing = () => sh('find', [first!.pinRoot]).split('\n').sort();
    const pins = listing();
    // Inside: the first daemon's own maps directory (it would make maps/, progs/ and links/ in there).
    let msg = await refused(other, ['--pin-root', `${first!.pinRoot}/maps`]);
    assert.match(
      msg,
      new RegExp(
        `pin root ${first!.pinRoot}/maps is inside the pin root ${first!.pinRoot} of another xdpctld ` +
          `\\(pid ${first!.child.pid}, "[^"]*dist/server/main\\.js`,
      ),
    );
    // Inside, a new directory: refused, and the directories it made are gone again.
    msg = await refused(other, ['--pin-root', `${first!.pinRoot}/nested/x`]);
    assert.match(
      msg,
      new RegExp(`is inside the pin root ${first!.pinRoot} of another xdpctld \\(pid ${first!.child.pid}\\b`),
    );
    assert.deepEqual(listing(), pins, "nothing made or removed under the first daemon's pin root");
    await stillServing(first!, maps, log);

    // Above: a pin root that holds a running daemon's pin root inside it.
    const outer = `/sys/fs/bpf/xdpctl-test-${id}c`;
    let inner: DaemonProcess | undefined;
    try {
      inner = await DaemonProcess.start(`${id}c`, ['--pin-root', `${outer}/in`]);
      msg = await refused(other, ['--pin-root', outer]);
      assert.match(
        msg,
        new RegExp(
          `pin root ${outer} is above the pin root ${outer}/in of another xdpctld \\(pid ${inner.child.pid}\\b`,
        ),
      );
      assert.deepEqual(sh('find', [outer, '-maxdepth', '1']).trim().split('\n').sort(), [outer, `${outer}/in`].sort());
    } finally {
      await inner?.destroy();
      XdpDatapath.unpinAll(outer);
      cleanupId(`${id}c`);
    }
  });

  it('a refused start leaves no state database it created (the SQLite addon built for another Node ABI)', async () => {
    const maps = first!.dumpMaps();
    const log = logFrom(first!);
    const state = `/tmp/xdpctl-test-${other}-abi`;
    mkdirSync(state, { mode: 0o700 }); // an existing, empty state directory: the start did not make it
    try {
      let out = '';
      try {
        const d = await DaemonProcess.start(other, ['--state-dir', state], {
          NODE_OPTIONS: `--import=${ROOT}test/helpers/addon-abi.mjs`,
          XDPCTL_TEST_ADDON_ABI: '1',
        });
        await d.destroy();
        assert.fail('a daemon started without its SQLite addon');
      } catch (e) {
        out = (e as Error).message;
      }
      assert.match(out, /^xdpctld exited 1: /);
      assert.match(out, new RegExp(`state store ${state}/state\\.db: .*ERR_DLOPEN_FAILED`));
      assert.deepEqual(readdirSync(state), [], 'no state.db (nor lock or WAL file) left in the state directory');
      assert.equal(existsSync(`/sys/fs/bpf/xdpctl-test-${other}`), false, 'no pin root left behind');
    } finally {
      rmSync(state, { recursive: true, force: true });
      cleanupId(other);
    }
    await stillServing(first!, maps, log);
  });

  it('a refused start leaves nothing it created (pin root, state and socket directories, their parents)', async () => {
    const maps = first!.dumpMaps();
    const log = logFrom(first!);
    const base = `/tmp/xdpctl-test-${other}-made`;
    const pinBase = `/sys/fs/bpf/xdpctl-test-${other}-made`;
    try {
      // Its own (new, nested) pin root and socket directory, the first daemon's state directory: refused at
      // the state directory's lock, after the pin root and the socket directory were made.
      let msg = await refused(other, [
        '--pin-root',
        `${pinBase}/a/b`,
        '--listen',
        `unix:${base}/sock/x/s.sock`,
        '--state-dir',
        first!.stateDir,
      ]);
      assert.match(msg, /state directory .* is in use by another xdpctld/);
      assert.equal(existsSync(pinBase), false, 'no pin root directory (nor its parents) left behind');
      assert.equal(existsSync(base), false, 'no socket directory left behind');
      // Its own (new, nested) state directory, the first daemon's socket: refused at the socket's lock,
      // after the state directory was made.
      msg = await refused(other, ['--state-dir', `${base}/state/x`, '--listen', first!.unix]);
      assert.match(msg, /socket \S+ is in use/); // by its lock, or (its lock file removed above) by its listener
      assert.equal(existsSync(base), false, 'no state directory (nor its parents) left behind');
      assert.equal(existsSync(`/sys/fs/bpf/xdpctl-test-${other}`), false, 'no pin root left behind');
    } finally {
      rmSync(base, { recursive: true, force: true });
      rmSync(pinBase, { recursive: true, force: true });
    }
    await stillServing(first!, maps, log);
  });

  it('keeps the state database and its WAL files private (0600), also those an earlier version made 0644', async () => {
    const files = ['state.db', 'state.db-wal', 'state.db-shm'].map((f) => `${first!.stateDir}/${f}`);
    const modes = () => files.map((f) => `${f} ${(statSync(f).mode & 0o777).toString(8)}`);
    assert.deepEqual(
      modes(),
      files.map((f) => `${f} 600`),
      'created 0600',
    );
    // A state directory an earlier version left: its database 0644 (the daemon that wrote it is gone).
    const d = `${other}p`;
    const dir = `/tmp/xdpctl-test-${d}-state`;
    try {
      mkdirSync(dir, { mode: 0o700 });
      sh('sqlite3', [`${dir}/state.db`, 'PRAGMA journal_mode=WAL; CREATE TABLE t (x);']);
      chmodSync(`${dir}/state.db`, 0o644);
      assert.equal(statSync(`${dir}/state.db`).mode & 0o777, 0o644);
      const daemon = await DaemonProcess.start(d);
      try {
        for (const f of ['state.db', 'state.db-wal', 'state.db-shm']) {
          assert.equal((statSync(`${dir}/${f}`).mode & 0o777).toString(8), '600', f);
        }
      } finally {
        await daemon.destroy();
      }
    } finally {
      cleanupId(d);
    }
  });

  it('takes over a stale socket file that nobody listens on', async () => {
    const path = `/tmp/xdpctl-test-${other}.sock`;
    // A socket file left by a process that is gone (bound, never accepted, closed without unlink).
    sh('python3', [
      '-c',
      `import socket; s = socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(path)}); s.listen(1); s.close()`,
    ]);
    assert.equal(statSync(path).isSocket(), true);
    const d = await DaemonProcess.start(other, ['--xdp-mode', 'generic']);
    try {
      assert.equal((await d.clients(d.unix).health.check({ service: '' })).status, 1, 'served on that path');
    } finally {
      await d.destroy();
    }
  });

  it('the whole pin root removed under a running daemon: created and locked again, a second daemon refused', async () => {
    const maps = first!.dumpMaps();
    const log = logFrom(first!);
    const pinRoot = first!.pinRoot;
    const pins = ['maps/xc_links', 'maps/rule_match', 'progs/xdpctl_main'].map((p) => `${pinRoot}/${p}`);
    const progId = (await first!.clients(first!.unix).daemon.getStatus({})).datapath!.programId;
    rmSync(pinRoot, { recursive: true });
    const relocked =
      /pin root \S+ was removed or replaced under the running daemon: created again \(0700\) and locked again/;
    await until(
      () => `the pin root re-created and its pins back: ${log()}`,
      () => pins.every((p) => existsSync(p)),
      3000,
    );
    assert.equal(statSync(pinRoot).mode & 0o7777, 0o700, 'created 0700 again');
    assert.equal(
      JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'pinned', `${pinRoot}/progs/xdpctl_main`])).id,
      progId,
      'the program pinned is the one that runs',
    );
    // A second daemon on that pin root is refused, naming the first (before: it started, adopted the pins).
    const msg = await refused(other, ['--pin-root', pinRoot]);
    assert.match(msg, new RegExp(`pin root ${pinRoot} is in use by another xdpctld \\(pid ${first!.child.pid}\\b`));
    assert.deepEqual(first!.dumpMaps(), maps, "the first daemon's maps are untouched");
    assert.equal(topo.ping('h1', h2.ip!), true, 'the first daemon still forwards');
    const unix = first!.clients(first!.unix);
    assert.equal((await unix.health.check({ service: 'xdpctl.datapath' })).status, 1, 'SERVING');
    const lines = log()
      .split('\n')
      .filter((l) => /"level":(40|50|60)/.test(l));
    assert.equal(lines.filter((l) => relocked.test(l)).length, 1, 'the re-creation logged once');
    assert.deepEqual(
      lines.filter(
        (l) => !relocked.test(l) && !/"msg":"pins removed or replaced under the running daemon: re-pinned/.test(l),
      ),
      [],
      'nothing else to report',
    );
  });

  it('a second daemon that took the removed pin root first is reported by the first, whose pins it keeps', async () => {
    const log = logFrom(first!);
    const pinRoot = first!.pinRoot;
    const unix = first!.clients(first!.unix);
    const progId = (await unix.daemon.getStatus({})).datapath!.programId;
    // The first daemon cannot run a pass in between: stopped while its pin root is removed and taken.
    first!.child.kill('SIGSTOP');
    let second: DaemonProcess | undefined;
    try {
      rmSync(pinRoot, { recursive: true });
      second = await DaemonProcess.start(other, ['--pin-root', pinRoot, '--xdp-mode', 'generic']);
    } finally {
      first!.child.kill('SIGCONT');
    }
    try {
      const secondProg = (await second.clients(second.unix).daemon.getStatus({})).datapath!.programId;
      const conflict = new RegExp(
        `pin root ${pinRoot} was removed under the running daemon and could not be taken again: pin root ${pinRoot} ` +
          `is in use by another xdpctld \\(pid ${second.child.pid}\\b`,
      );
      await until(
        () => `the first daemon reports the second: ${log()}`,
        () => conflict.test(log()),
        3000,
      );
      assert.equal((await unix.health.check({ service: 'xdpctl.datapath' })).status, 2, 'NOT_SERVING');
      await sleep(1500);
      assert.equal(
        log()
          .split('\n')
          .filter((l) => conflict.test(l) && /"level":50/.test(l)).length,
        1,
        'logged once, as an error',
      );
      assert.equal(
        JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'pinned', `${pinRoot}/progs/xdpctl_main`])).id,
        secondProg,
        "the second daemon's pins are left alone",
      );
      assert.equal(topo.ping('h1', h2.ip!), true, 'the first daemon still forwards (its program stays attached)');
    } finally {
      assert.equal(await second.stop(), 0);
      await second.destroy(); // its own state; its pins stay under the first's pin root
    }
    // The second gone, the first takes its pin root again and puts its pins back.
    await until(
      async () => `the first daemon's pins back: ${log()}`,
      async () =>
        existsSync(`${pinRoot}/progs/xdpctl_main`) &&
        JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'pinned', `${pinRoot}/progs/xdpctl_main`])).id === progId &&
        (await unix.health.check({ service: 'xdpctl.datapath' })).status === 1,
      3000,
    );
    assert.match(
      log().slice(log().search(/could not be taken again/)),
      /pin root \S+ was removed or replaced under the running daemon: the directory now there checked \(0700, ours\) and locked again/,
      'taken again, logged',
    );
  });

  it('takes over once the first daemon is gone, even after SIGKILL (the kernel drops the locks)', async () => {
    await first!.stop('SIGKILL');
    const d = await DaemonProcess.start(id, ['--xdp-mode', 'generic']);
    try {
      assert.equal((await d.clients().links.listLinks({})).links.length, 1, 'the state was restored');
      assert.equal(topo.ping('h1', h2.ip!), true);
      // Its own lock files hold its pid.
      assert.equal(existsSync(`${d.stateDir}/xdpctld.lock`), true);
    } finally {
      await d.stop();
    }
    assert.equal(existsSync(`${d.stateDir}/xdpctld.lock`), false, 'a clean stop removes its lock files');
    assert.equal(existsSync(`${d.unix.slice(5)}.lock`), false);
  });
});

describe('pins that only xdpctld controls', kernelOnly(), () => {
  const id = runId();
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  after(() => cleanupId(id));

  it('creates a new pin root 0700', async () => {
    const d = await DaemonProcess.start(id);
    try {
      assert.equal(statSync(pinRoot).mode & 0o7777, 0o700);
      assert.equal(statSync(`${pinRoot}/maps`).mode & 0o077, 0, 'maps/ is not open to others');
    } finally {
      await d.destroy();
    }
  });

  it('refuses a pin root that an unprivileged user created first', async () => {
    // A bpffs mounted 1777 (as setup used to mount /sys/fs/bpf; a bpffs of the test's own, so that the
    // case does not depend on how the host mounted its): anyone can make the directory first.
    const mnt = `/tmp/xdpctl-test-${id}-open-bpffs`;
    const taken = `${mnt}/xdpctl`;
    mkdirSync(mnt, { mode: 0o700 });
    try {
      sh('mount', ['-t', 'bpf', '-o', 'mode=1777', 'bpf', mnt]);
      try {
        sh('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', 'mkdir', '-m', '0700', taken]);
        const msg = await refused(id, ['--pin-root', taken]);
        assert.match(msg, new RegExp(`pin root ${taken} is owned by uid 65534, not by this daemon \\(uid 0\\)`));
        assert.equal(existsSync(`${taken}/maps`), false, 'nothing was pinned into it');
      } finally {
        sh('umount', [mnt]);
      }
    } finally {
      rmSync(mnt, { recursive: true, force: true });
    }
  });

  it('refuses a pin root that others may write', async () => {
    mkdirSync(pinRoot);
    chmodSync(pinRoot, 0o777);
    chownSync(pinRoot, 0, 0);
    try {
      const msg = await refused(id, []);
      assert.match(msg, new RegExp(`pin root ${pinRoot} is writable by others \\(mode 0777\\)`));
      chmodSync(pinRoot, 0o770);
      assert.match(await refused(id, []), /is writable by its group \(mode 0770\)/);
    } finally {
      rmSync(pinRoot, { recursive: true, force: true });
    }
  });

  it('refuses a pin root outside bpffs', async () => {
    const msg = await refused(id, ['--pin-root', `/tmp/xdpctl-test-${id}-pins`]);
    assert.match(msg, /pin root \/tmp\/xdpctl-test-\w+-pins is not on a bpffs/);
    assert.equal(existsSync(`/tmp/xdpctl-test-${id}-pins`), false);
  });

  it('refuses a pin root that is a bpffs mount itself, saying so (not "not on a bpffs")', async () => {
    // A bpffs of its own (as /sys/fs/bpf is one), so the host's is not touched.
    const mnt = `/tmp/xdpctl-test-${id}-bpffs`;
    mkdirSync(mnt, { mode: 0o700 });
    try {
      sh('mount', ['-t', 'bpf', '-o', 'mode=0700', 'bpf', mnt]);
      try {
        const before = readdirSync(mnt); // the kernel's own entries (maps.debug, progs.debug) on a new mount
        const msg = await refused(id, ['--pin-root', mnt]);
        assert.match(msg, new RegExp(`pin root ${mnt} is the root of a bpffs mount.*--pin-root ${mnt}/xdpctl`));
        assert.doesNotMatch(msg, /not on a bpffs/);
        assert.deepEqual(readdirSync(mnt), before, 'nothing pinned there');
      } finally {
        sh('umount', [mnt]);
      }
    } finally {
      rmSync(mnt, { recursive: true, force: true });
    }
  });

  it('setup mounts bpffs with mode 0700 where none is mounted', () => {
    // In a private mount namespace, so the host's /sys/fs/bpf is not touched.
    const mode = sh(
      'unshare',
      [
        '--mount',
        '--propagation',
        'private',
        'bash',
        '-c',
        'umount -l /sys/fs/bpf && bash scripts/setup.sh >/dev/null && stat -c %a /sys/fs/bpf && findmnt -no FSTYPE /sys/fs/bpf',
      ],
      { cwd: ROOT },
    );
    // bpffs always adds the sticky bit (kernel/bpf/inode.c bpf_fill_super).
    assert.deepEqual(mode.trim().split('\n'), ['1700', 'bpf']);
  });
});
