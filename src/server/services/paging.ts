/**
 * Pages of list responses that stay within a default gRPC client's 4 MiB
 * receive limit (grpc-js, gRPC's C core and Go all default to 4 MiB): a page
 * holds at most page_size items and stops before MAX_PAGE_BYTES encoded (at
 * least one item), and continues after the key of its last item. Page tokens
 * are opaque to clients and authenticated: each carries an HMAC-SHA256 (RFC
 * 2104) of its content under a key drawn at random when the process starts,
 * so a token this server did not issue, a crafted one included, is
 * INVALID_ARGUMENT on page_token (AIP-158), and so is one issued by an
 * earlier daemon process (a client starts again from the first page).
 * No I/O, no core state.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

import { CoreError } from '../core/errors.js';

/** Encoded bytes a page holds at most: half a default client's 4 MiB limit, room for headers and growth. */
export const MAX_PAGE_BYTES = 2 * 1024 * 1024;
/** page_size 0 means this many; larger values are treated as it. */
export const MAX_PAGE_ITEMS = 1000;

/** This process's token key: tokens do not outlive it, and nobody else can make one. */
const TOKEN_KEY = randomBytes(32);
/** Bytes of the HMAC a token carries (128 bits: RFC 2104 section 5 allows truncation to half or more). */
const MAC_BYTES = 16;

const mac = (payload: Buffer) => createHmac('sha256', TOKEN_KEY).update(payload).digest().subarray(0, MAC_BYTES);

/**
 * A token continuing after `key` in the collection `kind`: base64url of the
 * HMAC of "kind:key" followed by "kind:key".
 */
export function pageToken(kind: string, key: string): string {
  const payload = Buffer.from(`${kind}:${key}`);
  return Buffer.concat([mac(payload), payload]).toString('base64url');
}

/**
 * The key a token of `kind` continues after; `valid` checks the key is one
 * the collection can hold. A token that is not canonical base64url, whose
 * HMAC does not verify (not issued by this process), of another kind or
 * holding an impossible key fails INVALID_ARGUMENT on page_token.
 */
export function pageTokenKey(kind: string, token: string, valid: (key: string) => boolean): string {
  const raw = Buffer.from(token, 'base64url');
  const payload = raw.subarray(MAC_BYTES);
  const text = payload.toString('utf8');
  const key = text.startsWith(`${kind}:`) ? text.slice(kind.length + 1) : undefined;
  const ok =
    raw.length > MAC_BYTES &&
    raw.toString('base64url') === token &&
    timingSafeEqual(raw.subarray(0, MAC_BYTES), mac(payload)) &&
    key !== undefined &&
    Buffer.from(text).equals(payload) &&
    valid(key);
  if (!ok) {
    throw CoreError.invalid([
      {
        field: 'page_token',
        description:
          'is not a next_page_token this daemon process returned (use "" for the first page; tokens do not survive a restart)',
      },
    ]);
  }
  return key!;
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
