/**
 * Pages of list responses that stay within a default gRPC client's 4 MiB
 * receive limit (grpc-js, gRPC's C core and Go all default to 4 MiB): a page
 * holds at most page_size items and stops before MAX_PAGE_BYTES encoded (at
 * least one item), and continues after the key of its last item. Page tokens
 * are opaque to clients, and one this server did not issue is
 * INVALID_ARGUMENT on page_token (AIP-158). Pure: no I/O, no core state.
 */
import { CoreError } from '../core/errors.js';

/** Encoded bytes a page holds at most: half a default client's 4 MiB limit, room for headers and growth. */
export const MAX_PAGE_BYTES = 2 * 1024 * 1024;
/** page_size 0 means this many; larger values are treated as it. */
export const MAX_PAGE_ITEMS = 1000;

/** A token continuing after `key` in the collection `kind`: base64url of "kind:key". */
export function pageToken(kind: string, key: string): string {
  return Buffer.from(`${kind}:${key}`).toString('base64url');
}

/**
 * The key a token of `kind` continues after; `valid` checks the key is one
 * the collection can hold. A token that is not canonical base64url, of
 * another kind or holding an impossible key fails INVALID_ARGUMENT.
 */
export function pageTokenKey(kind: string, token: string, valid: (key: string) => boolean): string {
  const text = Buffer.from(token, 'base64url').toString('utf8');
  const key = text.startsWith(`${kind}:`) ? text.slice(kind.length + 1) : undefined;
  if (key === undefined || pageToken(kind, key) !== token || !valid(key)) {
    throw CoreError.invalid([
      { field: 'page_token', description: 'is not a next_page_token this server returned (use "" for the first page)' },
    ]);
  }
  return key;
}

/**
 * One page of `sorted` (ascending by `key`) after `after`: at most `pageSize`
 * items (0: MAX_PAGE_ITEMS) and MAX_PAGE_BYTES as `bytes` counts them, at
 * least one; `next` is the token of the page after it, '' on the last.
 */
export function takePage<T>(
  sorted: T[],
  opts: {
    kind: string;
    key: (t: T) => string;
    bytes: (t: T) => number;
    pageSize: number;
    after?: string;
    maxBytes?: number;
  },
): { items: T[]; next: string } {
  const size = opts.pageSize === 0 ? MAX_PAGE_ITEMS : Math.min(opts.pageSize, MAX_PAGE_ITEMS);
  const max = opts.maxBytes ?? MAX_PAGE_BYTES;
  let start = 0;
  if (opts.after !== undefined) {
    const after = opts.after;
    while (start < sorted.length && !(opts.key(sorted[start]) > after)) start++;
  }
  const items: T[] = [];
  let total = 0;
  let i = start;
  for (; i < sorted.length && items.length < size; i++) {
    const n = opts.bytes(sorted[i]) + 8; // + field tag and length
    if (items.length > 0 && total + n > max) break;
    items.push(sorted[i]);
    total += n;
  }
  const next = i < sorted.length && items.length ? pageToken(opts.kind, opts.key(items[items.length - 1])) : '';
  return { items, next };
}

/**
 * The leading entries of `list` that fit in `maxBytes` (each counted as its
 * UTF-8 length plus 3 bytes of tag and length), and how many were left out.
 */
export function capStrings(list: string[], maxBytes: number): { kept: string[]; omitted: number } {
  let total = 0;
  for (let i = 0; i < list.length; i++) {
    total += Buffer.byteLength(list[i]) + 3;
    if (total > maxBytes) return { kept: list.slice(0, i), omitted: list.length - i };
  }
  return { kept: list, omitted: 0 };
}
