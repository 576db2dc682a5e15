/**
 * The SQLite state store (core/store.ts) on a real file: WAL and
 * synchronous=FULL, the schema version and its refusal of newer ones, one
 * transaction per change (rollback leaves nothing), the one-time import of a
 * state.json, and the error table that turns what the disk said into a kind
 * and a message naming the path. Disk faults for real (full, read-only) are
 * in test/integration/state-faults.test.ts.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import Database from 'better-sqlite3';

import type { RuleSpec } from '../../src/server/core/model.js';
import { SCHEMA_VERSION, StateStore, storeError, WORKER_ROWS, type StoredRule } from '../../src/server/core/store.js';
import { ROOT } from '../helpers/env.js';

const dirs: string[] = [];
after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'xdpctl-store-'));
  dirs.push(d);
  return join(d, 'state');
}

/**
 * Run `code` (a TypeScript module) in a process of its own, from a file `name` beside `dir` (a file, not -e:
 * --input-type=module would reach the worker thread's CommonJS source too); killed after 20 s. Its exit code,
 * the signal that ended it, and what it wrote (stdout and stderr).
 */
async function runModule(
  dir: string,
  name: string,
  code: string,
): Promise<{ exit: number | null; signal: string | null; out: string }> {
  const script = join(dir, '..', name);
  writeFileSync(script, code);
  const child = spawn(process.execPath, ['--import', 'tsx', script], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const [exit, signal] = await new Promise<[number | null, string | null]>((r) =>
    child.once('exit', (c, sig) => r([c, sig])),
  );
  clearTimeout(timer);
  return { exit, signal, out };
}

const spec = (name: string, port = 7999): RuleSpec => ({
  name,
  protocol: 'udp',
  port,
  destination: '',
  sourcePrefixes: ['10.0.0.0/8'],
  ingressInterfaces: ['eth0'],
  backends: [{ ip: '10.1.0.2', mac: '02:00:00:00:00:02', interface: 'veth1', weight: 1 }],
  udpChecksum: 'update',
  labels: { team: 'net' },
});
const stored = (name: string, generation = 1): StoredRule => ({
  ...spec(name),
  generation,
  createTime: 1000,
  updateTime: 2000,
  kernel: { slot: 3, statsId: 4, backends: { '10.1.0.2@veth1': { id: 5, statsId: 6 } } },
});

describe('state store (SQLite)', () => {
  it('is WAL with synchronous=FULL, at the current schema version, and inspectable', async () => {
    const dir = tmp();
    const s = StateStore.open(dir);
    const t = await s.begin();
    t.putRule(stored('web'));
    t.putLink({ a: 'eth0', b: 'tap0', direction: 'both' });
    await t.commit();
    // Another connection (as the sqlite3 CLI would) sees the committed rows while the store is open.
    const raw = new Database(s.path, { readonly: true });
    assert.equal(raw.pragma('journal_mode', { simple: true }), 'wal');
    assert.equal(raw.pragma('user_version', { simple: true }), SCHEMA_VERSION);
    const row = raw.prepare("SELECT json_extract(spec, '$.port') AS port, generation FROM rules").get();
    assert.deepEqual(row, { port: 7999, generation: 1 });
    raw.close();
    assert.equal(s.synchronous(), 2, 'synchronous = FULL');
    s.close();
    assert.deepEqual(StateStore.open(dir).load(), {
      version: 1,
      rules: [stored('web')],
      links: [{ a: 'eth0', b: 'tap0', direction: 'both' }],
    });
  });

  it('one transaction per change: a rollback leaves nothing, a delete removes one row', async () => {
    const dir = tmp();
    const s = StateStore.open(dir);
    let t = await s.begin();
    t.putRule(stored('a'));
    t.putRule(stored('b'));
    await t.commit();
    t = await s.begin();
    t.putRule(stored('c'));
    t.deleteRule('a');
    await t.rollback();
    assert.deepEqual(
      s.load().rules.map((r) => r.name),
      ['a', 'b'],
    );
    t = await s.begin();
    t.deleteRule('a');
    await t.commit();
    await t.rollback(); // no-op after commit
    assert.deepEqual(
      s.load().rules.map((r) => r.name),
      ['b'],
    );
    s.close();
  });

  it('a change of WORKER_ROWS rows or more runs on the worker thread: committed, rolled back, refused as on the event loop', async () => {
    const dir = tmp();
    const s = StateStore.open(dir);
    const names = Array.from({ length: WORKER_ROWS + 44 }, (_, i) => `w${String(i).padStart(4, '0')}`);
    let t = await s.begin(names.length);
    for (const n of names) t.putRule(stored(n));
    t.putLink({ a: 'eth0', b: 'tap0', direction: 'both' });
    const committed = t.commit();
    assert.ok(committed instanceof Promise, 'committed on the worker thread');
    await committed;
    assert.deepEqual(
      s.load().rules.map((r) => r.name),
      names,
    );
    assert.deepEqual(s.load().rules[7], stored(names[7]));
    assert.deepEqual(s.load().links, [{ a: 'eth0', b: 'tap0', direction: 'both' }]);
    // Rolled back: nothing of it stays, and the event loop's connection writes at once afterwards.
    t = await s.begin(names.length);
    for (const n of names) t.putRule(stored(n, 2));
    t.deleteRule(names[0]);
    t.deleteLink('eth0|tap0|both');
    await t.rollback();
    assert.deepEqual(
      s.load().rules.map((r) => r.generation),
      names.map(() => 1),
    );
    t = await s.begin();
    t.deleteRule(names[1]);
    await t.commit();
    assert.equal(s.load().rules.length, names.length - 1);
    // Another connection holds the write lock: the commit is refused naming the path, nothing is written,
    // and the store writes again once the lock is gone.
    const other = new Database(s.path);
    other.exec('BEGIN IMMEDIATE');
    // Refused at BEGIN (answered by the worker thread before anything else of the change is done).
    await assert.rejects(s.begin(names.length), (e: Error & { kind?: string }) => {
      assert.equal(e.kind, 'busy');
      assert.match(
        e.message,
        new RegExp(`^begin a change: state store ${s.path}: another process holds the write lock`),
      );
      return true;
    });
    other.exec('ROLLBACK');
    other.close();
    assert.ok(
      s.load().rules.every((r) => r.generation === 1),
      'nothing of the refused change',
    );
    t = await s.begin(names.length);
    t.deleteRule(names[2]);
    for (let i = 3; i < names.length; i++) t.putRule(stored(names[i], 4));
    await t.commit();
    assert.deepEqual(
      s.load().rules.map((r) => `${r.name}:${r.generation}`),
      [`${names[0]}:1`, ...names.slice(3).map((n) => `${n}:4`)],
    );
    s.close();
  });

  it('imports an existing state.json once, then renames it', () => {
    const dir = tmp();
    StateStore.open(dir).close(); // creates the directory
    rmSync(join(dir, 'state.db'));
    const json = { version: 1, rules: [stored('old', 7)], links: [{ a: 'x', b: 'y', direction: 'a-to-b' }] };
    writeFileSync(join(dir, 'state.json'), JSON.stringify(json));
    const s = StateStore.open(dir);
    assert.deepEqual(s.load(), json);
    assert.ok(!existsSync(join(dir, 'state.json')));
    assert.deepEqual(JSON.parse(readFileSync(join(dir, 'state.json.imported'), 'utf8')), json);
    s.close();
    // A state.json appearing later is not imported over the database.
    writeFileSync(join(dir, 'state.json'), JSON.stringify({ version: 1, rules: [], links: [] }));
    const again = StateStore.open(dir);
    assert.deepEqual(
      again.load().rules.map((r) => r.name),
      ['old'],
    );
    again.close();
  });

  it('a corrupt state.json stops the start, left as it is, and nothing is created', () => {
    const dir = tmp();
    StateStore.open(dir).close();
    rmSync(join(dir, 'state.db'));
    writeFileSync(join(dir, 'state.json'), '{"version": 1, "rules": [');
    assert.throws(() => StateStore.open(dir), /state file .*state\.json is corrupt/);
    assert.equal(readFileSync(join(dir, 'state.json'), 'utf8'), '{"version": 1, "rules": [');
    assert.ok(!existsSync(join(dir, 'state.db')));
  });

  it('refuses a database from a newer xdpctld, and a corrupt one, naming the path; both left as they are', () => {
    const dir = tmp();
    StateStore.open(dir).close();
    const path = join(dir, 'state.db');
    const raw = new Database(path);
    raw.pragma('user_version = 42');
    raw.close();
    assert.throws(
      () => StateStore.open(dir),
      (e: Error & { kind: string }) => {
        assert.match(e.message, /state\.db is at schema version 42, newer than this xdpctld/);
        assert.equal(e.kind, 'precondition');
        return true;
      },
    );
    writeFileSync(path, 'x'.repeat(8192));
    assert.throws(() => StateStore.open(dir), /state store .*state\.db: the database is corrupt/);
    assert.equal(readFileSync(path, 'utf8'), 'x'.repeat(8192));
  });

  it('maps what the disk said to a kind and a message naming the path', () => {
    const cases: [string, string, RegExp][] = [
      ['SQLITE_FULL', 'exhausted', /disk is full \(ENOSPC\)/],
      ['SQLITE_IOERR_SHMSIZE', 'exhausted', /disk is full/],
      ['SQLITE_READONLY', 'precondition', /read-only \(EROFS\)/],
      ['SQLITE_READONLY_DBMOVED', 'precondition', /read-only/],
      ['SQLITE_IOERR_WRITE', 'unavailable', /I\/O error \(EIO\)/],
      ['SQLITE_IOERR_FSYNC', 'unavailable', /I\/O error \(EIO\)/],
      ['SQLITE_BUSY', 'busy', /write lock/],
      ['ENOSPC', 'exhausted', /ENOSPC/],
      ['EROFS', 'precondition', /EROFS/],
      ['EIO', 'unavailable', /EIO/],
    ];
    for (const [code, kind, re] of cases) {
      const e = storeError(Object.assign(new Error('x'), { code }), '/var/lib/xdpctl/state.db', 'commit');
      assert.equal(e.kind, kind, code);
      assert.match(e.message, re, code);
      assert.match(e.message, /^commit: state store \/var\/lib\/xdpctl\/state\.db: /, code);
      assert.ok(e.message.includes(code), code);
    }
  });
  it('a database file removed or replaced under an open store refuses the change (UNAVAILABLE naming the path), never writes it nowhere', async () => {
    const dir = tmp();
    const s = StateStore.open(dir);
    let t = await s.begin();
    t.putRule(stored('a'));
    await t.commit();
    assert.equal(s.fileChanged(), undefined);
    for (const f of ['', '-wal', '-shm']) rmSync(`${s.path}${f}`, { force: true });
    assert.equal(s.fileChanged(), 'was removed');
    await assert.rejects(s.begin(), (e: Error & { kind?: string }) => {
      assert.equal(e.kind, 'unavailable');
      assert.ok(e.message.startsWith(`state store ${s.path} was removed under the running daemon`), e.message);
      return true;
    });
    assert.equal(existsSync(s.path), false, 'no empty database made in its place');
    writeFileSync(s.path, 'another file');
    assert.equal(s.fileChanged(), 'was replaced by another file');
    s.close();
    // Removed between BEGIN and COMMIT: not acknowledged either.
    const dir2 = tmp();
    const s2 = StateStore.open(dir2);
    t = await s2.begin();
    t.putRule(stored('b'));
    for (const f of ['', '-wal', '-shm']) rmSync(`${s2.path}${f}`, { force: true });
    await assert.rejects(Promise.resolve(t.commit()), /was removed under the running daemon/);
    s2.close();
  });

  it('a store that takes writes reports no refusal, before and after a probe', async () => {
    const dir = tmp();
    const s = StateStore.open(dir);
    assert.equal(s.refusal(), undefined);
    await s.probe(); // writable, file system neither read-only nor full: nothing to do
    assert.equal(s.refusal(), undefined);
    s.close();
  });

  it('a request awaited on the worker thread holds the process until it is answered (the idle thread does not)', async () => {
    // A process with nothing else alive: before, after a change had released the worker thread (unref), a
    // probe or a read awaited there let the event loop run empty: Node exited (13 here, for the unsettled
    // top-level await; 0 in the daemon, half-way through its stop) with the answer never taken.
    const dir = tmp();
    const code =
      `import { StateStore } from '${ROOT}src/server/core/store.ts';` +
      `const s = StateStore.open(${JSON.stringify(dir)});` +
      `await s.probe(); console.log('probe');` +
      `const t = await s.begin(); t.deleteRule('x'); await t.commit(); console.log('commit');` +
      `await s.probe(); console.log('probe');` +
      // Not closed: the idle worker thread must not hold the process either (the test's 20 s kill).
      `console.log(JSON.stringify(await s.readIfChanged(true)));`;
    const { exit, signal, out } = await runModule(dir, 'awaited.mts', code);
    assert.equal(signal, null, `held the process (killed after 20 s): ${out}`);
    assert.deepEqual(
      [exit, out.trim().split('\n')],
      [0, ['probe', 'commit', 'probe', JSON.stringify({ rules: [], links: [] })]],
      out,
    );
  });

  it('closed, then the process exits at once (as the daemon does): one state.db, its WAL checkpointed and removed', async () => {
    // Before, close() terminated the worker thread with its connection open and closed the one here first
    // (not the last: no checkpoint): the process's exit left state.db-wal beside state.db, and a state.db
    // damaged by hand then opened from the WAL's pages (start-refused: a corrupt store not refused).
    const dir = tmp();
    const code =
      `import { StateStore } from '${ROOT}src/server/core/store.ts';` +
      `const s = StateStore.open(${JSON.stringify(dir)});` +
      `const t = await s.begin(); t.deleteRule('x'); await t.commit();` +
      // A pass's probe still under way when the stop closes the store.
      `void s.probe(); await s.close(); process.exit(0);`;
    const { exit, out } = await runModule(dir, 'close-exit.mts', code);
    assert.equal(exit, 0, out);
    const path = join(dir, 'state.db');
    assert.deepEqual([existsSync(`${path}-wal`), existsSync(`${path}-shm`)], [false, false], 'WAL and shm left');
    const s = StateStore.open(dir);
    assert.equal(s.generation, 1, 'the change is in state.db');
    await s.close();
  });

  it("counts its commits (meta generation, in the change's own transaction), on the event loop and the worker thread", async () => {
    const dir = tmp();
    let s = StateStore.open(dir);
    const told: number[] = [];
    s.onCommitted = (g) => told.push(g);
    assert.equal(s.generation, 0, 'a new store records none');
    let t = await s.begin();
    t.putRule(stored('a'));
    await t.commit();
    t = await s.begin();
    t.putRule(stored('b'));
    await t.rollback(); // not a commit: not counted
    const names = Array.from({ length: WORKER_ROWS }, (_, i) => `w${i}`);
    t = await s.begin(names.length);
    for (const n of names) t.putRule(stored(n));
    await t.commit();
    // A refused change (another connection holds the write lock) is not counted either.
    const other = new Database(s.path);
    other.exec('BEGIN IMMEDIATE');
    await assert.rejects(s.begin(names.length));
    await assert.rejects(s.begin());
    other.exec('ROLLBACK');
    other.close();
    await s.replaceAll({ version: 1, rules: [stored('a')], links: [] });
    assert.deepEqual(told, [1, 2, 3]);
    assert.equal(s.generation, 3);
    const meta = () => {
      const db = new Database(s.path, { readonly: true });
      try {
        return (db.prepare("SELECT value FROM meta WHERE key = 'generation'").get() as { value: string }).value;
      } finally {
        db.close();
      }
    };
    assert.equal(meta(), '3', 'on disk, read by SQLite itself');
    s.close();
    s = StateStore.open(dir);
    assert.equal(s.generation, 3, 'read back at open');
    assert.ok(s.setGeneration(10));
    t = await s.begin();
    t.deleteRule('a');
    await t.commit();
    assert.equal(s.generation, 11);
    assert.equal(meta(), '11');
    s.close();
  });
});
