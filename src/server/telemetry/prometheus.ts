/**
 * The opt-in Prometheus scrape endpoint: `GET /metrics` on an HTTP server we
 * bind ourselves (loopback unless an address is given explicitly), served by
 * @opentelemetry/exporter-prometheus's reader. We bind instead of letting the
 * exporter do it so that port 0 works, the bound address is known, and a bind
 * failure stops the start with a clear message instead of a background log.
 * The exporter is imported when the endpoint is made, not when this module loads.
 *
 * The text is written a slice at a time (see {@link writeExposition}): the
 * exporter's own handler serializes the whole collection in one piece, which
 * held the event loop 300-450 ms with 10 000 rules x 4 backends (140 000
 * series, 18 MB), and every RPC waited behind it. The datapath's per-object
 * counters (all but a few dozen of the series) are not collected through the
 * SDK here: they are written straight from the counter hub's snapshot
 * (DatapathMetricProducer.writePrometheus), a few hundred objects a piece.
 */
import type { Server } from 'node:http';
import { isIP, type AddressInfo } from 'node:net';
import type { Writable } from 'node:stream';

import type { PrometheusExporter, PrometheusSerializer } from '@opentelemetry/exporter-prometheus';
import type { MetricData, ResourceMetrics } from '@opentelemetry/sdk-metrics';

import { hasControls, visibleEscaped } from '../../shared/visible.js';
import { pacer } from '../core/execute.js';
import { configMetrics } from './config-metrics.js';
import { datapathMetrics, type DatapathMetricProducer } from './datapath-metrics.js';
import { storeMetrics } from './state-metrics.js';

/** Where `--prometheus` without a value listens. */
export const PROMETHEUS_DEFAULT = { host: '127.0.0.1', port: 9464 } as const;

/** A host and port to bind. */
export interface HostPort {
  host: string;
  port: number;
}

/**
 * Parse the value of `--prometheus`: `true` (no value) is 127.0.0.1:9464;
 * otherwise `host:port`, `[v6]:port` or a bare `port` (on 127.0.0.1). The
 * host must be an IP address or `localhost`; port 0 picks a free port.
 */
export function parsePrometheusAddress(spec: string | true): HostPort {
  if (spec === true) return { ...PROMETHEUS_DEFAULT };
  const fail = (why: string): never => {
    throw new Error(`--prometheus ${JSON.stringify(spec)}: ${why}`);
  };
  let host: string = PROMETHEUS_DEFAULT.host;
  let portText = spec;
  const v6 = /^\[([^\]]+)\]:(.*)$/.exec(spec);
  if (v6) [, host, portText] = v6;
  else if (spec.includes(':')) {
    const i = spec.lastIndexOf(':');
    host = spec.slice(0, i);
    portText = spec.slice(i + 1);
    if (host.includes(':')) fail('write IPv6 addresses in brackets, e.g. [::1]:9464');
  }
  if (host !== 'localhost' && isIP(host) === 0) fail(`"${host}" is not an IP address or localhost`);
  if (!/^\d{1,5}$/.test(portText) || Number(portText) > 65535) fail(`port must be 0-65535, not "${portText}"`);
  return { host, port: Number(portText) };
}

/** Whether an address only accepts connections from this host. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host) || /^::ffff:127\./i.test(host);
}

/** A bound scrape endpoint and the metric reader behind it. */
export class PrometheusEndpoint {
  private constructor(
    /** Give this to the MeterProvider (NodeSDK metricReaders). */
    readonly reader: PrometheusExporter,
    private readonly server: Server,
    /** The bound address, "host:port" ("[v6]:port"), with the real port for 0. */
    readonly address: string,
  ) {}

