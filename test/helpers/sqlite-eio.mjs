// Test-only failpoint, preloaded into a daemon under test with
// NODE_OPTIONS=--import=<this file>: while the file named by
// XDPCTL_TEST_SQLITE_EIO exists, every COMMIT through better-sqlite3 fails as
// a disk I/O error would (SqliteError SQLITE_IOERR_WRITE), after SQLite
// rolled the transaction back: on the main thread, and on the state store's
// worker thread (where every change commits), whose evaluated source gets the
// same patch first. Nothing in the product knows about it.
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { existsSync } from 'node:fs';

/** The patch, as source run first in a worker thread (CommonJS) too. */
const patch = (trigger, sqlite) => `{
  const { existsSync } = require('node:fs');
  const Database = require(${JSON.stringify(sqlite)});
  const exec = Database.prototype.exec;
  Database.prototype.exec = function (sql) {
    if (existsSync(${JSON.stringify(trigger)}) && /^\\s*COMMIT\\b/i.test(sql)) {
      exec.call(this, 'ROLLBACK');
      throw new Database.SqliteError('disk I/O error', 'SQLITE_IOERR_WRITE');
    }
    return exec.call(this, sql);
  };
}
`;

const trigger = process.env.XDPCTL_TEST_SQLITE_EIO;
if (trigger) {
  const require = createRequire(`${process.cwd()}/`);
  const sqlite = require.resolve('better-sqlite3');
  const Database = require(sqlite);
  const exec = Database.prototype.exec;
  Database.prototype.exec = function (sql) {
    if (existsSync(trigger) && /^\s*COMMIT\b/i.test(sql)) {
      exec.call(this, 'ROLLBACK');
      throw new Database.SqliteError('disk I/O error', 'SQLITE_IOERR_WRITE');
    }
    return exec.call(this, sql);
  };
  const threads = require('node:worker_threads');
  const Worker = threads.Worker;
  threads.Worker = class extends Worker {
    constructor(source, options) {
      super(options?.eval ? patch(trigger, options.workerData?.sqlite ?? sqlite) + source : source, options);
    }
  };
  syncBuiltinESMExports();
}
