/**
 * A state disk the store's own WAL filled (a review's MED-2): a 4 MB tmpfs as the state directory, 3000-rule
 * ApplyRules until one is refused SQLITE_FULL. What the store then says about its disk comes from what was observed:
 * the refused change (its size, its time) and statvfs, not a 1-byte write probe that fits into space the WAL already
 * holds (was: "state store writable: yes", "accepts changes: yes", datapath health SERVING, no log line naming
 * ENOSPC, an audit record with no reason). Said in GetStatus, `xdpctl status`, the xdpctl.datapath health and one
 * log line; cleared, logged once, when a write of the refused size works after space is freed; the change then lands.
 */
import assert from 'node:assert/strict';
import { mkdirSync, statSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import Database from 'better-sqlite3';
import { Status } from 'nice-grpc';
import { HealthCheckResponse_ServingStatus as Serving } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { xdpctl, type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { emptyDisk, fillDisk, kernelOnly, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const MANY = 3000;

describe('a state disk filled by the WAL is said full from what was observed', kernelOnly(), () => {
  const lab = new Lab();
  const { id } = lab;
  const stateDir = `/tmp/xdpctl-test-${id}-state`;
  const db = `${stateDir}/state.db`;
  let d: DaemonProcess | undefined;
  let c: Clients;
  let b1: Host;

  const store = async () => (await c.daemon.getStatus({})).stateStore!;
  const datapathHealth = async () => (await c.health.check({ service: 'xdpctl.datapath' })).status;
  const records = () =>
    d!.output
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { msg: string; audit?: boolean; method?: string; code?: string; reason?: string });
  const logged = (re: RegExp) => records().filter((r) => re.test(r.msg));
  /** MANY rules, each row different in round `round` (every row of the store rewritten). */
  const many = (round: number, note = '') =>
    Array.from({ length: MANY }, (_, i) =>
      lab.apiRule(`r${i}`, 20000 + i, [backendOf(b1)], { round: `r${round}-${'x'.repeat(40)}${note}` }),
    );

  before(async () => {
    ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    mkdirSync(stateDir, { recursive: true });
    sh('mount', ['-t', 'tmpfs', '-o', 'size=4m,mode=0700', 'tmpfs', stateDir]);
    ({ d, c } = await lab.start(['--log-level', 'info', '--max-rules', String(MANY + 96)]));
  });
  after(() => shQuiet('umount', ['-l', stateDir])); // lazily: the daemon may still hold the database open
  after(() => lab.destroy());

  let round = 0;
  const apply = (r: number, note = '') =>
    c.rules.applyRules({ rules: many(r, note), validateOnly: false }, { signal: AbortSignal.timeout(120_000) });

  it('3000-rule ApplyRules again and again on a 4 MB state disk: the WAL never fills it (checkpointed and truncated)', async () => {
    // Before: round 3 refused SQLITE_FULL, the WAL holding the disk (4 MB, every change in it, 4 KB in state.db).
    for (; round < 6; round++) await apply(round);
    assert.ok(statSync(`${db}-wal`).size < 4 * 1024 * 1024 - statSync(db).size, 'the WAL leaves room');
  });

  it('a change refused SQLITE_FULL is the fact: status, CLI, health, one log line and the audit say so until a write of its size works', async () => {
    await apply(round++);
    // An operator's sqlite3 (a backup) checkpoints the WAL: it keeps its size, and the next write reuses that space
    // from its start, so a small write (the 1-byte probe) works on a disk with nothing free.
    const other = new Database(db, { timeout: 1000 });
    try {
      other.pragma('wal_checkpoint(PASSIVE)');
    } finally {
      other.close();
    }
    fillDisk(stateDir);
    let refused: (Error & { code?: Status }) | undefined;
    try {
      try {
        await apply(round, 'y'.repeat(20)); // larger rows than the WAL's space holds
      } catch (e) {
        refused = e as Error & { code?: Status };
      }
      assert.ok(refused, 'the change is refused');
      assert.equal(refused.code, Status.RESOURCE_EXHAUSTED, refused.message);
      assert.match(refused.message, /disk is full \(ENOSPC\) \[SQLITE_FULL\]/);
      await until(
        async () => JSON.stringify(await store()),
        async () => !(await store()).writable,
        10_000,
      );
      await sleep(2500); // more reconciler passes and write probes: still refused, one log line
      const s = await store();
      assert.equal(s.writable, false, JSON.stringify(s));
      assert.match(
        s.problem,
        /^the disk is full \(ENOSPC\): \d+ bytes free of 4194304 \(statvfs\), the last change \(of ~\d+ bytes\) refused at \d\d:\d\d:\d\d UTC \[SQLITE_FULL\]$/,
      );
      const st = await c.daemon.getStatus({});
      assert.deepEqual([st.serving, st.acceptsWrites], [true, false]);
      assert.equal(await datapathHealth(), Serving.NOT_SERVING);
      const cli = await xdpctl(d!.tcp, ['status']);
      assert.match(cli.stdout, /accepts changes: +no: the state store refuses writes: the disk is full \(ENOSPC\): /);
      assert.match(
        cli.stdout,
        /state store writable: +no: the disk is full \(ENOSPC\): \d+ bytes free of \d+ \(statvfs\)/,
      );
      assert.equal(
        logged(/^state store .* refuses writes: the disk is full \(ENOSPC\)/).length,
        1,
        d!.output.slice(-4000),
      );
      const audit = records().filter((r) => r.audit && r.method === '/xdpctl.v1.RuleService/ApplyRules');
      const last = audit[audit.length - 1];
      assert.equal(last?.code, 'RESOURCE_EXHAUSTED', JSON.stringify(last));
      assert.match(last.reason ?? '', /the disk is full \(ENOSPC\) \[SQLITE_FULL\]/, JSON.stringify(last));
    } finally {
      emptyDisk(stateDir);
    }
    // Space again: a write of the refused size works (the write probe), said and logged once; the change lands.
    await until(
      async () => JSON.stringify(await store()),
      async () => (await store()).writable,
      15_000,
    );
    await until('datapath health SERVING again', async () => (await datapathHealth()) === Serving.SERVING, 15_000);
    assert.equal(logged(/^state store .* takes writes again/).length, 1, d!.output.slice(-4000));
    await apply(round, 'y'.repeat(20));
    // (Right after a change that long the disk probe's last answer may be seconds old: "cannot be told" until the next.)
    await until(
      async () => JSON.stringify(await store()),
      async () => (await store()).writable,
      15_000,
    );
    assert.equal(logged(/^state store .* refuses writes/).length, 1, 'no refusal after it');
  });
});
