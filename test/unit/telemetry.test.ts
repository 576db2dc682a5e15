/**
 * Telemetry without root: the --prometheus address rules, which OTEL_*
 * variables turn export on, the scrape endpoint, datapath metrics fed by the
 * counter hub (one shared read however many watchers), and RPC spans,
 * metrics and log trace ids through a real nice-grpc server on 127.0.0.1:0
 * with the SDK started by startTelemetry (in-memory exporter).
 */
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';

import { PrometheusSerializer } from '@opentelemetry/exporter-prometheus';
import { MeterProvider, MetricReader, type ResourceMetrics } from '@opentelemetry/sdk-metrics';
import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace';
import { ClientError, createChannel, createClient, createServer, Metadata, Status, type Server } from 'nice-grpc';
import { HealthDefinition, HealthServiceImpl, HealthState } from 'nice-grpc-server-health';
import { pino } from 'pino';

import type { CounterSnapshot } from '../../src/server/core/controller.js';
import { CounterHub } from '../../src/server/core/counter-hub.js';
import { zeroRuleStats } from '../../src/server/core/dataplane.js';
import { errorMiddleware } from '../../src/server/services/status.js';
import {
  DATAPATH_METRICS,
  DatapathMetricProducer,
  PROMETHEUS_SLICE,
  registerDatapathMetrics,
} from '../../src/server/telemetry/datapath-metrics.js';
import { traceLogFields } from '../../src/server/telemetry/log-context.js';
import {
  EXPOSITION_SLICE,
  isLoopback,
  parsePrometheusAddress,
  PrometheusEndpoint,
  writeExposition,
} from '../../src/server/telemetry/prometheus.js';
import { RPC_METRICS, telemetryMiddleware } from '../../src/server/telemetry/rpc.js';
import { envPrometheus, exportFromEnv, startTelemetry, type Telemetry } from '../../src/server/telemetry/sdk.js';

/** A metric reader that collects when asked (what a Prometheus scrape does). */
class PullReader extends MetricReader {
  protected async onForceFlush(): Promise<void> {}
  protected async onShutdown(): Promise<void> {}
}

/** Every data point of a metric: [attributes, value]. */
function points(rm: ResourceMetrics, name: string): [Record<string, unknown>, unknown][] {
  return rm.scopeMetrics
    .flatMap((s) => s.metrics)
    .filter((m) => m.descriptor.name === name)
    .flatMap((m) =>
      (m.dataPoints as { attributes: Record<string, unknown>; value: unknown }[]).map(
        (p) => [p.attributes, p.value] as [Record<string, unknown>, unknown],
      ),
    );
}

