/**
 * The disk probe process (disk-probe.ts): started once by the daemon and kept, it rewrites one byte of the state
 * directory's probe file and fsyncs it each time the daemon asks, and says how that ended. A disk that stops
 * completing writes (a frozen file system) holds this process only, never the daemon.
 *
 * argv: the probe file. stdout: `ready` once started; then one line per request read on stdin (any line): `ok`
 * (written and fsynced) or the error's code (`EROFS`, `ENOSPC`, `ENOENT`: the disk refused it, also an answer).
 * The file is opened for each request (created 0600 when missing, never truncated) and closed after it: a state
 * directory removed and made again is probed where it is now. At EOF on stdin (the daemon stopped or is gone) it
 * exits. Signals that stop the daemon's group (SIGTERM, SIGINT, SIGHUP) do not stop it before that.
 *
 * It must not: fork (one process for the daemon's life: a fork each pass was the design this replaces); import
 * more than node:fs (its memory is the daemon's cgroup's).
 */
import { closeSync, constants, fsyncSync, openSync, writeSync } from 'node:fs';

const file = process.argv[2];
const zero = Buffer.alloc(1);
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(sig, () => {});

/** One write and fsync of the file: `ok` or the error's code. */
function probe(): string {
  let fd: number | undefined;
  try {
    fd = openSync(file, constants.O_WRONLY | constants.O_CREAT, 0o600);
    writeSync(fd, zero, 0, 1, 0);
    fsyncSync(fd);
    return 'ok';
  } catch (e) {
    return String((e as { code?: unknown }).code ?? 'EIO');
  } finally {
    if (fd !== undefined) {
      try {
        closeSync(fd);
      } catch {
        // its answer is the write's and the fsync's
      }
    }
  }
}

const answer = (line: string) => writeSync(1, `${line}\n`);
let rest = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk: string) => {
  const lines = (rest + chunk).split('\n');
  rest = lines.pop()!;
  for (let i = 0; i < lines.length; i++) answer(probe());
});
process.stdin.on('end', () => process.exit(0));
answer('ready');
