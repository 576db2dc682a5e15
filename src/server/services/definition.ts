/**
 * nice-grpc's own conversion of a ts-proto service definition (what
 * Server.add does with one), for services that replace a method's
 * serializer or deserializer (counter-service.ts: WatchCounters responses
 * encoded once; apply-rules-codec.ts: ApplyRules decoded and encoded a chunk
 * at a time).
 */
import type { NormalizedServiceDefinition, TsProtoServiceDefinition } from 'nice-grpc';

type Codec = {
  encode(v: unknown): { finish(): Uint8Array };
  fromPartial(v: unknown): unknown;
  decode(b: Uint8Array): unknown;
};

export function fromTsProto<D extends TsProtoServiceDefinition>(def: D): NormalizedServiceDefinition<D> {
  const out: Record<string, unknown> = {};
  for (const [key, m] of Object.entries(def.methods)) {
    const req = m.requestType as unknown as Codec;
    const res = m.responseType as unknown as Codec;
    out[key] = {
      path: `/${def.fullName}/${m.name}`,
      requestStream: m.requestStream,
      responseStream: m.responseStream,
      requestSerialize: (v: unknown) => req.encode(req.fromPartial(v)).finish(),
      requestDeserialize: (b: Uint8Array) => req.decode(b),
      responseSerialize: (v: unknown) => res.encode(res.fromPartial(v)).finish(),
      responseDeserialize: (b: Uint8Array) => res.decode(b),
      options: m.options,
    };
  }
  return out as NormalizedServiceDefinition<D>;
}
