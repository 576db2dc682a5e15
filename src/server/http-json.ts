/**
 * HTTP/JSON for every unary RPC, on an opt-in listener (`--http-listen`): the Connect protocol's
 * unary form (https://connectrpc.com/docs/protocol), served by @connectrpc/connect-node. A call is
 * `POST /<package.Service>/<Method>` with `Content-Type: application/json` and the request message in
 * the proto3 JSON mapping as the body; methods marked `idempotency_level = NO_SIDE_EFFECTS` (Get/List)
 * also answer `GET /<package.Service>/<Method>?encoding=json&message=<url-encoded JSON>`. The reply is
 * the response message as JSON with status 200, or a Connect error:
 * `{"code": "invalid_argument", "message": "...", "details": [{"type": "google.rpc.BadRequest",
 * "value": "<base64>", "debug": {"fieldViolations": [...]}}]}` with the HTTP status the protocol maps
 * the code to (400, also for FAILED_PRECONDITION and OUT_OF_RANGE; 401, 403, 404, 409, 429, 499, 500,
 * 501, 503, 504). Why Connect and not `google.api.http`
 * transcoding: no well-kept Node library transcodes google.api.http (grpc-gateway is Go, Envoy's
 * transcoder C++), while Connect is a specified protocol with a maintained Node server that reads the
 * service descriptors we already ship (build/descriptor.binpb), so no REST paths are written twice.
 *
 * Every call runs through the same chain as on the gRPC listeners (telemetry, access: identity, role
 * and audit; error mapping; the start gate) into the same service implementations, so validation,
 * roles, audit records and error details are those of gRPC by construction. The caller's identity
 * comes from the connection exactly as on gRPC (services/access.ts identifySocket): SO_PEERCRED on a
 * Unix socket (`curl --unix-socket`), the verified client certificate with the daemon's TLS files
 * (the same certificate, key, client CA and rotation as the gRPC TCP listeners), the kernel's socket
 * table on loopback TCP; anything else is anonymous. The trace context headers the gRPC chain reads
 * (W3C traceparent/tracestate, and what else OTEL_PROPAGATORS names) are carried into the call. Streaming
 * methods (WatchCounters), the grpc.health.v1 service (probes use gRPC: xdpctl-health) and server reflection
 * are not served here: a call of one is answered 501 unimplemented saying so (grpcOnly), not 404.
 */
import { once } from 'node:events';
import { chmodSync, chownSync, mkdirSync, rmSync } from 'node:fs';
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server as HttpServer,
  type ServerResponse,
} from 'node:http';
// The module object, not a named import: connection-guard.ts and tls.ts wrap http2.createSecureServer.
import http2, { type Http2SecureServer } from 'node:http2';
import { isIP, type Socket } from 'node:net';
import { dirname } from 'node:path';

