// Test-only failpoint, preloaded into a daemon under test with
// NODE_OPTIONS=--import=<this file>: while the file named by
// XDPCTL_TEST_SQLITE_EIO exists, every COMMIT through better-sqlite3 fails as
// a disk I/O error would (SqliteError SQLITE_IOERR_WRITE), after SQLite
// rolled the transaction back. Nothing in the product knows about it.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';

const trigger = process.env.XDPCTL_TEST_SQLITE_EIO;
if (trigger) {
  const require = createRequire(`${process.cwd()}/`);
  const Database = require('better-sqlite3');
  const exec = Database.prototype.exec;
  Database.prototype.exec = function (sql) {
    if (existsSync(trigger) && /^\s*COMMIT\b/i.test(sql)) {
      exec.call(this, 'ROLLBACK');
      throw new Database.SqliteError('disk I/O error', 'SQLITE_IOERR_WRITE');
    }
    return exec.call(this, sql);
  };
}
