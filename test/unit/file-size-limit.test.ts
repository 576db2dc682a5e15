/**
 * The file size limit (core/file-size-limit.ts): read from /proc/self/limits, and the file a refused write hit
 * found by its size against the limit (a write's margin below it), never a file further from it.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { efbigText, fileAtSizeLimit, fileSizeLimit } from '../../src/server/core/file-size-limit.js';

describe('file size limit', () => {
  it('reads RLIMIT_FSIZE as /proc/self/limits says it (this test process: unlimited, or a number)', () => {
    const l = fileSizeLimit();
    assert.ok(l === undefined || Number.isSafeInteger(l), String(l));
  });

  it('names the first file within a write of the limit; none when every file is further', () => {
    const dir = mkdtempSync(join(tmpdir(), 'xdpctl-fsize-'));
    try {
      const wal = join(dir, 'state.db-wal');
      const db = join(dir, 'state.db');
      writeFileSync(wal, Buffer.alloc(10_000));
      writeFileSync(db, Buffer.alloc(20_000));
      const margin = 4096 + 24;
      assert.deepEqual(fileAtSizeLimit([wal, db], margin, 10_000), { path: wal, size: 10_000, limit: 10_000 });
      assert.deepEqual(fileAtSizeLimit([wal, db], margin, 10_100), { path: wal, size: 10_000, limit: 10_100 });
      // The WAL is a write below it; the database is past it.
      assert.deepEqual(fileAtSizeLimit([wal, db], margin, 20_000), { path: db, size: 20_000, limit: 20_000 });
      assert.equal(fileAtSizeLimit([wal, db], margin, 1 << 30), undefined, 'far below the limit');
      assert.equal(fileAtSizeLimit([join(dir, 'absent')], margin, 1), undefined, 'a file that is not there');
      assert.equal(efbigText(1024), 'the file size limit (RLIMIT_FSIZE 1024 bytes) is reached (EFBIG)');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