import {
  create,
  createFileRegistry,
  fromBinary,
  fromJsonString,
  toBinary,
  type DescMessage,
  type DescMethodUnary,
  type FileRegistry,
  type Message,
} from '@bufbuild/protobuf';
import { FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';
import { Code, ConnectError, createContextKey, createContextValues, type HandlerContext } from '@connectrpc/connect';
import { connectNodeAdapter } from '@connectrpc/connect-node';
import { propagation } from '@opentelemetry/api';
import { Metadata, ServerError, type CallContext, type ServerMiddleware } from 'nice-grpc-common';

import type { Identity } from './auth/identity.js';
import { MAX_TIMER_MS, monotonicMs } from './core/clock.js';
import { jsonDecodeProblem } from './json-decode-problem.js';
import { connectionLimits, limitConnections, noteSilentClose } from './connection-guard.js';
import { assertSocketNotLive, removeOwnSocket, socketIdentity } from './dataplane/instance-lock.js';
import type { Logger } from './log.js';
import { formatPeer } from './net/addr.js';
import { DEADLINE_KEY, IDENTITY_KEY, identifySocket, sealIdentity, type ListenerKind } from './services/access.js';
import type { TlsMaterial } from './tls.js';
import { Status as RpcStatus } from '../gen/google/rpc/status.js';

/** A ts-proto message codec (the generated `X.encode/decode`). */
interface Codec {
  encode(message: unknown): { finish(): Uint8Array };
  decode(bytes: Uint8Array): unknown;
}

/** A nice-grpc service definition (generated `XServiceDefinition`) and its implementation. */
export interface ServedService {
  definition: {
    fullName: string;
    methods: Record<
      string,
      {
        name: string;
        requestType: unknown;
        responseType: unknown;
        requestStream: boolean;
        responseStream: boolean;
        options: object;
      }
    >;
  };
  implementation: object;
}

/** One unary method: decode, run the middleware chain and the handler, encode. */
interface UnaryMethod {
  path: string;
  requestType: Codec;
  responseType: Codec;
  run(request: unknown, context: CallContext): Promise<unknown>;
}

/**
 * Every unary method of `services` behind `middleware` (the gRPC listeners' chain), called the way
 * nice-grpc calls a unary handler (handleUnaryCall.js): the middleware's generator must return, not yield.
 */
export function unaryMethods(services: ServedService[], middleware: ServerMiddleware): Map<string, UnaryMethod> {
  const out = new Map<string, UnaryMethod>();
  for (const { definition, implementation } of services) {
    for (const [key, m] of Object.entries(definition.methods)) {
      if (m.requestStream || m.responseStream) continue;
      const path = `/${definition.fullName}/${m.name}`;
      const impl = (implementation as Record<string, (req: unknown, ctx: CallContext) => Promise<unknown>>)[key];
      const method = { path, requestStream: false, responseStream: false, options: m.options };
      // eslint-disable-next-line require-yield -- a unary handler returns its one message (nice-grpc's form)
      async function* handler(request: unknown, context: CallContext) {
        return await impl.call(implementation, request, context);
      }
      out.set(path, {
        path,
        requestType: m.requestType as Codec,
        responseType: m.responseType as Codec,
        async run(request, context) {
          const it = middleware(
            { method, requestStream: false, request, responseStream: false, next: handler } as never,
            context,
          )[Symbol.asyncIterator]();
          let r = await it.next();
          while (!r.done) r = await it.throw(new Error(`${path}: a middleware yielded in a unary call`));
          return r.value;
        },
      });
    }
  }
  return out;
}

export interface HttpJsonOptions {
  /** "host:port" or "unix:/path". */
  listen: string;
  /** The FileDescriptorSet (build/descriptor.binpb) with the services and google.rpc error details. */
  descriptor: Uint8Array;
  methods: Map<string, UnaryMethod>;
  /** TLS for a TCP listener: the gRPC listeners' files and rotation. */
  tls?: TlsMaterial;
  /** Largest request body in bytes (the gRPC listeners' --max-message-bytes). */
  maxMessageBytes: number;
  socketMode: number;
  socketGid?: number;
  log: Logger;
}

const kIdentity = createContextKey<Identity | undefined>(undefined, { description: 'caller identity' });
const kPeer = createContextKey<string>('', { description: 'peer address' });

/** nice-grpc's Status and Connect's Code share the gRPC numbering (1 CANCELLED ... 16 UNAUTHENTICATED). */
function connectError(err: unknown, trailer: Metadata, registry: FileRegistry): ConnectError {
  if (!(err instanceof ServerError)) {
    const aborted = (err as { name?: string } | null)?.name === 'AbortError';
    return new ConnectError(aborted ? 'cancelled' : 'internal error', aborted ? Code.Canceled : Code.Unknown);
  }
  const details: { desc: DescMessage; value: never }[] = [];
  const raw = trailer.get('grpc-status-details-bin');
  if (raw instanceof Uint8Array) {
    for (const any of RpcStatus.decode(raw).details) {
      const desc = registry.getMessage(any.typeUrl.slice(any.typeUrl.lastIndexOf('/') + 1));
      if (desc) details.push({ desc, value: fromBinary(desc, any.value) as never });
    }
  }
  return new ConnectError(err.details, err.code as number as Code, undefined, details);
}

/**
 * The headers the daemon's propagator reads on gRPC (W3C `traceparent` and `tracestate`; `baggage` when
 * the SDK runs, B3 or Jaeger with OTEL_PROPAGATORS), copied from the HTTP request into the call's metadata,
 * where the telemetry middleware (nice-grpc-opentelemetry) extracts them as on the gRPC listeners: an
 * HTTP/JSON call runs in the client's trace, and its log lines and audit record carry that trace id.
 * Only those headers: the rest of the metadata is the daemon's own (identity, deadline).
 */
export function carryPropagation(headers: Headers, metadata: Metadata): void {
  for (const field of propagation.fields()) {
    const value = headers.get(field);
    if (value !== null && !field.endsWith('-bin')) metadata.set(field, value);
  }
}

/**
 * The text decoder Connect's JSON parse of `input` goes through, which first decodes the body itself:
 * a body that does not decode is refused naming the field (json-decode-problem.ts), with a
 * google.rpc.BadRequest field violation, as the gRPC validation names its fields; otherwise Connect
 * decodes it as before.
 */
function namingDecoder(input: DescMessage, registry: FileRegistry): { decode(data?: Uint8Array): string } {
  const text = new TextDecoder();
  const badRequest = registry.getMessage('google.rpc.BadRequest');
  return {
    decode(data?: Uint8Array): string {
      const json = text.decode(data);
      try {
        fromJsonString(input, json, { ignoreUnknownFields: false });
      } catch (err) {
        let parsed: unknown;
        try {
          parsed = JSON.parse(json);
        } catch {
          throw err; // not JSON at all: the library's own message
        }
        const problem = jsonDecodeProblem(input, parsed as never);
        if (!problem) throw err;
        const details = badRequest
          ? [{ desc: badRequest, value: create(badRequest, { fieldViolations: [problem] } as never) }]
          : [];
        throw new ConnectError(
          `${problem.field}: ${problem.description}`,
          Code.InvalidArgument,
          undefined,
          details as never,
        );
      }
      return json;
    },
  };
}

function peerOf(kind: ListenerKind, socket: Socket, listen: string): string {
  if (kind === 'unix') return listen;
  // As every log line writes a peer: "127.0.0.1:40312", "[::1]:40312" (RFC 5952 section 6).
  return formatPeer(socket.remoteAddress ?? '', socket.remotePort);
}

/** A running HTTP/JSON listener. */
export interface HttpJsonListener {
  /** The bound address: "host:port" with the real port for ":0", or "unix:/path". */
  address: string;
  /** For a Unix socket: its path and the identity (instance-lock.ts socketIdentity) of the file this listener made. */
  unixSocket?: { path: string; ino: string | undefined };
  close(): Promise<void>;
}

/**
 * Why a request that a web page could have made is refused, or undefined. The listener is for curl and
 * programs: on loopback a caller's identity is its uid, so a page in a browser of a uid with a role must
 * not be able to call it (cross-site requests, or DNS rebinding, where the page's own name resolves to
 * 127.0.0.1 and its requests carry no Origin). So: an `Origin` or `Sec-Fetch-Site` header (only browsers
 * send them) is refused, and on a loopback TCP listener the Host must name a loopback address or
 * `localhost` (RFC 6761 section 6.3).
 */
export function browserRefusal(headers: IncomingMessage['headers'], loopbackTcp: boolean): string | undefined {
  if (headers.origin !== undefined || headers['sec-fetch-site'] !== undefined) {
    return 'requests from web pages (Origin or Sec-Fetch-Site header) are refused: this listener is for curl and programs';
  }
  if (!loopbackTcp) return undefined;
  const host = String(headers.host ?? headers[':authority'] ?? '');
  const name = host
    .replace(/:\d+$/, '')
    .replace(/^\[(.*)\]$/, '$1')
    .toLowerCase();
  const loopbackName =
    name === 'localhost' ||
    name.endsWith('.localhost') ||
    (isIP(name) === 4 && name.startsWith('127.')) ||
    (isIP(name) === 6 && /^(0*:)*:?0*1$/.test(name));
  return loopbackName ? undefined : `Host "${host}" is not a loopback name: refused (DNS rebinding?)`;
}

/** Serve `methods` as HTTP/JSON on `o.listen` (HTTP/1.1; with `o.tls` HTTPS, HTTP/1.1 or HTTP/2). */
export async function startHttpJson(o: HttpJsonOptions): Promise<HttpJsonListener> {
  const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, o.descriptor));
  const kind: ListenerKind = o.listen.startsWith('unix:') ? 'unix' : 'tcp';
  const rpcs: DescMethodUnary[] = [];
  for (const path of o.methods.keys()) {
    const [service, name] = path.slice(1).split('/');
    const method = registry.getService(service)?.methods.find((m) => m.name === name);
    if (method?.methodKind !== 'unary')
      throw new Error(`HTTP/JSON: ${path} is not a unary method in the descriptor set`);
    rpcs.push(method as DescMethodUnary);
  }
  const handler = connectNodeAdapter({
    // Only the Connect protocol here: gRPC has its own listeners.
    connect: true,
    grpc: false,
    grpcWeb: false,
    readMaxBytes: o.maxMessageBytes,
    // Connect-Timeout-Ms may carry 10 digits, but connect's own deadline timer (a plain setTimeout) fires after
    // 1 ms past 2^31-1 ms, which would end a call it let start: a longer timeout is refused before anything
    // runs (invalid_argument "timeout Nms must be <= 2147483647").
    maxTimeoutMs: MAX_TIMER_MS,
    // A misspelt field is an error naming it, not a silently ignored part of the request.
    jsonOptions: { ignoreUnknownFields: false },
    contextValues: (req) => {
      const socket = (req as IncomingMessage).socket;
      return createContextValues()
        .set(kIdentity, identifySocket(kind, socket))
        .set(kPeer, peerOf(kind, socket, o.listen));
    },
    routes(router) {
      for (const desc of rpcs) {
        const m = o.methods.get(`/${desc.parent.typeName}/${desc.name}`)!;
        router.rpc(
          desc,
          async (req: Message, ctx: HandlerContext) => {
            const metadata = Metadata();
            const identity = ctx.values.get(kIdentity);
            if (identity) metadata.set(IDENTITY_KEY, sealIdentity(identity));
            const timeout = ctx.timeoutMs();
            if (timeout !== undefined) metadata.set(DEADLINE_KEY, String(monotonicMs() + timeout));
            carryPropagation(ctx.requestHeader, metadata);
            const trailer = Metadata();
            const context: CallContext = {
              metadata,
              peer: ctx.values.get(kPeer),
              header: Metadata(),
              sendHeader() {},
              trailer,
              signal: ctx.signal,
            };
            let response: unknown;
            try {
              response = await m.run(m.requestType.decode(toBinary(desc.input, req)), context);
            } catch (err) {
              throw connectError(err, trailer, registry);
            }
            return fromBinary(desc.output, m.responseType.encode(response).finish());
          },
          // The adapter's options again (per-method options replace its protocol choice: without
          // grpc: false the method would answer gRPC here too), with a JSON decoder that names the field
          // a body cannot be decoded at. Connect hands jsonOptions to its createJsonSerialization, whose
          // options (JsonSerializationOptions) take a textDecoder; the handler options' type leaves
          // that and the protocol switches out.
          {
            connect: true,
            grpc: false,
            grpcWeb: false,
            jsonOptions: { ignoreUnknownFields: false, textDecoder: namingDecoder(desc.input, registry) },
          } as object,
        );
      }
    },
  });

  const loopbackTcp = kind === 'tcp' && isLoopbackListen(o.listen);
  const guarded = (req: IncomingMessage, res: ServerResponse) => {
    const refusal = browserRefusal(req.headers, loopbackTcp);
    if (refusal === undefined) {
      const onlyGrpc = grpcOnly((req.url ?? '').split('?', 1)[0], registry, o.methods);
      if (onlyGrpc !== undefined) {
        const body = JSON.stringify({ code: 'unimplemented', message: onlyGrpc });
        res.writeHead(501, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) });
        res.end(body);
        return;
      }
      explainBareStatus(req, res);
      const notJson = notJsonCall(req, o.methods);
      if (notJson !== undefined) {
        res.writeHead(415, {
          'content-type': 'application/json',
          'content-length': String(Buffer.byteLength(notJson)),
        });
        res.end(notJson);
        return;
      }
      nameOurLimit(res);
      return handler(req, res);
    }
    res.writeHead(403, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ code: 'permission_denied', message: refusal }));
  };

  let server: HttpServer | Http2SecureServer;
  if (o.tls) {
    const tls = o.tls;
    // HTTP/1.1 (curl's default) and HTTP/2 over TLS. Made by http2.createSecureServer, as grpc-js makes
    // its TLS servers: the connection bounds, handshake timeout and refused-handshake log
    // (connection-guard.ts, tls.ts) apply to it in the same way.
    const s = http2.createSecureServer(
      {
        ...tls.current(),
        allowHTTP1: true,
        requestCert: tls.requireClientCert,
        rejectUnauthorized: tls.requireClientCert,
      },
      guarded as never,
    );
    // A rotated set (already checked by tls.ts) applies to new connections, as on the gRPC listeners.
    const off = tls.onUpdate((files) => s.setSecureContext({ ...files }));
    s.on('close', off);
    server = s;
  } else {
    server = limitConnections(createHttpServer(guarded));
    // A connection that sends no complete request head in time is closed (as grpc-js's preface timeout).
    const limits = connectionLimits();
    if (limits) server.headersTimeout = limits.prefaceTimeoutMs;
    server.on('clientError', answerClientError);
  }
  // Every open connection, closed at close() (server.close() only stops accepting new ones).
  const sockets = new Set<Socket>();
  // A plaintext TCP connection that sends nothing within the preface timeout is closed, as on the gRPC
  // listeners (Node's headersTimeout only starts with a request's first byte: silent connections stayed
  // open). With TLS the handshake timeout of tls.ts applies (the TLS layer reads the socket's handle, not
  // its 'data' events, so this timer could not tell a live connection from a silent one).
  // The Unix socket too, as grpc-js's preface timeout does there. Each close is logged with its peer.
  const silentMs = kind === 'unix' || !o.tls ? connectionLimits()?.prefaceTimeoutMs : undefined;
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    if (silentMs === undefined) return;
    const timer = setTimeout(() => {
      noteSilentClose(socket, 'no HTTP request in time (HTTP/JSON)');
      socket.destroy();
    }, silentMs);
    timer.unref();
    socket.once('data', () => clearTimeout(timer));
    socket.once('close', () => clearTimeout(timer));
  });
  let address: string;
  let ino: string | undefined;
  if (kind === 'unix') {
    const path = o.listen.slice(5);
    mkdirSync(dirname(path), { recursive: true });
    await assertSocketNotLive(path); // the daemon holds its lock; a live listener is still never unlinked
    rmSync(path, { force: true });
    const umask = process.umask(0o177); // no window in which others may connect
    try {
      server.listen(path);
      await once(server, 'listening');
    } finally {
      process.umask(umask);
    }
    if (o.socketGid !== undefined) chownSync(path, process.geteuid?.() ?? 0, o.socketGid);
    chmodSync(path, o.socketMode);
    ino = socketIdentity(path);
    address = o.listen;
  } else {
    const i = o.listen.lastIndexOf(':');
    const host = o.listen.slice(0, i).replace(/^\[(.*)\]$/, '$1');
    server.listen(Number(o.listen.slice(i + 1)), host);
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;
    address = `${o.listen.slice(0, i)}:${port}`;
  }
  o.log.info({ address, tls: o.tls !== undefined }, 'HTTP/JSON (Connect protocol) listening');
  return {
    address,
    unixSocket: kind === 'unix' ? { path: o.listen.slice(5), ino } : undefined,
    async close() {
      const closed = once(server, 'close');
      server.close();
      for (const socket of sockets) socket.destroy(); // keep-alive connections and HTTP/2 sessions
      await closed;
      if (kind === 'unix') removeOwnSocket(o.listen.slice(5), ino); // only the file we created
    },
  };
}

