/**
 * A daemon whose OTLP receiver is not there (its port closed: every connect refused at once), then is (a
 * tiny receiver started in the test on that port), for each protocol (http/json, http/protobuf, grpc):
 *  - the log says it once per signal with the exporter's own cause (ECONNREFUSED and the address), not
 *    the reader's "export timed out", then nothing more while it keeps failing (summaries every 5 min), and
 *    once per signal when exports succeed again; none of these lines carries an RPC's trace id although the
 *    spans exported were the RPCs' own;
 *  - xdpctl_telemetry_export_failures_total{xdpctl_telemetry_signal} rises while it fails and stops after;
 *  - `xdpctl status` says "failing since ... (connection refused ...)", then "ok".
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { createServer, request, type Server as HttpServer } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { after, describe, it } from 'node:test';

import { Server as GrpcServer, ServerCredentials, type ServiceDefinition } from '@grpc/grpc-js';
import { Metadata } from 'nice-grpc';

import { DaemonProcess, promSample, type LogRecord } from '../helpers/daemon.js';
import { CLI, kernelOnly, runId, sleep } from '../helpers/env.js';

const PROTOCOLS = ['http/json', 'http/protobuf', 'grpc'] as const;

function httpGet(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    request(url, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve(body));
    })
      .on('error', reject)
      .end();
  });
}

/** A port nothing listens on (bound, then closed). */
async function closedPort(): Promise<number> {
  const s = createNetServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** A receiver on `port` that takes every export: OTLP/HTTP (any path) or OTLP/gRPC (both services). */
async function receiver(protocol: string, port: number): Promise<{ got: string[]; close(): Promise<void> }> {
  const got: string[] = [];
  if (protocol === 'grpc') {
    const server = new GrpcServer();
    const raw = (path: string): ServiceDefinition => ({
      Export: {
        path,
        requestStream: false,
        responseStream: false,
        requestSerialize: (b: Buffer) => b,
        requestDeserialize: (b: Buffer) => b,
        responseSerialize: (b: Buffer) => b,
        responseDeserialize: (b: Buffer) => b,
      },
    });
    for (const signal of ['trace', 'metrics']) {
      server.addService(
        raw(`/opentelemetry.proto.collector.${signal}.v1.${signal === 'trace' ? 'Trace' : 'Metrics'}Service/Export`),
        {
          Export: (_call: unknown, cb: (e: null, r: Buffer) => void) => {
            got.push(signal === 'trace' ? '/v1/traces' : '/v1/metrics');
            cb(null, Buffer.alloc(0)); // an empty Export*ServiceResponse
          },
        },
      );
    }
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`127.0.0.1:${port}`, ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())),
    );
    return { got, close: () => new Promise<void>((r) => server.tryShutdown(() => r())) };
  }
  const server: HttpServer = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      got.push(req.url ?? '');
      res.setHeader('content-type', req.headers['content-type'] ?? 'application/json');
      res.end(req.headers['content-type']?.includes('json') ? '{}' : '');
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return {
    got,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
}

