/**
 * A Logger (src/server/log.ts) that keeps every line in memory, for tests that check what the daemon says:
 * `const lines: LogLine[] = []; new Controller(dp, { log: captureLog(lines), ... })`.
 */
import type { Logger } from '../../src/server/log.js';

/** One captured line: its level, message and fields (a child's bindings merged in). */
export interface LogLine {
  level: string;
  msg: string;
  fields: Record<string, unknown>;
}

/** A Logger appending to `lines`; its children share `lines` and add their bindings to each line's fields. */
export function captureLog(lines: LogLine[], bindings: object = {}): Logger {
  const at =
    (level: string) =>
    (obj: object, msg = '') =>
      lines.push({ level, msg, fields: { ...bindings, ...obj } });
  return {
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    child: (b) => captureLog(lines, { ...bindings, ...b }),
  };
}