/**
 * The body of a 415 for a call to one of our methods in any encoding but JSON, or undefined. connect-node
 * also serves the Connect protocol's binary form (`Content-Type: application/proto`, GET
 * `?encoding=proto`), where an unknown field is silently skipped (protobuf's binary rule) while the JSON
 * form refuses it naming it: this listener is HTTP/JSON, as documented, and binary clients have gRPC, with
 * the same services and the same validation. So anything but JSON is refused before any handler runs
 * (nothing applied). Paths that are no method and wrong HTTP methods are left to connect-node (404, 405).
 */
function notJsonCall(req: IncomingMessage, methods: ReadonlyMap<string, unknown>): string | undefined {
  const [path, query = ''] = (req.url ?? '').split('?', 2);
  if (!methods.has(path)) return undefined;
  let got: string | undefined;
  if (req.method === 'POST') {
    const type = req.headers['content-type'] ?? '';
    if (/^application\/json\s*(;\s*charset=utf-?8\s*)?$/i.test(type)) return undefined;
    got = `Content-Type ${type || '(none)'}`;
  } else if (req.method === 'GET') {
    const encoding = new URLSearchParams(query).get('encoding');
    if (encoding === null || encoding === 'json') return undefined;
    got = `encoding=${encoding}`;
  } else return undefined;
  return JSON.stringify({
    code: 'invalid_argument',
    message:
      `${got} is not accepted: send Content-Type: application/json (the Connect protocol in JSON; curl --json; ` +
      'GET with ?encoding=json); binary protobuf is served over gRPC',
  });
}

