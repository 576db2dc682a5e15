#!/usr/bin/env node
/**
 * xdpctl-health: the container health probe (Docker HEALTHCHECK, Kubernetes exec probes). One
 * grpc.health.v1.Health/Check call and an exit code, at the cost of a bare Node start: it loads nothing
 * but node:http2 (no gRPC library, no CLI), because probes run every few seconds on every node
 * (`xdpctl health` loads the whole CLI: measured in test/integration/health-probe.test.ts).
 *
 *   xdpctl-health [--server unix:/run/xdpctl/xdpctl.sock | --server 127.0.0.1:9091] [--service NAME]
 *                 [--timeout 3s]
 *
 * Exit 0: SERVING. Exit 1: an answer other than SERVING (NOT_SERVING, UNKNOWN, or a gRPC error such as
 * NOT_FOUND for an unknown service), printed on stderr. Exit 2: no answer (connection refused, timeout,
 * not gRPC). Exit 3: it could not ask (bad usage, a Unix socket this user may not open, or a Node older than
 * package.json's engines). TCP is
 * plaintext, so only for a loopback listener; the Unix socket is what the deployment files use (no TLS, no
 * network).
 *
 * The two messages are small enough to write by hand: HealthCheckRequest { string service = 1; } and
 * HealthCheckResponse { ServingStatus status = 1; } (grpc/grpc-proto, grpc/health/v1/health.proto),
 * in the gRPC length-prefixed framing over HTTP/2 (gRPC's PROTOCOL-HTTP2.md).
 */
// First: on a Node older than engines.node, stop with a message before anything else loads.
import '../shared/supported-node.js';

import { realpathSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

const STATUS = ['UNKNOWN', 'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN'];

/** The probe's flags (the same names as `xdpctl health`'s). */
export interface ProbeOptions {
  server: string;
  service: string;
  timeoutMs: number;
}

/** HealthCheckRequest { service } as protobuf (field 1, length-delimited). */
function encodeRequest(service: string): Buffer {
  const s = Buffer.from(service, 'utf8');
  const len: number[] = [];
  for (let n = s.length; ; n >>>= 7) {
    if (n < 0x80) {
      len.push(n);
      break;
    }
    len.push((n & 0x7f) | 0x80);
  }
  const msg = s.length ? Buffer.concat([Buffer.from([0x0a, ...len]), s]) : Buffer.alloc(0);
  const head = Buffer.alloc(5);
  head.writeUInt32BE(msg.length, 1);
  return Buffer.concat([head, msg]);
}

/** The status in a framed HealthCheckResponse (0 = UNKNOWN when the field is absent). */
function decodeStatus(body: Buffer): number {
  if (body.length < 5) throw new Error('empty response');
  const msg = body.subarray(5, 5 + body.readUInt32BE(1));
  for (let i = 0; i < msg.length;) {
    const tag = msg[i++];
    let v = 0;
    if ((tag & 7) === 0) {
      for (let shift = 0; i < msg.length; shift += 7) {
        const b = msg[i++];
        v += (b & 0x7f) * 2 ** shift;
        if (b < 0x80) break;
      }
      if (tag >>> 3 === 1) return v;
    } else if ((tag & 7) === 2) {
      let n = 0;
      for (let shift = 0; i < msg.length; shift += 7) {
        const b = msg[i++];
        n += (b & 0x7f) * 2 ** shift;
        if (b < 0x80) break;
      }
      i += n;
    } else throw new Error(`unexpected wire type ${tag & 7}`);
  }
  return 0;
}

/** Check once: resolves with [exit code, message]. */
export function probe(o: ProbeOptions): Promise<[number, string]> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (code: number, message: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      session.destroy();
      resolve([code, message]);
    };
    const unix = o.server.startsWith('unix:') ? o.server.slice(5).replace(/^\/\/(?=\/)/, '') : undefined;
    const session = http2.connect(
      unix ? 'http://localhost' : `http://${o.server}`,
      unix ? { createConnection: () => net.connect(unix) } : {},
    );
    const timer = setTimeout(() => finish(2, `no answer from ${o.server} in ${o.timeoutMs} ms`), o.timeoutMs);
    const failed = (e: Error) => {
      // A socket this user may not open (connect's error, or the stream's whose cause it is): the probe could
      // not ask (exit 3), which says nothing of the daemon.
      const codes = [(e as NodeJS.ErrnoException).code, ((e.cause ?? {}) as NodeJS.ErrnoException).code];
      if (unix && codes.some((c) => c === 'EACCES' || c === 'EPERM')) {
        // Loaded on this path only: a probe that can ask loads nothing but Node built-ins.
        void import('../shared/socket-access.js').then(({ socketAccessWhy }) =>
          finish(3, `could not ask: permission denied: you may not open ${unix} ${socketAccessWhy(unix)}`),
        );
      } else finish(2, `${o.server}: ${e.message}`);
    };
    session.on('error', failed);
    const req = session.request({
      ':method': 'POST',
      ':path': '/grpc.health.v1.Health/Check',
      'content-type': 'application/grpc',
      te: 'trailers',
    });
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('error', failed);
    req.on('trailers', (t) => {
      const code = Number(t['grpc-status'] ?? 2);
      if (code !== 0) {
        finish(1, `health check failed: gRPC status ${code}: ${decodeURIComponent(String(t['grpc-message'] ?? ''))}`);
        return;
      }
      try {
        const s = decodeStatus(Buffer.concat(chunks));
        finish(s === 1 ? 0 : 1, `${o.service || '(server)'}: ${STATUS[s] ?? s}`);
      } catch (e) {
        finish(2, `${o.server}: not a health response: ${(e as Error).message}`);
      }
    });
    req.on('response', (h) => {
      // Trailers-only responses (an error before any message) carry grpc-status in the headers.
      if (h['grpc-status'] !== undefined && Number(h['grpc-status']) !== 0) {
        finish(
          1,
          `health check failed: gRPC status ${h['grpc-status']}: ${decodeURIComponent(String(h['grpc-message'] ?? ''))}`,
        );
      }
    });
    req.end(encodeRequest(o.service));
  });
}