  static async listen(at: HostPort): Promise<PrometheusEndpoint> {
    // Loaded only with --prometheus: the exporter and the metrics SDK cost start time and memory. So is
    // node:http: a static ESM import of it reads every export of the module, and its lazy WebSocket and
    // EventSource exports load Node's bundled undici (~2.5 MB of heap in every daemon, measured).
    const { PrometheusExporter, PrometheusSerializer } = await import('@opentelemetry/exporter-prometheus');
    const { createServer } = await import('node:http');
    const serializers = {
      first: new PrometheusSerializer(),
      rest: new PrometheusSerializer(undefined, false, undefined, true),
    };
    // The datapath's per-object counters are written by writeExposition straight from a hub snapshot, not
    // collected as points (see datapath-metrics.ts): the other readers get them from the producer.
    const reader = new PrometheusExporter({
      preventServerStart: true,
      metricProducers: [configMetrics, storeMetrics],
    });
    const server = createServer((req, res) => {
      const path = (req.url ?? '').split('?')[0];
      if (path !== '/metrics') {
        res.statusCode = 404;
        res.end('not found: metrics are at /metrics\n');
      } else if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.statusCode = 405;
        res.setHeader('allow', 'GET, HEAD');
        res.end();
      } else {
        res.statusCode = 200;
        res.setHeader('content-type', 'text/plain; version=0.0.4; charset=utf-8');
        reader.collect().then(
          ({ resourceMetrics }) => writeExposition(resourceMetrics, serializers, res, datapathMetrics),
          (err: unknown) => res.end(`# failed to export metrics: ${String(err)}\n`),
        );
      }
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) =>
        reject(new Error(`listen for Prometheus on ${at.host}:${at.port}: ${(err as Error).message}`)),
      );
      server.listen({ host: at.host, port: at.port }, () => resolve());
    });
    const a = server.address() as AddressInfo;
    const address = a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
    return new PrometheusEndpoint(reader, server, address);
  }

  /** Stop serving (idempotent); the reader is shut down with the MeterProvider. */
  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.closeAllConnections();
      this.server.close(() => resolve());
    });
  }
}

/** Data points serialized per turn of the event loop: ~6 ms of the serializer's time on this machine. */
export const EXPOSITION_SLICE = 2000;

/**
 * Write a collection as Prometheus text, yielding to the event loop between slices of
 * {@link EXPOSITION_SLICE} data points. The metrics with fewer points go first, in one piece (with
 * target_info); then each larger metric a slice at a time, its `# HELP/# UNIT/# TYPE` lines only before
 * its first slice, so each family stays one group (the text format requires it); then, given `datapath`,
 * the datapath's families straight from its hub's snapshot, a piece at a time, yielding once 4 ms of a turn
 * have passed (core/execute.ts pacer). Assumes, as holds here, that a larger metric's name is not also used
 * by another scope's metric, nor by the collection and `datapath` both.
 */
export async function writeExposition(
  rm: ResourceMetrics,
  serializers: { first: PrometheusSerializer; rest: PrometheusSerializer },
  out: Writable,
  datapath?: Pick<DatapathMetricProducer, 'writePrometheus'>,
): Promise<void> {
  const small = rm.scopeMetrics.map((s) => ({
    ...s,
    metrics: s.metrics.filter((m) => m.dataPoints.length <= EXPOSITION_SLICE),
  }));
  const large = rm.scopeMetrics.flatMap((s) =>
    s.metrics.filter((m) => m.dataPoints.length > EXPOSITION_SLICE).map((metric) => ({ scope: s.scope, metric })),
  );
  const send = async (text: string) => {
    // A label value from the host (an interface name) may hold control characters, which the format writes
    // raw (it escapes only backslash, quote and newline): made visible, as the CLI shows them.
    if (hasControls(text)) text = visibleEscaped(text);
    if (out.write(text)) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        out.off('drain', done);
        out.off('close', done);
        resolve();
      };
      out.once('drain', done);
      out.once('close', done);
    });
  };
  // The resource detectors' attributes (host.id, …) may still be promises: reading them before they settle
  // makes the SDK log an error on every scrape (the SDK's own exporters wait the same way).
  await rm.resource.waitForAsyncAttributes?.();
  await send(serializers.first.serialize({ resource: rm.resource, scopeMetrics: small }));
  for (const { scope, metric } of large) {
    const points = metric.dataPoints as unknown[];
    for (let i = 0; i < points.length && !out.destroyed; i += EXPOSITION_SLICE) {
      await new Promise((r) => setImmediate(r));
      const slice = { ...metric, dataPoints: points.slice(i, i + EXPOSITION_SLICE) } as MetricData;
      let text = serializers.rest.serialize({ resource: rm.resource, scopeMetrics: [{ scope, metrics: [slice] }] });
      if (i > 0) text = text.replace(/^(#[^\n]*\n)+/, '');
      await send(text);
    }
  }
  if (datapath && !out.destroyed) {
    const pace = pacer();
    await datapath.writePrometheus(async (text) => {
      if (!out.destroyed) await send(text);
    }, pace);
  }
  out.end();
}
