/**
 * The client half of gRPC health checking (grpc.health.v1.Health/Check, gRPC's doc/health-checking.md) as a
 * nice-grpc service definition, so that the client and the CLI do not need nice-grpc-server-health (a
 * server package that brings protobufjs and rxjs, ~9 MB, to every client install). The two messages are
 * HealthCheckRequest { string service = 1; } and HealthCheckResponse { ServingStatus status = 1; },
 * encoded with @bufbuild/protobuf's wire helpers as ts-proto's generated code does. Wire-compatible with
 * the daemon's HealthDefinition (test/unit/client.test.ts checks both against each other).
 */
import { BinaryReader, BinaryWriter } from '@bufbuild/protobuf/wire';

/** HealthCheckResponse.ServingStatus. */
export enum ServingStatus {
  UNKNOWN = 0,
  SERVING = 1,
  NOT_SERVING = 2,
  SERVICE_UNKNOWN = 3,
}

export interface HealthCheckRequest {
  /** "" for the server as a whole, else a service name such as "xdpctl.datapath". */
  service: string;
}

export interface HealthCheckResponse {
  status: ServingStatus;
}

const HealthCheckRequest = {
  encode(m: HealthCheckRequest, w: BinaryWriter = new BinaryWriter()): BinaryWriter {
    if (m.service !== '') w.uint32(10).string(m.service);
    return w;
  },
  decode(input: BinaryReader | Uint8Array, length?: number): HealthCheckRequest {
    const r = input instanceof BinaryReader ? input : new BinaryReader(input);
    const end = length === undefined ? r.len : r.pos + length;
    const m: HealthCheckRequest = { service: '' };
    while (r.pos < end) {
      const tag = r.uint32();
      if (tag === 10) m.service = r.string();
      else r.skip(tag & 7);
    }
    return m;
  },
  fromPartial(o: Partial<HealthCheckRequest>): HealthCheckRequest {
    return { service: o.service ?? '' };
  },
};

const HealthCheckResponse = {
  encode(m: HealthCheckResponse, w: BinaryWriter = new BinaryWriter()): BinaryWriter {
    if (m.status !== 0) w.uint32(8).int32(m.status);
    return w;
  },
  decode(input: BinaryReader | Uint8Array, length?: number): HealthCheckResponse {
    const r = input instanceof BinaryReader ? input : new BinaryReader(input);
    const end = length === undefined ? r.len : r.pos + length;
    const m: HealthCheckResponse = { status: ServingStatus.UNKNOWN };
    while (r.pos < end) {
      const tag = r.uint32();
      if (tag === 8) m.status = r.int32() as ServingStatus;
      else r.skip(tag & 7);
    }
    return m;
  },
  fromPartial(o: Partial<HealthCheckResponse>): HealthCheckResponse {
    return { status: o.status ?? ServingStatus.UNKNOWN };
  },
};

/** grpc.health.v1.Health with its Check method (Watch and List are not used by clients here). */
export const HealthCheckDefinition = {
  name: 'Health',
  fullName: 'grpc.health.v1.Health',
  methods: {
    check: {
      name: 'Check',
      requestType: HealthCheckRequest,
      requestStream: false,
      responseType: HealthCheckResponse,
      responseStream: false,
      options: {},
    },
  },
} as const;
