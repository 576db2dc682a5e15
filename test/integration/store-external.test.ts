/**
 * The daemon observes its state store as it observes the kernel (Controller.checkStore, store-drift.ts): rows
 * another process writes into state.db while the daemon runs (python3's sqlite3 module here, as a script or the
 * sqlite3 CLI would) are seen at the next reconciler pass (PRAGMA data_version), compared with the desired state
 * the daemon accepted and written back, one warning naming each: a rule's row deleted is restored, a row changed
 * is restored, a row added (a rule the daemon never accepted) is removed. A restart then starts with what the
 * daemon held and the kernel forwarded (was: the deleted rule stayed ACTIVE in the kernel, nothing said, and a
 * restart dropped it).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import Database from 'better-sqlite3';

import { type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, sleep, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const PORT = 7461;
const PORT2 = 7462;

describe('rows changed in the state store by another writer are observed and written back', kernelOnly(), () => {
  const lab = new Lab();
  const { id } = lab;
  const db = `/tmp/xdpctl-test-${id}-state/state.db`;
  let d: DaemonProcess;
  let c: Clients;
  let b1: Host;
  const rule = (name: string, port: number) => lab.apiRule(name, port, [backendOf(b1)]);
  /** Another process writes the database: python3's sqlite3 module (executescript: BEGIN/COMMIT in `sql` make one transaction). */
  const otherWriter = (sql: string) =>
    sh('python3', [
      '-c',
      'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()',
      db,
      sql,
    ]);
  /** name:port of each rule row on disk, read by SQLite in this process. */
  const onDisk = () => {
    const raw = new Database(db, { readonly: true });
    try {
      return (
        raw.prepare("SELECT name, json_extract(spec, '$.port') AS port FROM rules ORDER BY name").all() as {
          name: string;
          port: number;
        }[]
      ).map((r) => `${r.name}:${r.port}`);
    } finally {
      raw.close();
    }
  };
  const warned = (re: RegExp) => d.logLines().filter((r) => r.level === 40 && re.test(r.msg)).length;

  before(async () => {
    ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    ({ d, c } = await lab.start(['--log-level', 'info']));
    await c.rules.createRule({ rule: rule('web', PORT) });
    await c.rules.createRule({ rule: rule('web2', PORT2) });
  });
  after(() => lab.destroy());

  it('a row deleted, changed or added from outside is written back at the next pass, said once; a restart has the rules', async () => {
    await sleep(2500); // passes with nothing changed outside: nothing said
    assert.equal(warned(/by another writer/), 0, 'nothing said while nobody else writes');
    otherWriter("DELETE FROM rules WHERE name = 'web2'");
    await until(
      () => JSON.stringify(onDisk()),
      () => warned(/^rule web2 was removed from the state store by another writer; row restored$/) === 1,
      10_000,
    );
    assert.deepEqual(onDisk(), [`web:${PORT}`, `web2:${PORT2}`]);
    otherWriter(
      `BEGIN;
       UPDATE rules SET spec = json_set(spec, '$.port', 9999) WHERE name = 'web';
       INSERT INTO rules (name, spec, generation, create_time, update_time, kernel)
         SELECT 'ghost', spec, generation, create_time, update_time, NULL FROM rules WHERE name = 'web2';
       COMMIT;`,
    );
    await until(
      () => JSON.stringify(onDisk()),
      () =>
        warned(
          /^rule web was changed in the state store by another writer; row restored; rule ghost was added to the state store by another writer \(not a rule this daemon accepted: a restart would have applied it\); row removed$/,
        ) === 1,
      10_000,
    );
    assert.deepEqual(onDisk(), [`web:${PORT}`, `web2:${PORT2}`]);
    await sleep(2500); // more passes: each said once
    assert.equal(warned(/by another writer/), 2, d.output);
    // The rules are ACTIVE in the kernel and on disk: a restart has them, and forwards.
    assert.equal(await d.stop(), 0);
    ({ d, c } = await lab.start(['--log-level', 'info']));
    const names = (await c.rules.listRules({ pageSize: 0, pageToken: '' })).rules.map(
      (r) => `${r.name}:${r.match?.port}`,
    );
    assert.deepEqual(names, [`web:${PORT}`, `web2:${PORT2}`]);
    assert.equal((await lab.send(PORT2, [b1], 20, 20)).total, 20, 'web2 forwards after the restart');
  });
});
