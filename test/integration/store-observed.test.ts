/**
 * What happens to the daemon's own files under it is observed and said, not assumed (docs/architecture.md, a review's
 * findings 2, 6, 7 and 8), with a real daemon, a tiny tmpfs as its state directory, veths and datagrams:
 *  - the disk fills up (ENOSPC) under it, or it starts on a read-only remount: GetStatus state_store, `xdpctl status`, the
 *    xdpctl.datapath health service and the xdpctl_state_store_writable metric say so with the disk's reason
 *    (was: only the failing call did), logged once; all of it clears once the disk takes writes again, with
 *    no change needed;
 *  - a device setting changed while the store was read-only (GRO switched on on a backend's new veth peer)
 *    is recorded in host-changes.json once it takes writes again (was: never);
 *  - state.db, -wal and -shm removed under the daemon (the directory left): a change before the store is
 *    written again is refused (UNAVAILABLE naming the path; kept open here by a full disk); it is written
 *    again from the desired state at the next reconciler pass that can, logged; a change made then is on
 *    disk: a restart has it (was: the change acknowledged into a deleted file, and the next start refused);
 *  - another process holding the database's write lock (a backup, an operator's sqlite3 session): said the same
 *    way as a full disk, naming that process's pid, until it lets go (was: "writable" while every change was
 *    refused SQLITE_BUSY);
 *  - the pin root made writable by others (chmod 777): NOT_SERVING naming it, logged once, as a start
 *    refuses it; serving again after chmod 700.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, rmSync, chmodSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import Database from 'better-sqlite3';
import { Status } from 'nice-grpc';
import { HealthCheckResponse_ServingStatus as Serving } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { metric, metricSeries, xdpctl, type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { emptyDisk, fillDisk, kernelOnly, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { backendOf, Lab, NOWHERE } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';
const PORT = 7431;
const PORT2 = 7432;

describe("the daemon's own files changed under it are observed and said", kernelOnly(), () => {
  const lab = new Lab();
  const { id, topo, listeners } = lab;
  const stateDir = `/tmp/xdpctl-test-${id}-state`;
  const db = `${stateDir}/state.db`;
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  let d: DaemonProcess | undefined;
  let c: Clients;
  let vm: Host, b1: Host, b2: Host;

  const start = async () => {
    ({ d, c } = await lab.start(['--log-level', 'info', '--prometheus', '127.0.0.1:0']));
  };
  const rule = (name: string, port: number, b: Host) => lab.apiRule(name, port, [backendOf(b)]);
  const fill = () => fillDisk(stateDir);
  const unfill = () => emptyDisk(stateDir);
  const store = async () => (await c.daemon.getStatus({})).stateStore!;
  const datapathHealth = async () => (await c.health.check({ service: 'xdpctl.datapath' })).status;
  /**
   * The store's one xdpctl_state_store_writable series (asserted: exactly one, with the reason label exactly
   * when given: a reason that no longer holds is never exported next to the current one), its value.
   */
  const writable = async (labels: { xdpctl_state_store_reason?: string } = {}) => {
    const mine = (await metricSeries(d!.prometheus!, 'xdpctl_state_store_writable')).filter(
      (s) => s.labels.xdpctl_state_store_path === db,
    );
    assert.equal(mine.length, 1, `one series for the store: ${JSON.stringify(mine)}`);
    assert.equal(mine[0].labels.xdpctl_state_store_reason, labels.xdpctl_state_store_reason, JSON.stringify(mine));
    return mine[0].value;
  };
  /** The daemon's JSON log records whose msg matches. */
  const logged = (re: RegExp) =>
    d!.output
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { msg: string; level: number })
      .filter((r) => re.test(r.msg));
  /** Datagrams delivered of 20 sent to `port` (distinct flows). */
  const probe = async (port: number, b: Host) => {
    const l = await UdpListener.start(b.netns, b.ip!, port);
    listeners.push(l);
    await sendUdp(vm.netns, NOWHERE, port, 20, { flows: 20 }).done;
    await sleep(200);
    return (await l.stop()).unique;
  };
  const names = async () => (await c.rules.listRules({ pageSize: 0, pageToken: '' })).rules.map((r) => r.name);

  before(async () => {
    ({ vm, b1, b2 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', b2: '198.18.3.1/24' }));
    mkdirSync(stateDir, { recursive: true });
    sh('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'tmpfs', stateDir]);
    await start();
    await c.rules.createRule({ rule: rule('web', PORT, b1) });
    await c.rules.createRule({ rule: rule('web2', PORT2, b2) });
  });
  // Before the lab removes the daemon, its pins and state dir: the pins writable, the tmpfs unmounted.
  after(() => {
    try {
      chmodSync(pinRoot, 0o700);
    } catch {
      /* gone */
    }
    shQuiet('mount', ['-o', 'remount,rw', stateDir]);
    shQuiet('umount', ['-l', stateDir]); // lazily: the daemon may still hold the database open
  });
  after(() => lab.destroy());

  /** With the disk full: what status, health, metrics, the CLI, a change and the log say. */
  const full = async () => {
    await until(
      async () => JSON.stringify(await store()),
      async () => !(await store()).writable,
      10_000,
    );
    const s = await store();
    assert.match(s.problem, /^the disk is full \(ENOSPC\)/);
    assert.ok(s.refusingSince, 'since when');
    assert.equal(await datapathHealth(), Serving.NOT_SERVING);
    assert.equal(await writable({ xdpctl_state_store_reason: s.problem }), 0);
    assert.ok((await metric(d!.prometheus!, 'xdpctl_datapath_problems', {}))! >= 1, 'counted as a problem');
    const cli = await xdpctl(d!.tcp, ['status']);
    assert.match(cli.stdout, /state store writable: +no: the disk is full \(ENOSPC\).*; changes are refused/);
    // Serving, but taking no change (a review: "serving: yes" was all a script could test).
    const st = await c.daemon.getStatus({});
    assert.deepEqual([st.serving, st.acceptsWrites], [true, false]);
    assert.match(st.writesRefused, /^the state store refuses writes: the disk is full \(ENOSPC\)/);
    assert.match(cli.stdout, /accepts changes: +no: the state store refuses writes: the disk is full/);
    await assert.rejects(c.rules.createRule({ rule: rule('web3', 7433, b1) }), (e: Error & { code?: Status }) => {
      assert.equal(e.code, Status.RESOURCE_EXHAUSTED, e.message);
      return true;
    });
    assert.equal(await probe(PORT, b1), 20, 'the datapath forwards on');
    await sleep(1500); // more reconciler passes: still one log line
    assert.equal(logged(/^state store .* refuses writes: the disk is full/).length, 1, d!.output);
  };

  it('a full disk under the daemon is said by status, health, metrics and the CLI, logged once, and cleared when it has room again', async () => {
    const before = await store();
    assert.deepEqual(
      { path: before.path, writable: before.writable, problem: before.problem },
      { path: db, writable: true, problem: '' },
    );
    assert.equal(await writable(), 1);
    const ok = await c.daemon.getStatus({});
    assert.deepEqual([ok.serving, ok.acceptsWrites, ok.writesRefused], [true, true, '']);
    fill();
    try {
      await full();
    } finally {
      unfill();
    }
    await until(
      async () => JSON.stringify(await store()),
      async () => (await store()).writable,
      10_000,
    );
    const again = await store();
    assert.equal(again.problem, '');
    assert.equal(again.refusingSince, undefined);
    await until('datapath health SERVING again', async () => (await datapathHealth()) === Serving.SERVING, 10_000);
    assert.equal(await writable(), 1);
    assert.equal(await metric(d!.prometheus!, 'xdpctl_datapath_problems', {}), 0);
    assert.equal(logged(/^state store .* takes writes again/).length, 1);
    await c.rules.createRule({ rule: rule('web3', 7433, b1) });
    await c.rules.deleteRule({ name: 'web3' });
  });

  it("another process's write lock (a backup, an sqlite3 session) is said the same way, naming its pid, until it is released", async () => {
    assert.equal((await store()).writable, true);
    const lines = logged(/^state store .* refuses writes: another process holds the write lock/).length;
    // This test's process is that other process: a write transaction held open on the daemon's database.
    const other = new Database(db, { timeout: 0 });
    other.exec('BEGIN IMMEDIATE');
    try {
      await until(
        async () => JSON.stringify(await store()),
        async () => !(await store()).writable,
        10_000,
      );
      const s = await store();
      assert.match(s.problem, new RegExp(`^another process holds the write lock .*\\(pid ${process.pid}, `));
      assert.ok(s.refusingSince, 'since when');
      assert.equal(await datapathHealth(), Serving.NOT_SERVING);
      assert.equal(await writable({ xdpctl_state_store_reason: s.problem }), 0);
      await assert.rejects(c.rules.createRule({ rule: rule('web3', 7433, b1) }), (e: Error & { code?: Status }) => {
        assert.match(e.message, /another process holds the write lock/, e.message);
        return true;
      });
      assert.equal(await probe(PORT, b1), 20, 'the datapath forwards on');
      await sleep(1500); // more reconciler passes: still one log line
      assert.equal(logged(/^state store .* refuses writes: another process holds the write lock/).length, lines + 1);
    } finally {
      other.exec('ROLLBACK');
      other.close();
    }
    await until(
      async () => JSON.stringify(await store()),
      async () => (await store()).writable,
      10_000,
    );
    await until('datapath health SERVING again', async () => (await datapathHealth()) === Serving.SERVING, 10_000);
    assert.equal(await writable(), 1);
    await c.rules.createRule({ rule: rule('web3', 7433, b1) });
    await c.rules.deleteRule({ name: 'web3' });
  });

  it('a start on a read-only remount is said the same way; a GRO change made meanwhile is recorded once it takes writes', async () => {
    // A mount with a database open for writing cannot be made read-only: the daemon starts on it read-only.
    assert.equal(await d!.stop(), 0);
    sh('mount', ['-o', 'remount,ro', stateDir]);
    try {
      await start();
      await until(
        async () => JSON.stringify(await store()),
        async () => !(await store()).writable,
        10_000,
      );
      const s = await store();
      assert.match(s.problem, /read-only/);
      await until('NOT_SERVING', async () => (await datapathHealth()) === Serving.NOT_SERVING, 10_000);
      assert.equal(await writable({ xdpctl_state_store_reason: s.problem }), 0);
      await assert.rejects(c.rules.createRule({ rule: rule('web3', 7433, b1) }), (e: Error & { code?: Status }) => {
        assert.equal(e.code, Status.FAILED_PRECONDITION, e.message);
        return true;
      });
      // Each logged error names the store once (was: "open for writing: state store …: open for writing: …").
      const errs = d!.output
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => (JSON.parse(l) as { err?: { message?: string } }).err?.message ?? '');
      assert.ok(
        errs.some((m) => m.includes(db)),
        'the refusal is logged',
      );
      for (const m of errs) assert.ok(m.split(`state store ${db}`).length <= 2, `named once: ${m}`);
      // web2's backend veth is made again (same MAC): its new peer has GRO off; the daemon switches it on
      // and cannot record that now.
      const mac = b2.mac;
      topo.unplug('b2');
      topo.replug('b2', '198.18.3.1/24');
      sh('ip', ['-n', b2.netns, 'link', 'set', 'eth0', 'address', mac]);
      b2.mac = mac;
      const gro = () =>
        /^generic-receive-offload: on/m.test(sh('ip', ['netns', 'exec', b2.netns, 'ethtool', '-k', 'eth0']));
      await until('GRO switched on on the new peer', gro, 10_000);
      await until(
        () => d!.output.slice(-3000),
        () => logged(/GRO switched on not recorded in/).length > 0,
        10_000,
      );
    } finally {
      sh('mount', ['-o', 'remount,rw', stateDir]);
    }
    await until(
      async () => JSON.stringify(await store()),
      async () => (await store()).writable,
      10_000,
    );
    await until(
      () => d!.output.slice(-3000),
      () => logged(/^host changes not recorded earlier .* are now recorded/).length === 1,
      10_000,
    );
    const peer = JSON.parse(sh('ip', ['-n', b2.netns, '-j', 'link', 'show', 'eth0']))[0] as { ifindex: number };
    const record = JSON.parse(readFileSync(`${stateDir}/host-changes.json`, 'utf8')) as {
      gro: { netns?: string; ifname: string; ifindex: number }[];
    };
    assert.ok(
      record.gro.some((g) => g.netns === b2.netns && g.ifname === 'eth0' && g.ifindex === peer.ifindex),
      `the new peer (ifindex ${peer.ifindex}) is recorded: ${JSON.stringify(record)}`,
    );
    // web2 is written again onto the new egress (a reconciler pass, or a retry of a refused rewrite).
    const web2 = async () => (await c.rules.getRule({ name: 'web2' })).rule!.status!;
    await until(
      async () => JSON.stringify(await web2()),
      async () => (await web2()).state === RuleState.RULE_STATE_ACTIVE,
      30_000,
    );
    assert.equal(await probe(PORT2, b2), 20, 'web2 forwards to the new peer');
  });

  it('state.db removed under the daemon: changes refused until it is written again from the desired state, then on disk', async () => {
    // With the disk full, the fresh store cannot be written: the gap stays open, and a change in it is
    // refused (UNAVAILABLE naming the path), never acknowledged into the removed file.
    fill();
    try {
      for (const f of ['', '-wal', '-shm']) rmSync(`${db}${f}`, { force: true });
      await until('NOT_SERVING', async () => (await datapathHealth()) === Serving.NOT_SERVING, 10_000);
      await assert.rejects(c.rules.createRule({ rule: rule('web6', 7436, b1) }), (e: Error & { code?: Status }) => {
        assert.equal(e.code, Status.UNAVAILABLE, e.message);
        assert.ok(e.message.includes(`state store ${db} was removed under the running daemon`), e.message);
        return true;
      });
      assert.equal(await probe(PORT, b1), 20, 'the datapath forwards on');
      // No store holds the desired state, and none can be written: said as not writable, with why, in
      // GetStatus, the metric and `xdpctl status` (before: writable yes / true / 1 the whole time).
      await until(
        async () => JSON.stringify(await store()),
        async () => /could not be written in its place/.test((await store()).problem),
        10_000,
      );
      const s = await store();
      assert.equal(s.writable, false);
      assert.match(
        s.problem,
        /^the database file was removed under the running daemon: no store holds the desired state \(a fresh store could not be written in its place: .*ENOSPC/,
      );
      assert.ok(s.refusingSince, 'since when');
      assert.equal(await writable({ xdpctl_state_store_reason: s.problem }), 0);
      const cli = await xdpctl(d!.tcp, ['status']);
      assert.match(cli.stdout, /state store writable: +no: the database file was removed under the running daemon/);
    } finally {
      unfill();
    }
    await until(
      () => d!.output.slice(-3000),
      () => logged(/^STATE STORE .*state\.db WAS REMOVED UNDER THE RUNNING DAEMON/).length === 1,
      10_000,
    );
    assert.ok(existsSync(db), 'a fresh database is there');
    await c.rules.createRule({ rule: rule('web5', 7435, b1) });
    assert.deepEqual(await names(), ['web', 'web2', 'web5'], 'web6 was refused');
    assert.equal(await d!.stop(), 0);
    await start(); // was: refused ("the state store ... does not exist, but the pinned datapath ... forwards")
    assert.deepEqual(await names(), ['web', 'web2', 'web5'], 'the restart has every acknowledged change');
    assert.equal(await probe(7435, b1), 20);
    await c.rules.deleteRule({ name: 'web5' });
  });

  it('the pin root made writable by others is NOT_SERVING naming it, logged once, until it is 0700 again', async () => {
    await until('SERVING first', async () => (await datapathHealth()) === Serving.SERVING, 30_000);
    chmodSync(pinRoot, 0o777);
    await until('NOT_SERVING', async () => (await datapathHealth()) === Serving.NOT_SERVING, 10_000);
    await sleep(1500);
    const lines = logged(/^pin root .* is writable by others \(mode 0777\) under the running daemon/);
    assert.equal(lines.length, 1, d!.output.slice(-3000));
    assert.ok((await metric(d!.prometheus!, 'xdpctl_datapath_problems', {}))! >= 1, 'counted as a problem');
    assert.match(lines[0].msg, /chmod 0700/);
    assert.equal(await probe(PORT, b1), 20, 'the datapath forwards on');
    chmodSync(pinRoot, 0o700);
    await until('SERVING again', async () => (await datapathHealth()) === Serving.SERVING, 10_000);
    assert.equal(logged(/^pin root .* is ours alone again/).length, 1);
  });
});
