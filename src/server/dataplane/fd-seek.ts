/**
 * Moving a descriptor's file offset (lseek), which Node does not offer: what the log sink needs to take a line cut
 * short back out of a log file opened without O_APPEND (../log-sink.ts): once the cut bytes are truncated away, the
 * next write must go where they began, not past them (a hole of NUL bytes).
 *
 * It must not: be used on anything but a regular file the caller writes.
 */
import koffi from 'koffi';

import { errnoName } from './errors.js';

const libc = koffi.load('libc.so.6');
const lseek = libc.func('int64_t lseek(int fd, int64_t offset, int whence)');

const SEEK_SET = 0;

/** Set `fd`'s file offset to `pos` (lseek SEEK_SET); throws an error with the errno name as its code. */
export function seekFd(fd: number, pos: number): void {
  const r = Number(lseek(fd, pos, SEEK_SET));
  if (r !== pos) {
    const code = errnoName(koffi.errno());
    throw Object.assign(new Error(`${code}: lseek ${fd} to ${pos}`), { code });
  }
}