describe('telemetry export failing, then recovering', kernelOnly(), () => {
  const id = runId();
  const daemons: DaemonProcess[] = [];
  const closers: (() => Promise<void>)[] = [];
  after(async () => {
    for (const d of daemons) await d.destroy();
    for (const c of closers) await c().catch(() => undefined);
  });

  PROTOCOLS.forEach((protocol, i) => {
    it(`${protocol}: the exporter's cause once per signal, no trace id, counted, in status; once when it recovers`, async (t) => {
      const port = await closedPort();
      const d = await DaemonProcess.start(`${id}x${i}`, ['--prometheus', '127.0.0.1:0', '--log-level', 'info'], {
        OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
        OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
        OTEL_METRIC_EXPORT_INTERVAL: '2000', // the exporter's own timeout: 1800 ms
        OTEL_BSP_SCHEDULE_DELAY: '100',
        OTEL_EXPORTER_OTLP_TIMEOUT: '2500', // how long the span exporter retries a refused connect before it reports
      });
      daemons.push(d);
      const c = d.clients();
      const traceId = `5e${String(i).padStart(30, '0')}`;
      const rpcs = async (ms: number) => {
        const end = Date.now() + ms;
        while (Date.now() < end) {
          // RPCs in a client's trace: their spans are what is exported, their context is around the exports.
          await c.daemon.getStatus({}, { metadata: Metadata({ traceparent: `00-${traceId}-00f067aa0ba902b7-01` }) });
          await sleep(150);
        }
      };
      const metricsUrl = `http://${d.prometheus}/metrics`;
      const failures = async (signal: string) =>
        promSample(await httpGet(metricsUrl), 'xdpctl_telemetry_export_failures_total', {
          xdpctl_telemetry_signal: signal,
        }) ?? 0;
      // Not spawnSync: the receiver runs in this process and must answer meanwhile.
      const status = async () =>
        (await promisify(execFile)(CLI, ['--server', d.unix, '--timeout', '5s', 'status'], { encoding: 'utf8' }))
          .stdout;
      const otel = () => d.logLines().filter((l: LogRecord) => l.component === 'otel');
      const lines = (re: RegExp) => otel().filter((l) => re.test(l.msg));

      // 7 s refused: a metric export every 2 s, span exports each reported after ~1 s of retries.
      await rpcs(7000);
      const failing = lines(/^telemetry export of (traces|metrics) .* failing: /);
      t.diagnostic(`${otel().length} otel lines: ${JSON.stringify(otel().map((l) => l.msg))}`);
      assert.deepEqual(failing.map((l) => l.signal).sort(), ['metrics', 'traces'], 'one "failing" line per signal');
      const refused = new RegExp(`ECONNREFUSED.*127\\.0\\.0\\.1:${port}|127\\.0\\.0\\.1:${port}.*ECONNREFUSED`);
      // A new cause is said at once: gRPC's first failure on a channel may not say why (its next one does).
      const changed = lines(/^telemetry export of (traces|metrics) .* still failing, now: /);
      for (const signal of ['traces', 'metrics']) {
        const said = [...failing, ...changed].filter((l) => l.signal === signal);
        assert.ok(
          said.some((l) => refused.test(l.msg)),
          `${signal}: the refused connect, with the address, is said: ${JSON.stringify(said.map((l) => l.msg))}`,
        );
        if (refused.test(failing.find((l) => l.signal === signal)!.msg)) {
          assert.equal(said.length, 1, `${signal}: said once`);
        }
      }
      if (protocol !== 'grpc') assert.deepEqual(changed, [], 'over HTTP the first failure says why');
      for (const l of [...failing, ...changed]) assert.equal(l.level, 40);
      assert.deepEqual(lines(/timed out/), [], 'never "timed out": every connect was refused at once');
      assert.equal(
        otel().filter((l) => l.level >= 40).length,
        failing.length + changed.length,
        'nothing else at warn or error while it keeps failing (damped)',
      );
      assert.deepEqual(
        otel().filter((l) => 'trace_id' in l || 'span_id' in l),
        [],
        "no export line carries an RPC's trace id",
      );
      const m1 = await failures('metrics');
      const s1 = await failures('traces');
      assert.ok(m1 >= 2, `metric exports failed: ${m1}`);
      assert.ok(s1 >= 1, `span exports failed: ${s1}`);
      const text = await status();
      t.diagnostic(text);
      assert.match(
        text,
        new RegExp(
          `telemetry export: +metrics to otlp ${protocol} http://127\\.0\\.0\\.1:${port}\\S*: failing since \\d{4}-\\S+Z \\(.*ECONNREFUSED`,
        ),
      );
      assert.match(
        text,
        new RegExp(`telemetry export: +traces to otlp ${protocol} \\S+: failing since .*ECONNREFUSED`),
      );

      // The receiver appears: one "succeeds again" line per signal, the counter stops.
      const r = await receiver(protocol, port);
      closers.push(r.close);
      const end = Date.now() + 30_000;
      while (lines(/^telemetry export of (traces|metrics) .* succeeds again/).length < 2 && Date.now() < end) {
        await rpcs(500);
      }
      const again = lines(/^telemetry export of (traces|metrics) .* succeeds again/);
      assert.deepEqual(again.map((l) => l.signal).sort(), ['metrics', 'traces'], 'one "succeeds again" per signal');
      assert.ok(r.got.includes('/v1/metrics') && r.got.includes('/v1/traces'), `received: ${r.got.join(' ')}`);
      for (const l of again) assert.equal(l.level, 30);
      const m2 = await failures('metrics');
      const s2 = await failures('traces');
      await rpcs(4500);
      assert.equal(await failures('metrics'), m2, 'no metric export failed once the receiver was there');
      assert.equal(await failures('traces'), s2, 'no span export failed once the receiver was there');
      assert.ok(m2 >= m1 && s2 >= s1);
      assert.equal(lines(/^telemetry export of (traces|metrics) .* failing: /).length, 2, 'no new "failing" line');
      assert.deepEqual(
        otel().filter((l) => 'trace_id' in l),
        [],
      );
      const ok = await status();
      assert.match(ok, new RegExp(`telemetry export: +metrics to otlp ${protocol} \\S+: ok \\(last export \\d{4}-`));
      assert.match(ok, new RegExp(`telemetry export: +traces to otlp ${protocol} \\S+: ok `));
    });
  });
});
