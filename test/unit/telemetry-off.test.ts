/**
 * The daemon with nothing to export (no OTEL_* variable, no --prometheus), in a process of its own (this
 * file): a client's W3C trace context still reaches the log lines of its RPC, through a real nice-grpc
 * server on 127.0.0.1:0 with the daemon's telemetry middleware (nice-grpc-opentelemetry's, under the API's
 * no-op tracer, with @opentelemetry/core's W3C propagator); and what only export needs is not loaded (the
 * at-rest memory target: the OpenTelemetry SDK packages and exporters, and Node's bundled undici that a
 * static ESM import of node:http pulls in). The modules are those of the daemon's own graph (daemon.ts and
 * telemetry/sdk.ts, what main.ts imports), recorded by a module hook from before they load.
 */
import assert from 'node:assert/strict';
import { registerHooks } from 'node:module';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';

const loaded: string[] = [];
registerHooks({
  load(url, context, next) {
    loaded.push(url);
    return next(url, context);
  },
});
for (const k of Object.keys(process.env)) if (k.startsWith('OTEL_')) delete process.env[k];

describe('telemetry off (nothing exported)', () => {
  const lines: Record<string, unknown>[] = [];
  let shutdown: (() => Promise<unknown>) | undefined;
  let port = 0;
  let rpcSpans: boolean | undefined;

  before(async () => {
    // The daemon's module graph first, as main.ts loads it.
    await import('../../src/server/daemon.js');
    const { startTelemetry } = await import('../../src/server/telemetry/sdk.js');
    const { telemetryMiddleware } = await import('../../src/server/telemetry/rpc.js');
    const { traceLogFields } = await import('../../src/server/telemetry/log-context.js');
    const { createServer } = await import('nice-grpc');
    const { HealthDefinition, HealthServiceImpl, HealthState } = await import('nice-grpc-server-health');
    const { pino } = await import('pino');
    const telemetry = await startTelemetry({ version: 'test' });
    rpcSpans = telemetry.rpcSpans;
    const sink = new Writable({
      write(chunk, _enc, done) {
        for (const l of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(l));
        done();
      },
    });
    const log = pino({ mixin: traceLogFields }, sink);
    const health = HealthState();
    health.setStatus('healthy');
    const server = createServer()
      .use(telemetryMiddleware())
      .use(async function* logging(call, context) {
        log.info({ method: call.method.path, tag: context.metadata.get('tag') }, 'call');
        return yield* call.next(call.request, context);
      });
    server.add(HealthDefinition, HealthServiceImpl(health));
    port = await server.listen('127.0.0.1:0');
    shutdown = async () => {
      await server.shutdown();
      await telemetry.shutdown();
    };
  });
  after(async () => {
    await shutdown?.();
  });

  it("RPCs get no span of their own; their log lines carry the client's trace context", async () => {
    assert.equal(rpcSpans, false);
    const { createChannel, createClient, Metadata } = await import('nice-grpc');
    const { HealthDefinition } = await import('nice-grpc-server-health');
    const ch = createChannel(`127.0.0.1:${port}`);
    try {
      const client = createClient(HealthDefinition, ch);
      const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
      const parent = '00f067aa0ba902b7';
      const call = (tag: string, md: Record<string, string>) =>
        client.check({ service: '' }, { metadata: Metadata({ tag, ...md }) });
      await call('sampled', { traceparent: `00-${traceId}-${parent}-01`, tracestate: 'k=v' });
      await call('unsampled', { traceparent: `00-${traceId}-${parent}-00` });
      await call('none', {});
      // Invalid: version ff, an all-zero trace id, upper-case hex, version 00 with a fifth field.
      await call('bad1', { traceparent: `ff-${traceId}-${parent}-01` });
      await call('bad2', { traceparent: `00-${'0'.repeat(32)}-${parent}-01` });
      await call('bad3', { traceparent: `00-${traceId.toUpperCase()}-${parent}-01` });
      await call('bad4', { traceparent: `00-${traceId}-${parent}-01-x` });
      // A later version may carry more fields.
      await call('future', { traceparent: `01-${traceId}-${parent}-01-more` });
      const byTag = (t: string) => {
        const l = lines.find((x) => x.tag === t);
        assert.ok(l, `no log line for ${t}`);
        return { trace_id: l.trace_id, span_id: l.span_id, trace_flags: l.trace_flags };
      };
      assert.deepEqual(byTag('sampled'), { trace_id: traceId, span_id: parent, trace_flags: '01' });
      assert.deepEqual(byTag('unsampled'), { trace_id: traceId, span_id: parent, trace_flags: '00' });
      assert.deepEqual(byTag('future'), { trace_id: traceId, span_id: parent, trace_flags: '01' });
      const none = { trace_id: undefined, span_id: undefined, trace_flags: undefined };
      for (const t of ['none', 'bad1', 'bad2', 'bad3', 'bad4']) assert.deepEqual(byTag(t), none, t);
    } finally {
      ch.close();
    }
  });

  it('loads neither the SDK, its exporters nor undici', () => {
    const urls = loaded.filter((u) => u.includes('/node_modules/'));
    assert.ok(
      urls.some((u) => u.includes('/@grpc/grpc-js/')),
      'the hook saw the daemon modules load',
    );
    const unwanted = urls.filter((u) =>
      /\/node_modules\/@opentelemetry\/(sdk-[a-z-]+|resources|exporter-[a-z-]+)\//.test(u),
    );
    assert.deepEqual(unwanted, []);
    assert.deepEqual(
      (process as unknown as { moduleLoadList: string[] }).moduleLoadList.filter((m) => m.includes('undici')),
      [],
      'a static ESM import of node:http loads undici',
    );
  });
});
