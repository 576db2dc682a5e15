/**
 * A process's open-files limit (RLIMIT_NOFILE) lowered under it with `prlimit --pid` and put back: what EMFILE
 * tests of the daemon do. `lower()` leaves no descriptor above the standard three (every socket, pipe or file the
 * process opens from then on fails EMFILE; what it holds open stays); `restore()` puts back the soft limit read
 * when the helper was made (idempotent, for `finally` and `after`).
 */
import { sh } from './env.js';

export function openFilesLimit(pid: number): { lower(): void; restore(): void } {
  const soft = sh('prlimit', ['--pid', String(pid), '--nofile', '-o', 'SOFT', '--noheadings']).trim();
  return {
    lower: () => void sh('prlimit', ['--pid', String(pid), '--nofile=3:']),
    restore: () => void sh('prlimit', ['--pid', String(pid), `--nofile=${soft}:`]),
  };
}