const USAGE = `Usage: xdpctl-health [options]

One grpc.health.v1.Health/Check call; exit 0 when SERVING, 1 for any other answer, 2 for no answer,
3 when it could not ask (bad usage, a socket this user may not open).

Options:
  --server <address>  unix:/path or host:port (plaintext: loopback only) (default: "unix:/run/xdpctl/xdpctl.sock")
  --service <name>    the service to check, e.g. xdpctl.datapath (default: "", the server)
  --timeout <time>    how long to wait, e.g. 3s or 500ms (default: "3s")
  -h, --help          display help for command
`;

/** Parse argv; throws a usage message. */
export function parseArgs(argv: string[]): ProbeOptions | 'help' {
  const o: ProbeOptions = { server: 'unix:/run/xdpctl/xdpctl.sock', service: '', timeoutMs: 3000 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`option '${a}' needs a value`);
      return v;
    };
    if (a === '-h' || a === '--help') return 'help';
    else if (a === '--server') o.server = value();
    else if (a === '--service') o.service = value();
    else if (a === '--timeout') {
      const v = value();
      const m = /^(\d+(?:\.\d+)?)(ms|s)$/.exec(v);
      if (!m) throw new Error(`--timeout "${v}": use a number with ms or s, e.g. 3s`);
      o.timeoutMs = Number(m[1]) * (m[2] === 's' ? 1000 : 1);
    } else throw new Error(`unknown option '${a}'`);
  }
  return o;
}

function isMain(): boolean {
  try {
    return !!process.argv[1] && realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) {
  let opts: ProbeOptions | 'help';
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`xdpctl-health: ${(e as Error).message}\n${USAGE}`);
    process.exit(3);
  }
  if (opts === 'help') {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const [code, message] = await probe(opts);
  (code === 0 ? process.stdout : process.stderr).write(`${message}\n`);
  process.exit(code);
}