/** The methods of grpc.health.v1.Health (served by nice-grpc-server-health on the gRPC listeners). */
const HEALTH_METHODS = new Set(['Check', 'Watch', 'List']);

/**
 * Why a path that names a method of the daemon's is not served here, or undefined: a stream of ours
 * (WatchCounters; this listener serves the Connect protocol's unary form), the gRPC health service or server
 * reflection. Answered 501 unimplemented with this message, not the 404 "no method" of a path that names
 * nothing: the method exists, on gRPC.
 */
export function grpcOnly(
  path: string,
  registry: FileRegistry,
  methods: ReadonlyMap<string, unknown>,
): string | undefined {
  if (methods.has(path)) return undefined;
  const m = /^\/([A-Za-z0-9_.]+)\/([A-Za-z0-9_]+)$/.exec(path);
  if (!m) return undefined;
  const [, service, name] = m;
  if (service === 'grpc.health.v1.Health' && HEALTH_METHODS.has(name)) {
    return (
      `${service}/${name} is served on gRPC only (probes: xdpctl-health, grpc_health_probe, a Kubernetes grpc ` +
      'probe); here POST /xdpctl.v1.DaemonService/GetStatus with {} says whether xdpctld is serving'
    );
  }
  if (/^grpc\.reflection\.v1(alpha)?\.ServerReflection$/.test(service) && name === 'ServerReflectionInfo') {
    return `${service}/${name} is a bidirectional stream: served on gRPC only (grpcurl list, grpcurl describe)`;
  }
  const method = registry.getService(service)?.methods.find((x) => x.name === name);
  if (method) {
    const what = {
      server_streaming: 'a server stream',
      client_streaming: 'a client stream',
      bidi_streaming: 'a bidirectional stream',
      unary: 'a unary method of a service not served here',
    }[method.methodKind];
    return (
      `${service}/${name} is ${what}: served on gRPC only (this HTTP/JSON listener serves the Connect ` +
      `protocol's unary form of the xdpctl.v1 services' unary methods); use a gRPC client${name === 'WatchCounters' ? ' (xdpctl watch, grpcurl), or poll POST /xdpctl.v1.CounterService/GetCounters here' : ' (grpcurl)'}`
    );
  }
  return undefined;
}

