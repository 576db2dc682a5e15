/**
 * Replies whose bytes are built by the service, a piece at a time, instead of
 * by grpc-js's serializer in one piece after the handler returns (10 000 rules
 * in an ApplyRules reply: one long turn of the event loop), and without
 * encoding what the service encoded already (ListRules measures each rule
 * before it takes it into the page). {@link encodeRule} encodes through one
 * writer kept for the process: a fresh writer per message grew its buffer
 * from 128 bytes in four or five steps, one ArrayBuffer each, and under a
 * large transaction's memory pressure those allocations made a ListRules of
 * 100 rules cost tens of milliseconds.
 *
 * {@link withBytes} attaches the bytes to the reply object; {@link serializer}
 * wraps a method's response serializer to send them. A reply without bytes
 * (the HTTP/JSON gateway calls the same handlers) is encoded as before. The
 * bytes are exactly those of the message's own encode (test/unit/apply-rules-codec.test.ts).
 */
import { BinaryWriter } from '@bufbuild/protobuf/wire';

import { Rule } from '../../gen/xdpctl/v1/rule.js';

const encoded = new WeakMap<object, Uint8Array>();

/** `reply`, to be sent as `bytes` (its encoding) by a {@link serializer}. */
export function withBytes<T extends object>(reply: T, bytes: Uint8Array): T {
  encoded.set(reply, bytes);
  return reply;
}

/** A response serializer that sends the bytes attached by {@link withBytes}, else encodes with `fallback`. */
export function serializer<T>(fallback: (reply: T) => Uint8Array): (reply: T) => Uint8Array {
  return (reply) => encoded.get(reply as object) ?? fallback(reply);
}

let shared = new BinaryWriter();

/** Rule.encode(rule).finish() through the process's one writer (synchronous, so never shared by two at once). */
export function encodeRule(rule: Rule): Uint8Array {
  try {
    return Rule.encode(rule, shared).finish();
  } catch (e) {
    shared = new BinaryWriter(); // a half-written message must not reach the next one
    throw e;
  }
}

let pageWriter = new BinaryWriter();
/** The largest buffer {@link ruleFieldsMessage}'s writer keeps between messages. */
const KEEP_BYTES = 256 << 10;

/**
 * A message whose field `field` holds each of `rules` (in order), then the string field `tail` if not empty:
 * the bytes of `fieldsMessage(rules.map((r) => [field, encodeRule(r)]), tail)`, written through one kept
 * writer and copied out once (GetRule, CreateRule, a page of ListRules): one allocation per message instead of
 * one per rule and one per growth of a fresh writer. A CPU profile of ListRules (pages of 100) during an
 * ApplyRules of 10 000 rules had 60 % of its time in encodeRule, most of it the copy each rule's finish() makes.
 */
export function ruleFieldsMessage(
  field: number,
  rules: readonly Rule[],
  tail?: readonly [field: number, text: string],
) {
  const w = pageWriter;
  try {
    for (const r of rules) Rule.encode(r, w.uint32((field << 3) | 2).fork()).join();
    if (tail && tail[1] !== '') w.uint32((tail[0] << 3) | 2).string(tail[1]);
    const bytes = w.finish();
    // The writer keeps its buffer: not one grown by a page of large rules (MBs held for the process's life).
    if (bytes.length > KEEP_BYTES) pageWriter = new BinaryWriter();
    return bytes;
  } catch (e) {
    pageWriter = new BinaryWriter(); // a half-written message must not reach the next one
    throw e;
  }
}

/** A message of length-delimited fields: `[field number, bytes]` in order, then a string field if not empty. */
export function fieldsMessage(
  parts: Iterable<readonly [field: number, bytes: Uint8Array]>,
  tail?: readonly [field: number, text: string],
): Uint8Array {
  const w = new BinaryWriter();
  for (const [field, bytes] of parts) w.uint32((field << 3) | 2).bytes(bytes);
  if (tail && tail[1] !== '') w.uint32((tail[0] << 3) | 2).string(tail[1]);
  return w.finish();
}
