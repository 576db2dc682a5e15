/**
 * One log line for many findings of one kind (a start that removes 3 000 rules the state store lacks): the count,
 * exact, and the first few named, at the finding's level; each of the others on its own line at debug, so that
 * nothing found is lost to an operator who asks for it (--log-level debug). Before, such a start wrote one error
 * line per rule: ~1.9 MB in 200 ms, more than --log-buffer-bytes, so that a third of them were dropped and the
 * operator saw neither the whole nor the count.
 *
 * It must not: count a finding it does not name or leave one out of the count; write more than one line at the
 * finding's level per call. It holds no state and does no I/O but the logger's.
 */
import type { Logger } from '../log.js';

/** How many findings a summary line names (the rest at debug). */
export const NAMED_IN_SUMMARY = 10;

/** "a; b; c" or, past `max`, "a; b; ...; j; and 2990 more". */
export function someNames(names: readonly string[], max = NAMED_IN_SUMMARY): string {
  if (names.length <= max) return names.join('; ');
  return `${names.slice(0, max).join('; ')}; and ${names.length - max} more`;
}

/** How {@link logFindings} says findings of one kind. */
export interface FindingsText<T> {
  /** How one is named in the summary line ("slot 12: udp port 7999 on veth1 (ifindex 4), any destination"). */
  name(item: T): string;
  /** The summary line's message from the exact count and the names ("a; b; and 2990 more (each at debug)"). */
  text(count: number, named: string): string;
  /** Fields of the summary line; `count` (every finding) and `named` (how many are named) are added. */
  fields?: object;
  /** One finding not named in the summary, on its own line at debug: its fields and message. */
  detail(item: T): [object, string];
  /** How many are named in the summary line (default {@link NAMED_IN_SUMMARY}). */
  max?: number;
}

/**
 * Log `items` (findings of one kind) as one line at `level`, naming the first `max` and counting all, and each of the
 * others at debug. Nothing when there are none.
 */
export function logFindings<T>(
  log: Pick<Logger, 'debug' | 'warn' | 'error'>,
  level: 'warn' | 'error',
  items: readonly T[],
  o: FindingsText<T>,
): void {
  if (items.length === 0) return;
  const max = o.max ?? NAMED_IN_SUMMARY;
  const named = items.slice(0, max);
  const more = items.length - named.length;
  const names = named.map((i) => o.name(i)).join('; ') + (more ? `; and ${more} more (each at debug)` : '');
  log[level]({ ...o.fields, count: items.length, named: named.length }, o.text(items.length, names));
  for (let i = max; i < items.length; i++) {
    const [fields, msg] = o.detail(items[i]);
    log.debug(fields, msg);
  }
}
