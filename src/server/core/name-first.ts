/**
 * Saying many like things a start did (rule slots it cleared, entries it emptied) without flooding the log: the
 * first {@link NAMED_FIRST} each in a line of their own, the rest in one summary line that gives their exact count
 * and their keys as ranges, and each of the rest again at debug level for an operator who wants every line. A
 * start after a kill in the middle of a 3 000-rule change said 3 000 error lines of ~430 bytes, more than the
 * default 1 MiB of lines that may wait for a slow reader: beyond it lines were dropped (counted) and the count at
 * the end was all that was certain. Pure: no I/O but what the callbacks do.
 */

/** How many of many like things are named each in a line of its own. */
export const NAMED_FIRST = 20;

/** Ranges the summary line spells out at most (then the count of those left out): its length stays bounded. */
export const RANGES_SAID = 200;

/**
 * Call `each(item, true)` for the first `limit` items, then (when more are left) `rest(left, ranges)` once, then
 * `each(item, false)` for every item left (the caller says those at debug level). `ranges`: the keys of the items
 * left as `a-b` ranges in order (`key` gives an item's number), at most {@link RANGES_SAID}, then how many ranges
 * and items were left out of the text ("… and 12 more ranges (40 keys)"). Returns how many items there were.
 */
export function nameFirst<T>(
  items: readonly T[],
  key: (item: T) => number,
  each: (item: T, named: boolean) => void,
  rest: (left: readonly T[], ranges: string) => void,
  limit = NAMED_FIRST,
): number {
  for (const item of items.slice(0, limit)) each(item, true);
  const left = items.slice(limit);
  if (!left.length) return items.length;
  rest(left, rangesText(left.map(key)));
  for (const item of left) each(item, false);
  return items.length;
}

/** Numbers as sorted ranges: "3, 5-9, 12"; beyond `max` ranges, "… and R more ranges (N numbers)". */
export function rangesText(nums: readonly number[], max = RANGES_SAID): string {
  const sorted = [...new Set(nums)].sort((a, b) => a - b);
  const ranges: [number, number][] = [];
  for (const n of sorted) {
    const last = ranges.at(-1);
    if (last && n === last[1] + 1) last[1] = n;
    else ranges.push([n, n]);
  }
  const said = ranges.slice(0, max).map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`));
  const out = ranges.slice(max);
  if (!out.length) return said.join(', ');
  const count = out.reduce((n, [a, b]) => n + b - a + 1, 0);
  return `${said.join(', ')} … and ${out.length} more ranges (${count} numbers)`;
}