/** Poll until `fn` returns something (spans end and export just after the response). */
async function eventually<T>(fn: () => T | undefined, what: string, ms = 3000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function get(url: string, method = 'GET'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('--prometheus address', () => {
  it('defaults to loopback 127.0.0.1:9464 and takes host:port, [v6]:port or a bare port', () => {
    assert.deepEqual(parsePrometheusAddress(true), { host: '127.0.0.1', port: 9464 });
    assert.deepEqual(parsePrometheusAddress('9100'), { host: '127.0.0.1', port: 9100 });
    assert.deepEqual(parsePrometheusAddress('0.0.0.0:9100'), { host: '0.0.0.0', port: 9100 });
    assert.deepEqual(parsePrometheusAddress('[::1]:0'), { host: '::1', port: 0 });
    assert.deepEqual(parsePrometheusAddress('localhost:1'), { host: 'localhost', port: 1 });
  });

  it('rejects what is not an address, naming the flag', () => {
    for (const [bad, why] of [
      ['::1:80', /brackets/],
      ['example.com:80', /not an IP address/],
      ['127.0.0.1:65536', /port must be 0-65535/],
      ['127.0.0.1:', /port must be/],
      ['abc', /port must be/],
      ['10.0.0.1:-1', /port must be/],
    ] as const) {
      assert.throws(
        () => parsePrometheusAddress(bad),
        (e: Error) => e.message.startsWith('--prometheus') && why.test(e.message),
        bad,
      );
    }
  });

  it('knows loopback from the rest', () => {
    for (const h of ['127.0.0.1', '127.1.2.3', '::1', 'localhost', '::ffff:127.0.0.1']) assert.ok(isLoopback(h), h);
    for (const h of ['0.0.0.0', '::', '10.0.0.1', '::ffff:10.0.0.1']) assert.ok(!isLoopback(h), h);
  });
});

describe('which OTEL_* variables turn export on', () => {
  it('nothing set: nothing exported (the SDK alone would default to OTLP)', () => {
    assert.deepEqual(exportFromEnv({}), { traces: false, metrics: false });
  });
  it('an OTLP endpoint turns on traces and metrics; per-signal endpoints one each', () => {
    assert.deepEqual(exportFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' }), { traces: true, metrics: true });
    assert.deepEqual(exportFromEnv({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://c:4318/v1/traces' }), {
      traces: true,
      metrics: false,
    });
    assert.deepEqual(exportFromEnv({ OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: 'http://c:4318/v1/metrics' }), {
      traces: false,
      metrics: true,
    });
  });
  it('exporter lists win, and "none" switches a signal off', () => {
    const env = { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_TRACES_EXPORTER: 'none' };
    assert.deepEqual(exportFromEnv(env), { traces: false, metrics: true });
    assert.deepEqual(exportFromEnv({ OTEL_METRICS_EXPORTER: 'otlp,none' }), { traces: false, metrics: false });
    assert.deepEqual(exportFromEnv({ OTEL_TRACES_EXPORTER: 'console', OTEL_METRICS_EXPORTER: 'console' }), {
      traces: true,
      metrics: true,
    });
  });
});

describe('OTEL_METRICS_EXPORTER=prometheus', () => {
  it('is the --prometheus endpoint, at OTEL_EXPORTER_PROMETHEUS_HOST/PORT or 127.0.0.1:9464', () => {
    assert.equal(envPrometheus({}), undefined);
    assert.equal(envPrometheus({ OTEL_METRICS_EXPORTER: 'otlp' }), undefined);
    assert.deepEqual(envPrometheus({ OTEL_METRICS_EXPORTER: 'otlp,prometheus' }), { host: '127.0.0.1', port: 9464 });
    assert.deepEqual(
      envPrometheus({
        OTEL_METRICS_EXPORTER: 'prometheus',
        OTEL_EXPORTER_PROMETHEUS_HOST: '::1',
        OTEL_EXPORTER_PROMETHEUS_PORT: '9500',
      }),
      { host: '::1', port: 9500 },
    );
  });
});

/**
 * The datapath instruments of `hub` registered on a meter that a pull reader reads; `fn` with the reader; then
 * the instruments unregistered, the hub closed and the provider shut down, even when `fn` failed.
 */
async function withDatapathMetrics(hub: CounterHub, fn: (reader: PullReader) => Promise<void>): Promise<void> {
  const producer = new DatapathMetricProducer();
  const reader = new PullReader({ metricProducers: [producer] });
  const provider = new MeterProvider({ readers: [reader] });
  const unregister = registerDatapathMetrics(provider.getMeter('t'), hub, { name: 't' }, producer);
  try {
    await fn(reader);
  } finally {
    unregister();
    hub.close();
    await provider.shutdown();
  }
}

describe('Prometheus text written a slice at a time', () => {
  it('every point once, each family one group with one TYPE line, other tasks run between slices', async () => {
    const n = 3 * EXPOSITION_SLICE + 17;
    const big = Array.from({ length: n }, (_, i) => `r${i}`);
    const hub = new CounterHub(
      () => ({
        time: Date.now(),
        rules: big.map((name, i) => ({ ...zeroRuleStats(), name, matched: BigInt(i) })),
        backends: [],
        links: [],
        global: [0n, 0n, 0n, 0n, 0n],
      }),
      20,
    );
    await withDatapathMetrics(hub, async (reader) => {
      const { resourceMetrics } = await reader.collect();
      const chunks: string[] = [];
      const out = new Writable({
        write(chunk, _enc, done) {
          chunks.push(String(chunk));
          done();
        },
      });
      let turns = 0;
      let running = true;
      const spin = () => {
        turns++;
        if (running) setImmediate(spin);
      };
      setImmediate(spin);
      const serializers = {
        first: new PrometheusSerializer(),
        rest: new PrometheusSerializer(undefined, false, undefined, true),
      };
      await writeExposition(resourceMetrics, serializers, out);
      running = false;
      assert.ok(turns >= 4, `other tasks ran ${turns} times while ${n} rules were written`);
      const lines = chunks.join('').split('\n').filter(Boolean);
      // Each family: its lines form one run, one TYPE line, before its samples.
      const family = (l: string) =>
        l.startsWith('#') ? l.split(' ')[2] : l.replace(/[{ ].*$/, '').replace(/_total$/, '');
      const seen = new Set<string>();
      let current = '';
      for (const l of lines) {
        const f = family(l).replace(/_total$/, '');
        if (f !== current) {
          assert.ok(!seen.has(f), `family ${f} appears in two groups`);
          seen.add(f);
          current = f;
        }
      }
      assert.equal(lines.filter((l) => l.startsWith('# TYPE xdpctl_rule_packets')).length, 1);
      const samples = lines.filter((l) => l.startsWith('xdpctl_rule_packets_total{') && l.includes('"matched"'));
      assert.equal(samples.length, n);
      assert.equal(new Set(samples.map((l) => /xdpctl_rule="([^"]+)"/.exec(l)![1])).size, n);
      assert.ok(
        lines.some((l) => l.startsWith('target_info')),
        'target_info once, first',
      );
      assert.equal(lines.filter((l) => l.startsWith('target_info')).length, 1);
    });
  });
});

describe('the datapath families written straight from the snapshot', () => {
  /** A snapshot of `n` rules of 4 backends and 2 links, with names that need escaping, all values different. */
  const snapshot = (n: number): CounterSnapshot => {
    let c = 1n;
    const next = () => (c += 7919n);
    const rules = Array.from({ length: n }, (_, i) => ({
      name: i === 1 ? 'q"uo\\te\nnl' : `r${i}`,
      matched: next(),
      matchedBytes: next(),
      redirected: next(),
      redirectedBytes: next(),
      filtered: next(),
      noBackend: next(),
      redirectErrors: next(),
    }));
    return {
      time: Date.now(),
      rules,
      backends: rules.flatMap((r, i) =>
        [0, 1, 2, 3].map((k) => ({
          rule: r.name,
          ip: `10.${k}.${i >> 8}.${i & 255}`,
          interface: k === 3 ? 'e"th\\3' : `eth${k}`,
          packets: next(),
          bytes: next(),
          redirectErrors: next(),
        })),
      ),
      links: [
        { from: 'a', to: 'b', packets: next(), bytes: next(), redirectErrors: next() },
        { from: 'b', to: 'a', packets: next(), bytes: next(), redirectErrors: next() },
      ],
      global: Array.from({ length: 32 }, () => next()),
    };
  };
  /** Each family's lines ("# HELP", "# UNIT", "# TYPE", then its series in order), by family name. */
  const families = (text: string) => {
    const out = new Map<string, string[]>();
    for (const l of text.split('\n').filter(Boolean)) {
      const name = l.startsWith('#') ? l.split(' ')[2] : l.replace(/[{ ].*$/, '');
      if (!name.startsWith('xdpctl_')) continue;
      out.set(name, [...(out.get(name) ?? []), l]);
    }
    return out;
  };

  it("the same text as the exporter's serializer writes for the producer's points, a piece at a time", async () => {
    const n = 2 * PROMETHEUS_SLICE + 5;
    const snap = snapshot(n);
    const hub = new CounterHub(() => snap, 20);
    const producer = new DatapathMetricProducer();
    producer.attach(hub, { name: 'xdpctld', version: '9.8.7' });
    try {
      const metrics = await producer.build();
      const viaSdk = new PrometheusSerializer().serialize({
        resource: { attributes: {} },
        scopeMetrics: [{ scope: { name: 'xdpctld', version: '9.8.7' }, metrics }],
      } as unknown as ResourceMetrics);
      // Pieces, and which objects' lines each holds between two paces.
      const pieces: string[] = [];
      let sincePace = 0;
      let mostBetweenPaces = 0;
      let paces = 0;
      await producer.writePrometheus(
        async (text) => {
          pieces.push(text);
          sincePace += text.split('\n').filter((l) => l && !l.startsWith('#')).length;
        },
        async () => {
          paces++;
          mostBetweenPaces = Math.max(mostBetweenPaces, sincePace);
          sincePace = 0;
        },
      );
      mostBetweenPaces = Math.max(mostBetweenPaces, sincePace);
      const direct = pieces.join('');
      const a = families(viaSdk);
      const b = families(direct);
      assert.deepEqual([...b.keys()].sort(), [...a.keys()].sort());
      for (const [name, lines] of a) assert.deepEqual(b.get(name), lines, name);
      assert.equal(b.get('xdpctl_rule_packets_total')!.length, 3 + 4 * n);
      assert.equal(b.get('xdpctl_backend_packets_total')!.length, 3 + 4 * n);
      assert.ok(
        direct.includes('xdpctl_rule="q\\"uo\\\\te\\nnl"'),
        'a rule name with a quote, a backslash and a newline escaped as the exporter escapes it',
      );
      // At most a slice of objects between two paces: 4 series per rule (rule packets), 1 per backend.
      assert.ok(mostBetweenPaces <= 4 * PROMETHEUS_SLICE, `${mostBetweenPaces} series between two paces`);
      assert.ok(paces >= 2 * Math.ceil((4 * n) / PROMETHEUS_SLICE), `${paces} paces for ${n} rules x 4 backends`);
    } finally {
      producer.detach(hub);
      hub.close();
    }
  });

  it('nothing when detached or when the read fails', async () => {
    const producer = new DatapathMetricProducer();
    const pieces: string[] = [];
    const send = async (t: string) => void pieces.push(t);
    await producer.writePrometheus(send, async () => undefined);
    const hub = new CounterHub(() => {
      throw new Error('EPERM');
    }, 20);
    producer.attach(hub, { name: 'xdpctld' });
    await producer.writePrometheus(send, async () => undefined);
    producer.detach(hub);
    hub.close();
    assert.deepEqual(pieces, []);
  });

  it('an endpoint scrape writes them from the daemon producer, not through the reader', async () => {
    const ep = await PrometheusEndpoint.listen({ host: '127.0.0.1', port: 0 });
    const { datapathMetrics } = await import('../../src/server/telemetry/datapath-metrics.js');
    const snap = snapshot(3);
    const hub = new CounterHub(() => snap, 20);
    const provider = new MeterProvider({ readers: [ep.reader] });
    const unregister = registerDatapathMetrics(provider.getMeter('t'), hub, { name: 'xdpctld' }, datapathMetrics);
    try {
      const { resourceMetrics } = await ep.reader.collect();
      assert.deepEqual(points(resourceMetrics, DATAPATH_METRICS.rulePackets), [], 'no points collected');
      const body = (await get(`http://${ep.address}/metrics`)).body;
      const f = families(body);
      assert.equal(f.get('xdpctl_rule_packets_total')?.length, 3 + 4 * 3);
      assert.match(
        body,
        /^xdpctl_rule_packets_total\{xdpctl_rule="r0",xdpctl_outcome="matched",otel_scope_name="xdpctld"\} \d+$/m,
      );
      assert.match(body, /^xdpctl_counter_hub_reads_total\{/m);
    } finally {
      unregister();
      hub.close();
      await provider.shutdown();
      await ep.close();
    }
  });
});

describe('Prometheus endpoint', () => {
  it('binds the address given (port 0: a free one), serves /metrics and nothing else', async () => {
    const ep = await PrometheusEndpoint.listen({ host: '127.0.0.1', port: 0 });
    try {
      assert.match(ep.address, /^127\.0\.0\.1:\d+$/);
      assert.notEqual(ep.address, '127.0.0.1:0');
      const provider = new MeterProvider({ readers: [ep.reader] });
      provider.getMeter('t').createCounter('unit.test.things').add(3, { kind: 'x' });
      const ok = await get(`http://${ep.address}/metrics`);
      assert.equal(ok.status, 200);
      assert.match(ok.body, /^unit_test_things_total\{kind="x".*\} 3$/m);
      assert.equal((await get(`http://${ep.address}/`)).status, 404);
      assert.equal((await get(`http://${ep.address}/metrics`, 'POST')).status, 405);
      await provider.shutdown();
    } finally {
      await ep.close();
    }
  });

  it('a port in use stops the start with the address in the message', async () => {
    const a = await PrometheusEndpoint.listen({ host: '127.0.0.1', port: 0 });
    try {
      const [host, port] = [a.address.split(':')[0], Number(a.address.split(':')[1])];
      await assert.rejects(
        PrometheusEndpoint.listen({ host, port }),
        new RegExp(`Prometheus on ${host}:${port}.*EADDRINUSE`),
      );
    } finally {
      await a.close();
    }
  });
});

describe('datapath metrics', () => {
  let n = 0n;
  const snap = (): CounterSnapshot => {
    n += 10n;
    return {
      time: Date.now(),
      rules: [
        {
          name: 'web',
          matched: n,
          matchedBytes: n * 100n,
          redirected: n - 1n,
          redirectedBytes: 7n,
          filtered: 1n,
          noBackend: 0n,
          redirectErrors: 0n,
        },
      ],
      backends: [{ rule: 'web', ip: '10.0.0.2', interface: 'veth1', packets: n - 1n, bytes: 9n, redirectErrors: 0n }],
      links: [{ from: 'eth0', to: 'tap0', packets: 5n, bytes: 500n, redirectErrors: 0n }],
      global: [0n, 1n, 2n, 3n, n],
    };
  };

  it('reports rule, backend, link and verdict counters from one hub read per collection', async () => {
    const hub = new CounterHub(snap, 20);
    await withDatapathMetrics(hub, async (reader) => {
      const { resourceMetrics: rm } = await reader.collect();
      assert.equal(hub.reads, 1, 'one kernel read for every instrument');
      assert.deepEqual(
        points(rm, DATAPATH_METRICS.rulePackets).map(([a, v]) => [a['xdpctl.outcome'], v]),
        [
          ['matched', 10],
          ['redirected', 9],
          ['filtered', 1],
          ['no_backend', 0],
        ],
      );
      assert.deepEqual(points(rm, DATAPATH_METRICS.ruleBytes)[0], [
        { 'xdpctl.rule': 'web', 'xdpctl.outcome': 'matched' },
        1000,
      ]);
      assert.deepEqual(points(rm, DATAPATH_METRICS.backendPackets), [
        [{ 'xdpctl.rule': 'web', 'xdpctl.backend.ip': '10.0.0.2', 'xdpctl.backend.interface': 'veth1' }, 9],
      ]);
      assert.deepEqual(points(rm, DATAPATH_METRICS.linkBytes), [
        [{ 'xdpctl.link.from': 'eth0', 'xdpctl.link.to': 'tap0' }, 500],
      ]);
      assert.deepEqual(
        points(rm, DATAPATH_METRICS.verdictPackets).find(([a]) => a['xdpctl.verdict'] === 'redirect'),
        [{ 'xdpctl.verdict': 'redirect' }, 10],
      );
      assert.deepEqual(points(rm, DATAPATH_METRICS.hubReads), [[{}, 1]]);
    });
  });

  it('redirect errors per rule, backend and link, and the datapath errors by kind, with their Prometheus names', async () => {
    const errors: CounterSnapshot = {
      time: Date.now(),
      rules: [
        {
          name: 'web',
          matched: 20n,
          matchedBytes: 2000n,
          redirected: 13n,
          redirectedBytes: 1300n,
          filtered: 0n,
          noBackend: 0n,
          redirectErrors: 7n,
        },
      ],
      backends: [
        { rule: 'web', ip: '10.0.0.2', interface: 'veth1', packets: 13n, bytes: 1300n, redirectErrors: 7n },
        { rule: 'web', ip: '10.0.0.3', interface: 'veth2', packets: 0n, bytes: 0n, redirectErrors: 0n },
      ],
      links: [{ from: 'eth0', to: 'tap0', packets: 5n, bytes: 500n, redirectErrors: 3n }],
      // aborted drop pass tx redirect | truncated fragment no_rule no_backend redirect malformed ttl ip_options xmit martian
      // xmit_unattributed not_for_us
      global: [0n, 0n, 0n, 0n, 25n, 1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n, 10n, 9n, 2n, 11n],
    };
    const hub = new CounterHub(() => ({ ...errors, time: Date.now() }), 20);
    await withDatapathMetrics(hub, async (reader) => {
      const { resourceMetrics: rm } = await reader.collect();
      assert.deepEqual(points(rm, DATAPATH_METRICS.ruleRedirectErrors), [[{ 'xdpctl.rule': 'web' }, 7]]);
      assert.deepEqual(points(rm, DATAPATH_METRICS.backendRedirectErrors), [
        [{ 'xdpctl.rule': 'web', 'xdpctl.backend.ip': '10.0.0.2', 'xdpctl.backend.interface': 'veth1' }, 7],
        [{ 'xdpctl.rule': 'web', 'xdpctl.backend.ip': '10.0.0.3', 'xdpctl.backend.interface': 'veth2' }, 0],
      ]);
      assert.deepEqual(points(rm, DATAPATH_METRICS.linkRedirectErrors), [
        [{ 'xdpctl.link.from': 'eth0', 'xdpctl.link.to': 'tap0' }, 3],
      ]);
      assert.deepEqual(
        points(rm, DATAPATH_METRICS.datapathErrors).map(([a, v]) => [a['xdpctl.error'], v]),
        [
          ['truncated', 1],
          ['fragment', 2],
          ['no_rule', 3],
          ['no_backend', 4],
          ['redirect', 5],
          ['malformed', 6],
          ['ttl', 7],
          ['ip_options', 8],
          ['xmit', 10],
          ['martian', 9],
          ['xmit_unattributed', 2],
          ['not_for_us', 11],
        ],
      );
      // The errors are not in the redirected outcome (the kernel's counters keep them apart).
      assert.equal(
        points(rm, DATAPATH_METRICS.rulePackets).find(([a]) => a['xdpctl.outcome'] === 'redirected')?.[1],
        13,
      );
      const text = new PrometheusSerializer().serialize(rm);
      assert.match(text, /^# TYPE xdpctl_rule_redirect_errors_total counter$/m);
      assert.match(text, /^xdpctl_rule_redirect_errors_total\{xdpctl_rule="web",otel_scope_name="t"\} 7$/m);
      assert.match(
        text,
        /^xdpctl_backend_redirect_errors_total\{xdpctl_rule="web",xdpctl_backend_ip="10\.0\.0\.2",xdpctl_backend_interface="veth1",otel_scope_name="t"\} 7$/m,
      );
      assert.match(
        text,
        /^xdpctl_link_redirect_errors_total\{xdpctl_link_from="eth0",xdpctl_link_to="tap0",otel_scope_name="t"\} 3$/m,
      );
      assert.match(text, /^xdpctl_datapath_errors_total\{xdpctl_error="xmit",otel_scope_name="t"\} 10$/m);
      assert.match(text, /^# HELP xdpctl_backend_redirect_errors_total .*xdp:xdp_redirect_err/m);
    });
  });

  it('while watches run, collections reuse their reads: reads do not grow with watchers or exports', async () => {
    const hub = new CounterHub(snap, 20);
    const ac = new AbortController();
    await withDatapathMetrics(hub, async (reader) => {
      try {
        // 100 watchers at 200 ms: one shared read every 200 ms.
        const watches = Array.from({ length: 100 }, async () => {
          for await (const _ of hub.watch(200, ac.signal)) void _;
        });
        await new Promise((r) => setTimeout(r, 50));
        const before = hub.reads;
        const t0 = Date.now();
        // 20 exports, each further apart than the hub's tick: a per-export read would show.
        for (let i = 0; i < 20; i++) {
          await reader.collect();
          await new Promise((r) => setTimeout(r, 30));
        }
        const { resourceMetrics: rm } = await reader.collect();
        const reads = hub.reads - before;
        const ticks = Math.ceil((Date.now() - t0) / 200) + 1;
        assert.ok(reads <= ticks, `21 exports and 100 watchers made ${reads} reads in ${ticks} watch ticks`);
        assert.deepEqual(points(rm, DATAPATH_METRICS.hubWatchers), [[{}, 100]]);
        assert.deepEqual(points(rm, DATAPATH_METRICS.hubReads), [[{}, hub.reads]]);
        ac.abort();
        await Promise.all(watches);
      } finally {
        ac.abort();
      }
    });
  });
});

describe('datapath metrics: exactly the objects of the latest read', () => {
  /** A snapshot of `n` rules named r0..r{n-1}, each with 4 backends; counters derived from the index. */
  const rules = (names: string[]): CounterSnapshot => ({
    time: Date.now(),
    rules: names.map((name, i) => ({
      name,
      matched: BigInt(i + 1),
      matchedBytes: BigInt(100 * (i + 1)),
      redirected: BigInt(i),
      redirectedBytes: 0n,
      filtered: 0n,
      noBackend: 1n,
      redirectErrors: 0n,
    })),
    backends: names.flatMap((rule, i) =>
      [0, 1, 2, 3].map((b) => ({
        rule,
        ip: `10.${b}.${(i >> 8) & 255}.${i & 255}`,
        interface: 'veth1',
        packets: BigInt(i * 4 + b),
        bytes: 0n,
        redirectErrors: 0n,
      })),
    ),
    links: [],
    global: [0n, 0n, 0n, 0n, 0n],
  });

  it('a deleted rule and its backends leave the next export; a new one starts its own sum', async () => {
    let names = ['keep', 'gone'];
    const hub = new CounterHub(() => rules(names), 20, 0);
    const seen = (rm: ResourceMetrics, metric: string, attr: string) => points(rm, metric).map(([a]) => a[attr]);
    await withDatapathMetrics(hub, async (reader) => {
      let { resourceMetrics: rm } = await reader.collect();
      assert.deepEqual([...new Set(seen(rm, DATAPATH_METRICS.rulePackets, 'xdpctl.rule'))], ['keep', 'gone']);
      const startOf = (r: ResourceMetrics, rule: string) =>
        r.scopeMetrics
          .flatMap((m) => m.metrics)
          .find((m) => m.descriptor.name === DATAPATH_METRICS.rulePackets)!
          .dataPoints.find((p) => p.attributes['xdpctl.rule'] === rule)!.startTime;
      const keepStart = startOf(rm, 'keep');
      await new Promise((r) => setTimeout(r, 1100)); // a later second: a new start time is visible
      names = ['keep', 'new'];
      await new Promise((r) => setTimeout(r, 30)); // past the hub's shared snapshot
      ({ resourceMetrics: rm } = await reader.collect());
      assert.deepEqual([...new Set(seen(rm, DATAPATH_METRICS.rulePackets, 'xdpctl.rule'))], ['keep', 'new']);
      assert.deepEqual([...new Set(seen(rm, DATAPATH_METRICS.backendPackets, 'xdpctl.rule'))], ['keep', 'new']);
      assert.deepEqual(startOf(rm, 'keep'), keepStart, 'a series keeps its start');
      assert.ok(startOf(rm, 'new')[0] > keepStart[0], 'a new series starts when it is first reported');
      // Through the Prometheus text too.
      const text = new PrometheusSerializer().serialize(rm);
      assert.doesNotMatch(text, /xdpctl_rule="gone"/);
      assert.match(text, /xdpctl_rule_packets_total\{xdpctl_rule="new",xdpctl_outcome="matched"/);
    });
  });

  it('10 000 rules x 4 backends: every series with its own value, none folded into an overflow series', async () => {
    const names = Array.from({ length: 10_000 }, (_, i) => `r${i}`);
    const hub = new CounterHub(() => rules(names), 20);
    await withDatapathMetrics(hub, async (reader) => {
      const { resourceMetrics: rm } = await reader.collect();
      const rp = points(rm, DATAPATH_METRICS.rulePackets);
      assert.equal(rp.length, 40_000);
      const last = rp.find(([a]) => a['xdpctl.rule'] === 'r9999' && a['xdpctl.outcome'] === 'matched');
      assert.deepEqual(last?.[1], 10_000);
      const bp = points(rm, DATAPATH_METRICS.backendPackets);
      assert.equal(bp.length, 40_000);
      assert.equal(new Set(bp.map(([a]) => `${a['xdpctl.rule']}/${a['xdpctl.backend.ip']}`)).size, 40_000);
      assert.deepEqual(bp.find(([a]) => a['xdpctl.backend.ip'] === '10.3.39.15')?.[1], 9999 * 4 + 3);
      const text = new PrometheusSerializer().serialize(rm);
      assert.doesNotMatch(text, /overflow/);
      assert.equal(text.split('\n').filter((l) => l.startsWith('xdpctl_backend_bytes_total{')).length, 40_000);
    });
  });
});

describe('RPC telemetry through a real server', () => {
  const spans = new InMemorySpanExporter();
  const reader = new PullReader();
  const lines: Record<string, unknown>[] = [];
  let telemetry: Telemetry;
  let server: Server;
  let port: number;

  before(async () => {
    telemetry = await startTelemetry({
      version: 'test',
      spanProcessors: [new SimpleSpanProcessor({ exporter: spans })],
      metricReaders: [reader],
    });
    const sink = new Writable({
      write(chunk, _enc, done) {
        for (const l of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(l));
        done();
      },
    });
    const log = pino({ mixin: traceLogFields }, sink);
    const health = HealthState();
    health.setStatus('healthy');
    server = createServer()
      .use(telemetryMiddleware())
      .use(errorMiddleware(log))
      .use(async function* logging(call, context) {
        log.info({ method: call.method.path }, 'call');
        return yield* call.next(call.request, context);
      });
    server.add(HealthDefinition, HealthServiceImpl(health));
    port = await server.listen('127.0.0.1:0');
  });
  after(async () => {
    await server?.shutdown();
    await telemetry?.shutdown();
  });

  it('honours the client traceparent: the RPC span continues the client trace; logs carry it', async () => {
    const ch = createChannel(`127.0.0.1:${port}`);
    try {
      const client = createClient(HealthDefinition, ch);
      const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
      const parent = '00f067aa0ba902b7';
      await client.check({ service: '' }, { metadata: Metadata({ traceparent: `00-${traceId}-${parent}-01` }) });
      const span = await eventually(
        () => spans.getFinishedSpans().find((s) => s.name === 'grpc.health.v1.Health/Check'),
        'the RPC span',
      );
      assert.equal(span.spanContext().traceId, traceId);
      assert.equal(span.parentSpanContext?.spanId, parent);
      assert.equal(span.attributes['rpc.grpc.status_code'], Status.OK);
      const line = lines.find((l) => l.msg === 'call');
      assert.equal(line?.trace_id, traceId);
      assert.equal(line?.span_id, span.spanContext().spanId);
      assert.equal(line?.trace_flags, '01');
      // Outside any RPC, no trace fields.
      assert.deepEqual(traceLogFields(), {});
    } finally {
      ch.close();
    }
  });

  it('measures duration by method and status, and counts errors by status', async () => {
    const ch = createChannel(`127.0.0.1:${port}`);
    try {
      const client = createClient(HealthDefinition, ch);
      await client.check({ service: '' });
      const err = await client.check({ service: 'no.such.Service' }).catch((e: unknown) => e);
      assert.ok(err instanceof ClientError && err.code === Status.NOT_FOUND, String(err));
      const errSpan = await eventually(
        () => spans.getFinishedSpans().find((s) => s.attributes['rpc.grpc.status_code'] === Status.NOT_FOUND),
        'the failed call span with its status',
      );
      assert.match(errSpan.status.message ?? '', /NOT_FOUND/);
      const { resourceMetrics: rm } = await reader.collect();
      const durations = points(rm, RPC_METRICS.duration) as [Record<string, unknown>, { count: number; sum: number }][];
      const byStatus = Object.fromEntries(durations.map(([a, v]) => [String(a['rpc.status_code']), v.count]));
      assert.ok(byStatus.OK >= 1 && byStatus.NOT_FOUND === 1, JSON.stringify(byStatus));
      assert.equal(durations[0][0]['rpc.method'], 'grpc.health.v1.Health/Check');
      assert.equal(durations[0][0]['rpc.system.name'], 'grpc');
      assert.deepEqual(points(rm, RPC_METRICS.errors), [
        [
          {
            'rpc.system.name': 'grpc',
            'rpc.method': 'grpc.health.v1.Health/Check',
            'rpc.status_code': 'NOT_FOUND',
            'error.type': 'NOT_FOUND',
          },
          1,
        ],
      ]);
    } finally {
      ch.close();
    }
  });
});
