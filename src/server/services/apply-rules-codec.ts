/**
 * ApplyRules on the wire without one long turn of the event loop. A request
 * of 10 000 rules is ~1.8 MB of protobuf, and decoding it whole is one piece
 * of synchronous work (20-55 ms measured on this VM) that grpc-js runs before
 * the handler starts; the reply carries every rule again (up to 2 MiB) and
 * is encoded in one piece after the handler returns. Here:
 *
 * - {@link decodeApplyRulesLazily} (the method's request deserializer) only
 *   walks the top level: each rule's bytes are found, not decoded. The
 *   service decodes them a chunk at a time ({@link lazyRules}), yielding
 *   between chunks. The result is exactly what the whole decode gives
 *   (`ApplyRulesRequest.decode`): any input whose rules do not end where
 *   their length says (which the whole decode reads differently) falls back
 *   to the whole decode, and an input that decode refuses is refused with
 *   the status grpc-js gives (INTERNAL, "Error deserializing request").
 *   Reading `request.rules` decodes everything at once, for code that needs
 *   the plain message.
 * - {@link encodeApplyRulesReply} builds the reply's bytes a chunk at a time
 *   from rules the service has encoded already (to measure them), and the
 *   method's response serializer sends those bytes (encoded-reply.ts): byte
 *   for byte what `ApplyRulesResponse.encode` gives for the same message.
 */
import { BinaryReader, BinaryWriter } from '@bufbuild/protobuf/wire';
import { ServerError, Status } from 'nice-grpc';

import { ApplyRulesRequest, ApplyRulesResponse, Rule, RuleChange } from '../../gen/xdpctl/v1/rule.js';
import { withBytes } from './encoded-reply.js';

/** The rules of a request decoded by {@link decodeApplyRulesLazily}, one at a time. */
export interface LazyRules {
  /** How many rules; read it again after each get (a rule may hand the request to the whole decode). */
  readonly count: number;
  /** Rule `i` (0 <= i < count), in request order. Throws the deserializing error grpc-js would give. */
  get(i: number): Rule;
  /** The name of rule `i` without decoding the rest of it (for audit records). */
  name(i: number): string;
}

const lazy = new WeakMap<object, LazyRules>();

/** The request's rules to decode one at a time, when it came through {@link decodeApplyRulesLazily}. */
export function lazyRules(req: object): LazyRules | undefined {
  return lazy.get(req);
}

/** What grpc-js answers for a request it cannot deserialize (server-interceptors: INTERNAL). */
function deserializeError(): ServerError {
  return new ServerError(Status.INTERNAL, 'Error deserializing request');
}

/** The whole decode, its failure as grpc-js reports it. */
function decodeWhole(bytes: Uint8Array): ApplyRulesRequest {
  try {
    return ApplyRulesRequest.decode(bytes);
  } catch {
    throw deserializeError();
  }
}

/**
 * The ApplyRules request deserializer: validate_only and where each rule's
 * bytes are, nothing decoded yet. Throws (as the whole decode does) only
 * when the top level cannot be read; then the whole decode decides.
 */
export function decodeApplyRulesLazily(bytes: Uint8Array): ApplyRulesRequest {
  const starts: number[] = [];
  const lengths: number[] = [];
  let validateOnly = false;
  try {
    // The top level exactly as ApplyRulesRequest.decode reads it (field 1 rules, field 2 validate_only).
    const reader = new BinaryReader(bytes);
    while (reader.pos < reader.len) {
      const tag = reader.uint32();
      if (tag === 10) {
        const len = reader.uint32();
        starts.push(reader.pos);
        lengths.push(len);
        reader.pos += len;
        if (reader.pos > reader.len) throw new RangeError('premature EOF');
        continue;
      }
      if (tag === 16) {
        validateOnly = reader.bool();
        continue;
      }
      if ((tag & 7) === 4 || tag === 0) break;
      reader.skip(tag & 7);
    }
  } catch {
    // Whatever the whole decode makes of it (a rule running past its length can still decode).
    return ApplyRulesRequest.decode(bytes);
  }
  let whole: ApplyRulesRequest | undefined;
  const fallback = () => (whole ??= decodeWhole(bytes));
  // A rule is decoded as the whole decode would (one reader over all the bytes): if it does not end
  // exactly where its length says, the whole decode reads what follows differently, so it decides.
  let exact = 0; // rules [0, exact) were decoded and ended where they should
  const get = (i: number): Rule => {
    if (whole) return whole.rules[i];
    const reader = new BinaryReader(bytes);
    reader.pos = starts[i];
    let rule: Rule;
    try {
      rule = Rule.decode(reader, lengths[i]);
    } catch {
      return fallback().rules[i];
    }
    if (reader.pos !== starts[i] + lengths[i]) return fallback().rules[i];
    if (i === exact) exact++;
    else if (i > exact) for (let j = exact; j < i; j++) get(j); // every earlier rule must be exact too
    return whole ? (whole as ApplyRulesRequest).rules[i] : rule;
  };
  const rules: LazyRules = {
    get count() {
      return whole ? whole.rules.length : starts.length;
    },
    get,
    name(i) {
      if (whole) return whole.rules[i]?.name ?? '';
      // Field 1 (name) of rule i, if it is there and well formed; '' otherwise (only for the audit record).
      try {
        const reader = new BinaryReader(bytes);
        reader.pos = starts[i];
        const end = starts[i] + lengths[i];
        let name = '';
        while (reader.pos < end) {
          const tag = reader.uint32();
          if (tag === 10) name = reader.string();
          else if ((tag & 7) === 4 || tag === 0) break;
          else reader.skip(tag & 7);
        }
        return name;
      } catch {
        return '';
      }
    },
  };
  const req = {} as ApplyRulesRequest;
  let decoded: Rule[] | undefined;
  // Once a rule has sent it to the whole decode, validate_only is what that decode read too.
  Object.defineProperty(req, 'validateOnly', {
    enumerable: true,
    configurable: true,
    get: () => (whole ? whole.validateOnly : validateOnly),
    set: (v: boolean) => void (validateOnly = v),
  });
  Object.defineProperty(req, 'rules', {
    enumerable: true,
    configurable: true,
    get: () => (decoded ??= Array.from({ length: rules.count }, (_, i) => rules.get(i))),
    set: (v: Rule[]) => void (decoded = v),
  });
  lazy.set(req, rules);
  return req;
}

/**
 * Build an ApplyRules reply's bytes, yielding between chunks: `rules` are
 * already encoded (each `Rule.encode(r).finish()`), in order. The method's
 * response serializer (encoded-reply.ts) sends these bytes.
 */
export async function encodeApplyRulesReply(
  reply: ApplyRulesResponse,
  encodedRules: readonly Uint8Array[],
  yieldNow: () => Promise<void>,
): Promise<ApplyRulesResponse> {
  const w = new BinaryWriter();
  // The field order of ApplyRulesResponse.encode: changes (1), rules (2), applied (3), rules_omitted (4).
  for (const [i, c] of reply.changes.entries()) {
    RuleChange.encode(c, w.uint32(10).fork()).join();
    if ((i & 1023) === 1023) await yieldNow();
  }
  for (const [i, r] of encodedRules.entries()) {
    w.uint32(18).bytes(r);
    if ((i & 255) === 255) await yieldNow();
  }
  if (reply.applied !== false) w.uint32(24).bool(reply.applied);
  if (reply.rulesOmitted !== false) w.uint32(32).bool(reply.rulesOmitted);
  return withBytes(reply, w.finish());
}