/** How a call is made, for the messages of a request that is not one. */
const HOW =
  'calls are POST /<package.Service>/<Method> with a JSON body (curl --json), e.g. POST /xdpctl.v1.RuleService/ListRules with {}';

/**
 * connect-node answers a path that is no method (404), a wrong HTTP method (405) or Content-Type (415)
 * with a bare status and an empty body: a curl user sees nothing. Give each a Connect error body
 * (`{"code", "message"}`, application/json) saying what was wrong and what to send. Replies with a
 * body of their own are left alone.
 */
function explainBareStatus(req: IncomingMessage, res: ServerResponse): void {
  const path = (req.url ?? '').split('?', 1)[0];
  const messages: Record<number, [string, string]> = {
    404: ['unimplemented', `no method at ${path}: ${HOW}`],
    405: [
      'unimplemented',
      `${req.method} is not allowed on ${path}: use POST with a JSON body (GET with ?encoding=json&message=<JSON> ` +
        'only for methods without side effects: Get and List)',
    ],
    415: [
      'invalid_argument',
      `Content-Type ${req.headers['content-type'] ?? '(none)'} is not accepted: send Content-Type: application/json ` +
        '(the Connect protocol in JSON; curl --json)',
    ],
  };
  let body: string | undefined;
  const writeHead = res.writeHead.bind(res) as (status: number, headers?: object) => ServerResponse;
  const end = res.end.bind(res) as (...args: unknown[]) => ServerResponse;
  (res as { writeHead: unknown }).writeHead = (status: number, headers?: object) => {
    const m = messages[status];
    // A reply with a Content-Type has a body of its own (a Connect error, e.g. NOT_FOUND of GetRule).
    const typed = Object.keys(headers ?? {}).some((h) => h.toLowerCase() === 'content-type');
    if (!m || typed) return writeHead(status, headers);
    body = JSON.stringify({ code: m[0], message: m[1] });
    return writeHead(status, {
      ...(headers ?? {}),
      'content-type': 'application/json',
      'content-length': String(Buffer.byteLength(body)),
    });
  };
  (res as { end: unknown }).end = (...args: unknown[]) =>
    body !== undefined && (args.length === 0 || typeof args[0] === 'function') ? end(body, ...args) : end(...args);
}

