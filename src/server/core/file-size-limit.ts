/**
 * The process's file size limit (RLIMIT_FSIZE), as /proc/self/limits says it now. Node ignores SIGXFSZ, so a
 * write past the limit fails with EFBIG (or is cut short at the limit) instead of ending the process; SQLite
 * turns that into SQLITE_IOERR_WRITE (or SQLITE_FULL for a short write). What is said about such a failure names
 * the limit, not an I/O error or a full disk.
 *
 * This module reads /proc only; it writes nothing.
 */
import { readFileSync, statSync } from 'node:fs';

/** The soft RLIMIT_FSIZE in bytes; undefined when unlimited or unknown (no /proc). */
export function fileSizeLimit(): number | undefined {
  let text: string;
  try {
    text = readFileSync('/proc/self/limits', 'utf8');
  } catch {
    return undefined;
  }
  // "Max file size             1048576              unlimited            bytes"
  const m = /^Max file size\s+(\S+)/m.exec(text);
  if (!m || m[1] === 'unlimited') return undefined;
  const n = Number(m[1]);
  return Number.isSafeInteger(n) ? n : undefined;
}

/**
 * The first of `files` whose size leaves less than `margin` bytes (one write: a page and its WAL frame header)
 * below the file size limit: the file a failed write was refused on by the limit. Undefined when there is no
 * limit or no file is that close to it.
 */
export function fileAtSizeLimit(
  files: string[],
  margin: number,
  limit = fileSizeLimit(),
): { path: string; size: number; limit: number } | undefined {
  if (limit === undefined) return undefined;
  for (const path of files) {
    let size: number;
    try {
      size = statSync(path).size;
    } catch {
      continue;
    }
    if (size + margin > limit) return { path, size, limit };
  }
  return undefined;
}

/** "the file size limit (RLIMIT_FSIZE N bytes) is reached (EFBIG)", or without the number when it is not known. */
export function efbigText(limit = fileSizeLimit()): string {
  return limit === undefined
    ? 'the file is too large (EFBIG)'
    : `the file size limit (RLIMIT_FSIZE ${limit} bytes) is reached (EFBIG)`;
}
