/**
 * A state store write refused by the file size limit is said as that limit, not as an I/O error or a full disk (a
 * newcomer's review, finding 2). The real daemon gets RLIMIT_FSIZE at its WAL's size (`prlimit --pid`): Node
 * ignores SIGXFSZ, so SQLite's next append gets EFBIG (SQLITE_IOERR_WRITE); at the WAL's size plus 100 bytes, the
 * append is cut short at the limit (SQLITE_FULL). Each time the CreateRule is refused RESOURCE_EXHAUSTED with
 * "the file size limit (RLIMIT_FSIZE N bytes) is reached writing .../state.db-wal (EFBIG)", nothing half-applied
 * (kernel maps and ListRules unchanged), GetStatus writes_refused and state_store.problem say the same; once the
 * limit is lifted the store takes writes again without a change (the reconciler's probe) and the change is made.
 * Before: UNAVAILABLE "the disk reported an I/O error (EIO)", then RESOURCE_EXHAUSTED "the disk is full (ENOSPC)"
 * on a disk with room.
 */
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';

import type { Clients, DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import type { Host } from '../helpers/topology.js';

describe('a state store write past the file size limit', kernelOnly(), () => {
  const lab = new Lab();
  let d: DaemonProcess;
  let c: Clients;
  let b1: Host;

  before(async () => {
    ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    ({ d, c } = await lab.start(['--log-level', 'info']));
  });
  after(() => lab.destroy());

  const rule = (name: string, port: number) => lab.apiRule(name, port, [backendOf(b1)]);
  const names = async () => (await c.rules.listRules({})).rules.map((r) => r.name).sort();
  const limit = (bytes: number | 'unlimited') => sh('prlimit', ['--pid', String(d.child.pid), `--fsize=${bytes}:`]);

  it('is refused naming the limit and the file, half-applies nothing, and is taken once the limit is lifted', async (t) => {
    await c.rules.createRule({ rule: rule('a', 7401) });
    const wal = `${d.stateDir}/state.db-wal`;
    let port = 7402;
    // At the WAL's size: the append fails with EFBIG; 100 bytes beyond: it is cut short at the limit.
    for (const beyond of [0, 100]) {
      const size = statSync(wal).size;
      const lim = size + beyond;
      const maps = d.dumpMaps();
      const before = await names();
      limit(lim);
      let message = '';
      try {
        await assert.rejects(c.rules.createRule({ rule: rule(`b${beyond}`, port) }), (e: Error & { code?: Status }) => {
          message = e.message;
          return true;
        });
        t.diagnostic(`WAL ${size} bytes, limit ${lim}: ${message}`);
        const said = new RegExp(
          `the file size limit \\(RLIMIT_FSIZE ${lim} bytes\\) is reached writing ${wal.replace(/[.]/g, '\\.')} \\(EFBIG\\)`,
        );
        assert.match(message, said);
        assert.match(message, /RESOURCE_EXHAUSTED/);
        assert.deepEqual(d.dumpMaps(), maps, 'kernel maps unchanged');
        assert.deepEqual(await names(), before, 'no rule added');
        const s = await c.daemon.getStatus({});
        assert.equal(s.acceptsWrites, false);
        assert.match(s.writesRefused, said);
        assert.match(s.stateStore!.problem, said);
      } finally {
        limit('unlimited');
      }
      // The reconciler's probe sees the store take writes again; the change is made then.
      await until('the store takes writes again', async () => (await c.daemon.getStatus({})).acceptsWrites, 10_000);
      await c.rules.createRule({ rule: rule(`b${beyond}`, port++) });
    }
    assert.deepEqual(await names(), ['a', 'b0', 'b100']);
  });
});