/**
 * connect-node names its own option in the error for a body over the limit ("message size N is larger than
 * configured readMaxBytes M"); a curl user knows the daemon's flag. The reply (RESOURCE_EXHAUSTED, 429) is
 * written without a Content-Length so that its one JSON chunk can say `--max-message-bytes` instead.
 */
function nameOurLimit(res: ServerResponse): void {
  let rewrite = false;
  const writeHead = res.writeHead.bind(res) as (status: number, headers?: Record<string, unknown>) => ServerResponse;
  const write = res.write.bind(res) as (chunk: unknown, ...args: unknown[]) => boolean;
  (res as { writeHead: unknown }).writeHead = (status: number, headers?: Record<string, unknown>) => {
    if (status !== 429) return writeHead(status, headers);
    rewrite = true;
    const h = Object.fromEntries(Object.entries(headers ?? {}).filter(([k]) => k.toLowerCase() !== 'content-length'));
    return writeHead(status, h);
  };
  (res as { write: unknown }).write = (chunk: unknown, ...args: unknown[]) => {
    if (!rewrite || !(chunk instanceof Uint8Array)) return write(chunk, ...args);
    const text = Buffer.from(chunk).toString('utf8');
    const ours = text.replace(
      /message size (?:(\d+) )?is larger than configured readMaxBytes (\d+)/,
      (_m, n: string | undefined, max: string) =>
        `request body ${n ? `of ${n} bytes ` : ''}is larger than xdpctld's --max-message-bytes (${max} bytes)`,
    );
    return write(ours === text ? chunk : Buffer.from(ours), ...args);
  };
}

const answered = new WeakSet<Socket>();

/**
 * A plaintext connection that is no HTTP/1.1. HTTP/2 with prior knowledge (`curl --http2-prior-knowledge`,
 * gRPC clients) cannot be served without TLS here (Node serves HTTP/2 beside HTTP/1.1 only over TLS, by
 * ALPN): the client gets an HTTP/2 GOAWAY with HTTP_1_1_REQUIRED (RFC 9113 section 7; curl prints "error=13")
 * and the log says why, instead of a closed connection and nothing logged. Anything else gets what Node
 * answers by default (400, 408, 431) and is closed.
 */
function answerClientError(err: Error & { code?: string; rawPacket?: Buffer }, socket: Socket): void {
  // The parser may report the rest of what the client sent as well: one answer (and log line) per connection.
  if (answered.has(socket)) return;
  answered.add(socket);
  const h2 =
    err.code === 'HPE_PAUSED_H2_UPGRADE' ||
    (err.rawPacket?.subarray(0, 14).toString('latin1') ?? '') === 'PRI * HTTP/2.0';
  if (h2) {
    noteSilentClose(
      socket,
      'HTTP/2 without TLS (prior knowledge) on the plaintext HTTP/JSON listener, which serves HTTP/1.1 ' +
        '(HTTP/2 needs TLS: --tls-cert/--tls-key); answered GOAWAY HTTP_1_1_REQUIRED',
    );
    const frame = (type: number, payload: Buffer) => {
      const head = Buffer.alloc(9);
      head.writeUIntBE(payload.length, 0, 3);
      head[3] = type; // flags 0, stream 0
      return Buffer.concat([head, payload]);
    };
    const goaway = Buffer.alloc(8);
    goaway.writeUInt32BE(0x0d, 4); // last stream 0, HTTP_1_1_REQUIRED
    const debug = Buffer.from('HTTP/2 needs TLS here; use HTTP/1.1 (curl without --http2-prior-knowledge)');
    if (socket.writable)
      socket.end(Buffer.concat([frame(0x4, Buffer.alloc(0)), frame(0x7, Buffer.concat([goaway, debug]))]));
    else socket.destroy();
    return;
  }
  const status =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? '431 Request Header Fields Too Large'
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? '408 Request Timeout'
        : '400 Bad Request';
  if (socket.writable) socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\n\r\n`);
  else socket.destroy();
}

/** Whether a host:port listen address is a loopback address (127/8, ::1 or localhost). */
function isLoopbackListen(listen: string): boolean {
  const host = listen.slice(0, listen.lastIndexOf(':'));
  return browserRefusal({ host }, true) === undefined;
}
