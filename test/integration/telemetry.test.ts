/**
 * Telemetry of a real daemon on a real datapath:
 *  - in-process (Daemon.start after startTelemetry with an in-memory span
 *    exporter): a client's W3C traceparent is honoured, the RPC span has
 *    dataplane children (map name, operation, entries; XDP attach), a failing
 *    dataplane operation carries its errno, and the RPC's log lines carry the
 *    trace id;
 *  - xdpctld processes: the Prometheus endpoint shows RPC metrics, the
 *    counters of a rule moving with real UDP traffic, and rules by state and
 *    the datapath's problems following an egress that goes down and up, redirect errors (per rule,
 *    backend, and the global xmit error) counted for datagrams a lowered egress MTU makes the kernel drop,
 *    and a rule deleted 0.3 s after a scrape gone from the next scrape; `--prometheus` alone
 *    binds 127.0.0.1:9464 only; OTLP/HTTP export (JSON, and protobuf next to
 *    --prometheus) reaches a local receiver; with no OTEL_* variable nothing
 *    is sent to the default OTLP port.
 */
import assert from 'node:assert/strict';
import { createServer, request, type IncomingMessage, type Server as HttpServer } from 'node:http';
import { connect, createServer as createNetServer, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';

import { context, SpanStatusCode, trace } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace';
import { ClientError, createChannel, createClient, Metadata, Status, type Channel } from 'nice-grpc';
import { pino } from 'pino';

import { capacityForRules, Daemon, DEFAULTS } from '../../src/server/daemon.js';
import { BPF_NOEXIST } from '../../src/server/dataplane/bpf-map.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { traceLogFields } from '../../src/server/telemetry/log-context.js';
import { startTelemetry, type Telemetry } from '../../src/server/telemetry/sdk.js';
import { DaemonServiceDefinition } from '../../src/gen/xdpctl/v1/daemon.js';
import { Protocol, RuleServiceDefinition, RuleState, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, promSample as sample } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, ROOT, runId, sh, sleep, within } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const PORT = 7998;

/** Poll until `fn` returns something (spans and exports land just after the response). */
async function eventually<T>(fn: () => T | undefined, what: string, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

function httpGet(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    request(url, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`${url}: ${res.statusCode}`))));
    })
      .on('error', reject)
      .end();
  });
}

/** A tiny OTLP/HTTP receiver: records every request. */
class Receiver {
  readonly requests: { path: string; type: string; body: Buffer }[] = [];
  private constructor(readonly server: HttpServer) {}

  static async listen(port = 0): Promise<Receiver> {
    const server = createServer();
    const r = new Receiver(server);
    server.on('request', (req: IncomingMessage, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        r.requests.push({ path: req.url ?? '', type: req.headers['content-type'] ?? '', body: Buffer.concat(chunks) });
        res.setHeader('content-type', req.headers['content-type'] ?? 'application/json');
        res.end(req.headers['content-type']?.includes('json') ? '{}' : '');
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    return r;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as { port: number }).port}`;
  }

  json(path: string): unknown[] {
    return this.requests.filter((x) => x.path === path).map((x) => JSON.parse(x.body.toString()));
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }
}

describe('telemetry of a real daemon', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let vm: Host, b1: Host, b2: Host;

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    b2 = topo.addHost('b2', '198.18.3.1/24');
    topo.routeToXdp('vm');
    sh('ip', ['neigh', 'replace', b1.ip!, 'lladdr', b1.mac, 'dev', b1.hostIf, 'nud', 'permanent']);
  });
  after(() => {
    topo.destroy();
    removeIproute2BpffsDirs(); // `ip link set ... obj` below makes them
  });

  const rule = (name: string, ingress: string, backend: Host): Rule => ({
    name,
    match: { protocol: Protocol.PROTOCOL_UDP, port: PORT, destination: '', sourcePrefixes: [] },
    ingressInterfaces: [ingress],
    backends: [{ ip: backend.ip!, mac: backend.mac, interface: backend.hostIf, weight: 1 }],
    udpChecksum: 0,
    labels: {},
    generation: 0n,
  });

  describe('in-process: traces and logs', () => {
    const spans = new InMemorySpanExporter();
    const lines: Record<string, unknown>[] = [];
    const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}i`;
    let telemetry: Telemetry;
    let daemon: Daemon;
    let channel: Channel;

    before(async () => {
      telemetry = await startTelemetry({
        version: 'test',
        spanProcessors: [new SimpleSpanProcessor({ exporter: spans })],
      });
      const sink = new Writable({
        write(chunk, _enc, done) {
          for (const l of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(l));
          done();
        },
      });
      daemon = await Daemon.start({
        listen: ['127.0.0.1:0'],
        pinRoot,
        objectPath: DEFAULTS.objectPath,
        descriptorPath: DEFAULTS.descriptorPath,
        mode: 'auto',
        fixVethPeers: true,
        cleanupOnExit: true,
        capacity: capacityForRules(16),
        log: pino({ mixin: traceLogFields }, sink),
        telemetry,
      });
      channel = createChannel(daemon.addresses[0]);
    });
    after(async () => {
      channel?.close();
      await daemon?.stop();
      await telemetry?.shutdown();
      XdpDatapath.unpinAll(pinRoot);
    });

    const rpcSpan = (name: string, traceId: string) =>
      eventually(
        () => spans.getFinishedSpans().find((s) => s.name === name && s.spanContext().traceId === traceId),
        `span ${name}`,
      );
    const children = (parent: ReadableSpan) =>
      spans.getFinishedSpans().filter((s) => s.parentSpanContext?.spanId === parent.spanContext().spanId);

    it("continues the client's trace: RPC span, dataplane child spans, log lines with the trace id", async () => {
      const traceId = '0af7651916cd43dd8448eb211c80319c';
      const clientSpan = 'b7ad6b7169203331';
      const rules = createClient(RuleServiceDefinition, channel);
      await rules.createRule(
        { rule: rule('traced', vm.hostIf, b1) },
        { metadata: Metadata({ traceparent: `00-${traceId}-${clientSpan}-01` }) },
      );
      const rpc = await rpcSpan('xdpctl.v1.RuleService/CreateRule', traceId);
      assert.equal(rpc.parentSpanContext?.spanId, clientSpan, 'a child of the client span');
      assert.equal(rpc.attributes['rpc.grpc.status_code'], Status.OK);

      const kids = children(rpc);
      const attach = kids.find((s) => s.name === 'xdp.attach');
      assert.ok(attach, `children: ${kids.map((s) => s.name)}`);
      assert.equal(attach.attributes['xdp.interface'], vm.hostIf);
      assert.equal(attach.attributes['xdp.mode.requested'], 'auto');
      assert.match(String(attach.attributes['xdp.mode']), /^(native|generic)$/);
      const mapOps = kids.filter((s) => s.name.startsWith('bpf.map.'));
      const maps = new Set(mapOps.map((s) => s.attributes['bpf.map.name']));
      for (const m of ['rule_cfg', 'rule_match', 'rule_ring', 'backends'])
        assert.ok(maps.has(m), `no span on ${m}: ${[...maps]}`);
      const ring = mapOps.find((s) => s.attributes['bpf.map.name'] === 'rule_ring')!;
      // rule_ring is BPF_F_MMAPABLE: a slot's table is stored through its mapped pages, one span for all of it.
      assert.equal(ring.attributes['bpf.map.operation'], 'mmap_update');
      assert.ok(Number(ring.attributes['bpf.map.entries']) > 1, 'the span counts its entries');
      const cfg = mapOps.find((s) => s.attributes['bpf.map.name'] === 'rule_cfg')!;
      assert.deepEqual([cfg.attributes['bpf.map.operation'], cfg.attributes['bpf.map.entries']], ['update', 1]);
      for (const s of kids) assert.equal(s.spanContext().traceId, traceId);

      // The RPC's log lines carry its trace and span ids.
      const attached = lines.find((l) => l.msg === 'attached' && l.ifname === vm.hostIf);
      assert.ok(attached, 'the attach was logged');
      assert.equal(attached.trace_id, traceId);
      assert.equal(attached.span_id, rpc.spanContext().spanId);
      // Lines outside any RPC (start-up) carry none.
      assert.ok(lines.some((l) => l.msg === 'serving' && l.trace_id === undefined));
    });

    it('a failing dataplane operation carries its errno, and the RPC span its status', async () => {
      // A foreign XDP program on b2's veth: xdpctld must refuse to clobber it (EBUSY).
      sh('ip', ['link', 'set', 'dev', b2.hostIf, 'xdpgeneric', 'obj', `${ROOT}build/bpf/baseline.bpf.o`, 'sec', 'xdp']);
      const traceId = '1bf92f3577b34da6a3ce929d0e0e4736';
      const rules = createClient(RuleServiceDefinition, channel);
      const err = await rules
        .createRule(
          { rule: rule('foreign', b2.hostIf, b1) },
          { metadata: Metadata({ traceparent: `00-${traceId}-00f067aa0ba902b7-01` }) },
        )
        .catch((e: unknown) => e);
      assert.ok(err instanceof ClientError, String(err));
      const rpc = await rpcSpan('xdpctl.v1.RuleService/CreateRule', traceId);
      assert.equal(rpc.status.code, SpanStatusCode.ERROR);
      assert.equal(rpc.attributes['rpc.grpc.status_code'], err.code);
      const attach = children(rpc).find((s) => s.name === 'xdp.attach' && s.attributes['xdp.interface'] === b2.hostIf);
      assert.ok(attach, 'the failed attach has a span');
      assert.equal(attach.status.code, SpanStatusCode.ERROR);
      assert.equal(attach.attributes['bpf.errno'], 16);
      assert.equal(attach.attributes['error.type'], 'EBUSY');
      assert.ok(
        attach.events.some((e) => e.name === 'exception'),
        'the exception is recorded',
      );
    });

    it('a map write the kernel refuses records the kernel errno', async () => {
      // rule_cfg is an array: every key exists, so BPF_NOEXIST fails with EEXIST and writes nothing.
      const parent = trace.getTracer('test').startSpan('test parent');
      assert.throws(
        () =>
          context.with(trace.setSpan(context.active(), parent), () =>
            daemon.datapath.maps.ruleCfg.put(0, { flags: 0, statsId: 0 }, BPF_NOEXIST),
          ),
        /EEXIST/,
      );
      parent.end();
      const span = await eventually(
        () => spans.getFinishedSpans().find((s) => s.parentSpanContext?.spanId === parent.spanContext().spanId),
        'the map span',
      );
      assert.equal(span.name, 'bpf.map.update');
      assert.equal(span.attributes['bpf.map.name'], 'rule_cfg');
      assert.equal(span.attributes['bpf.errno'], 17);
      assert.equal(span.attributes['error.type'], 'EEXIST');
      assert.equal(span.status.code, SpanStatusCode.ERROR);
    });

    it('outside a recording span, dataplane operations make no spans', async () => {
      const before = spans.getFinishedSpans().length;
      daemon.datapath.maps.ruleCfg.put(15, daemon.datapath.maps.ruleCfg.get(15)!);
      await sleep(50);
      assert.equal(spans.getFinishedSpans().length, before);
    });
  });

  describe('xdpctld processes: Prometheus and OTLP', () => {
    const daemons: DaemonProcess[] = [];
    const receivers: Receiver[] = [];
    const listeners: UdpListener[] = [];
    after(async () => {
      listeners.forEach((l) => l.kill());
      for (const d of daemons) await d.destroy();
      for (const r of receivers) await r.close();
    });
    const start = async (suffix: string, extra: string[], env: NodeJS.ProcessEnv = {}) => {
      const d = await DaemonProcess.start(`${id}${suffix}`, extra, env);
      daemons.push(d);
      return d;
    };

    it('Prometheus: RPC metrics, and the counters of a rule move with real traffic', async () => {
      const d = await start('p', ['--prometheus', '127.0.0.1:0']);
      assert.match(d.prometheus ?? '', /^127\.0\.0\.1:\d+$/);
      const url = `http://${d.prometheus}/metrics`;
      const c = d.clients();
      await c.rules.createRule({ rule: rule('web', vm.hostIf, b1) });
      const bad = await c.rules
        .createRule({ rule: { ...rule('bad', vm.hostIf, b1), match: undefined } })
        .catch((e) => e);
      assert.ok(bad instanceof ClientError && bad.code === Status.INVALID_ARGUMENT, String(bad));

      const web = { xdpctl_rule: 'web', xdpctl_outcome: 'redirected' };
      const before = await httpGet(url);
      assert.equal(sample(before, 'xdpctl_rule_packets_total', web), 0);
      const l = await UdpListener.start(b1.netns, b1.ip!, PORT);
      listeners.push(l);
      const { sent } = await sendUdp(vm.netns, NOWHERE, PORT, 200).done;
      await sleep(100);
      const got = await l.stop();
      assert.equal(got.unique, sent, 'the rule delivered every datagram');
      await sleep(1100); // older than a metric snapshot may be
      const text = await httpGet(url);
      assert.equal(sample(text, 'xdpctl_rule_packets_total', web), sent);
      assert.equal(sample(text, 'xdpctl_rule_packets_total', { xdpctl_rule: 'web', xdpctl_outcome: 'matched' }), sent);
      assert.ok(sample(text, 'xdpctl_rule_bytes_total', web)! >= sent * 42, 'bytes counted');
      const backend = { xdpctl_rule: 'web', xdpctl_backend_ip: b1.ip!, xdpctl_backend_interface: b1.hostIf };
      assert.equal(sample(text, 'xdpctl_backend_packets_total', backend), sent);
      assert.ok(sample(text, 'xdpctl_datapath_packets_total', { xdpctl_verdict: 'redirect' })! >= sent);
      assert.ok(sample(text, 'xdpctl_counter_hub_reads_total')! >= 2);

      const create = { rpc_method: 'xdpctl.v1.RuleService/CreateRule' };
      assert.equal(sample(text, 'rpc_server_call_duration_count', { ...create, rpc_status_code: 'OK' }), 1);
      assert.equal(
        sample(text, 'rpc_server_call_duration_count', { ...create, rpc_status_code: 'INVALID_ARGUMENT' }),
        1,
      );
      assert.equal(
        sample(text, 'xdpctl_rpc_server_errors_total', { ...create, rpc_status_code: 'INVALID_ARGUMENT' }),
        1,
      );
      assert.equal(sample(text, 'xdpctl_rpc_server_errors_total', { ...create, rpc_status_code: 'OK' }), undefined);
      assert.match(text, /^target_info\{.*service_name="xdpctld".*\} 1$/m);
      // Scrapes log nothing at error level (the SDK logs one per read of a resource whose detected attributes
      // have not settled).
      assert.deepEqual(
        d.output.split('\n').filter((l) => /"level":50/.test(l)),
        [],
        'no error lines',
      );
    });

    it('Prometheus: rules by state and the datapath problems follow what the reconciler observes', async () => {
      // Its own backend host: its egress goes down and up here. Its own ingress: vm's runs the program of
      // the daemon above (another pin root), which another xdpctld must not take over.
      const b3 = topo.addHost('b3', '198.18.4.1/24');
      const vs = topo.addHost('vs', '198.18.5.1/24');
      const d = await start('s', ['--prometheus', '127.0.0.1:0']);
      const url = `http://${d.prometheus}/metrics`;
      const c = d.clients();
      await c.rules.createRule({ rule: rule('st', vs.hostIf, b3) });
      const state = (text: string, s: string) => sample(text, 'xdpctl_rules', { xdpctl_rule_state: s });
      const scrape = async (want: (t: string) => boolean, what: string): Promise<string> => {
        const end = Date.now() + 10_000;
        for (;;) {
          const t = await httpGet(url);
          if (want(t)) return t;
          if (Date.now() > end) {
            const seen = t.split('\n').filter((l) => /^xdpctl_(rules|datapath_problems)/.test(l));
            assert.fail(`timed out waiting for ${what}; last scrape:\n${seen.join('\n')}`);
          }
          await sleep(200);
        }
      };
      let t = await scrape((x) => state(x, 'active') === 1, 'the rule ACTIVE in xdpctl_rules');
      for (const s of ['degraded', 'inactive', 'failed']) assert.equal(state(t, s), 0, `${s} is reported as 0`);
      assert.equal(sample(t, 'xdpctl_datapath_problems'), 0);

      // Its only backend's egress goes down: the reconciler takes it out, the rule is INACTIVE.
      sh('ip', ['link', 'set', b3.hostIf, 'down']);
      t = await scrape((x) => state(x, 'inactive') === 1, 'the rule INACTIVE in xdpctl_rules');
      assert.equal(state(t, 'active'), 0);
      assert.ok(sample(t, 'xdpctl_datapath_problems')! >= 1, 'the problem is counted');
      const got = await c.rules.getRule({ name: 'st' });
      assert.equal(got.rule?.status?.state, RuleState.RULE_STATE_INACTIVE, 'the API says the same');

      sh('ip', ['link', 'set', b3.hostIf, 'up']);
      t = await scrape(
        (x) => state(x, 'active') === 1 && sample(x, 'xdpctl_datapath_problems') === 0,
        'the rule ACTIVE again and no problem',
      );
      assert.equal(state(t, 'inactive'), 0);
    });

    it('Prometheus: redirect errors with real traffic; a rule deleted 0.3 s after a scrape is gone from the next one', async () => {
      // Its own ingress and backend: the backend's egress MTU is lowered below the datagrams sent, so the kernel
      // drops every one of them on redirect (XDP does not fragment) and counts it as a redirect error.
      const ve = topo.addHost('ve', '198.18.6.1/24');
      const be = topo.addHost('be', '198.18.7.1/24');
      topo.routeToXdp('ve');
      const d = await start('e', ['--prometheus', '127.0.0.1:0']);
      const url = `http://${d.prometheus}/metrics`;
      const c = d.clients();
      await c.rules.createRule({ rule: rule('err', ve.hostIf, be) });
      const errs = { xdpctl_rule: 'err' };
      const backend = { xdpctl_rule: 'err', xdpctl_backend_ip: be.ip!, xdpctl_backend_interface: be.hostIf };
      const first = await httpGet(url);
      assert.equal(sample(first, 'xdpctl_rule_redirect_errors_total', errs), 0, 'a rule has the series from the start');
      assert.equal(sample(first, 'xdpctl_backend_redirect_errors_total', backend), 0);
      const xmitBefore = sample(first, 'xdpctl_datapath_errors_total', { xdpctl_error: 'xmit' });
      assert.equal(typeof xmitBefore, 'number', 'the datapath errors by kind are exported');
      sh('ip', ['link', 'set', be.hostIf, 'mtu', '600']);
      let text: string;
      let sent: number;
      try {
        ({ sent } = await sendUdp(ve.netns, NOWHERE, PORT, 20, { size: 1000 }).done);
        assert.equal(sent, 20);
        const end = Date.now() + 10_000;
        for (;;) {
          text = await httpGet(url);
          if (sample(text, 'xdpctl_rule_redirect_errors_total', errs) === sent || Date.now() > end) break;
          await sleep(200);
        }
      } finally {
        sh('ip', ['link', 'set', be.hostIf, 'mtu', '1500']);
      }
      assert.equal(sample(text, 'xdpctl_rule_redirect_errors_total', errs), sent, 'every dropped datagram, per rule');
      assert.equal(sample(text, 'xdpctl_backend_redirect_errors_total', backend), sent, 'per backend');
      assert.equal(sample(text, 'xdpctl_rule_packets_total', { ...errs, xdpctl_outcome: 'redirected' }), 0);
      assert.equal(sample(text, 'xdpctl_backend_packets_total', backend), 0, 'none counted as delivered');
      assert.ok(
        sample(text, 'xdpctl_datapath_errors_total', { xdpctl_error: 'xmit' })! - xmitBefore! >= sent,
        'and in the global xmit errors',
      );
      // The same figures as GetCounters.
      const { counters } = await c.counters.getCounters({ filter: { rules: ['err'] } });
      assert.equal(counters!.rules[0].redirectErrorPackets, BigInt(sent));
      assert.equal(counters!.backends[0].redirectErrorPackets, BigInt(sent));

      // Deleted 0.3 s after a scrape (within the age an export may reuse a read): gone from the next scrape.
      assert.ok(sample(await httpGet(url), 'xdpctl_rule_packets_total', { ...errs, xdpctl_outcome: 'matched' })! > 0);
      await sleep(300);
      await c.rules.deleteRule({ name: 'err', expectedGeneration: 0n });
      const after = await httpGet(url);
      const left = after.split('\n').filter((l) => l.includes('xdpctl_rule="err"'));
      assert.deepEqual(left, [], 'no series of the deleted rule in the next scrape');
    });

    it('--prometheus alone listens on 127.0.0.1:9464 and on no other address', async () => {
      const d = await start('q', ['--prometheus']);
      assert.equal(d.prometheus, '127.0.0.1:9464');
      assert.match(await httpGet('http://127.0.0.1:9464/metrics'), /xdpctl_counter_hub_reads_total/);
      // Another address of this host: a connection there is refused.
      const other = '198.18.1.77';
      sh('ip', ['addr', 'add', `${other}/32`, 'dev', vm.hostIf]);
      const refused = await new Promise<string>((resolve) => {
        const s = connect(9464, other);
        s.on('connect', () => {
          s.destroy();
          resolve('connected');
        });
        s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? String(e)));
      });
      assert.equal(refused, 'ECONNREFUSED');
    });

    it('OTLP over HTTP/JSON from the standard variables: spans and metrics reach the collector', async () => {
      const r = await Receiver.listen();
      receivers.push(r);
      const d = await start('o', [], {
        OTEL_EXPORTER_OTLP_ENDPOINT: r.url,
        OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
        OTEL_BSP_SCHEDULE_DELAY: '100',
        OTEL_METRIC_EXPORT_INTERVAL: '300',
      });
      const traceId = '2bf92f3577b34da6a3ce929d0e0e4736';
      const ch = createChannel(d.tcp);
      try {
        await createClient(DaemonServiceDefinition, ch).getStatus(
          {},
          { metadata: Metadata({ traceparent: `00-${traceId}-00f067aa0ba902b7-01` }) },
        );
      } finally {
        ch.close();
      }
      type Otlp = { resourceSpans?: { resource: Res; scopeSpans: { spans: { name: string; traceId: string }[] }[] }[] };
      type Res = { attributes: { key: string; value: { stringValue?: string } }[] };
      const span = await eventually(
        () =>
          (r.json('/v1/traces') as Otlp[])
            .flatMap((b) => b.resourceSpans ?? [])
            .flatMap((rs) => rs.scopeSpans.flatMap((ss) => ss.spans.map((s) => ({ ...s, resource: rs.resource }))))
            .find((s) => s.name === 'xdpctl.v1.DaemonService/GetStatus'),
        'the GetStatus span at the collector',
      );
      assert.equal(span.traceId.toLowerCase(), traceId, 'the client trace id, exported');
      const attr = (k: string) => span.resource.attributes.find((a) => a.key === k)?.value.stringValue;
      assert.equal(attr('service.name'), 'xdpctld');
      assert.match(attr('service.version') ?? '', /^\d+\.\d+\.\d+/);
      const names = await eventually(() => {
        const all = r.requests.filter((x) => x.path === '/v1/metrics').map((x) => x.body.toString());
        return all.some((b) => b.includes('rpc.server.call.duration')) ? all.join('') : undefined;
      }, 'metrics at the collector');
      assert.match(names, /xdpctl\.counter_hub\.reads/);
      assert.equal(r.requests.filter((x) => x.path === '/v1/logs').length, 0, 'logs stay on stdout');
    });

    it('OTLP protobuf next to --prometheus: both get metrics', async () => {
      const r = await Receiver.listen();
      receivers.push(r);
      const d = await start('b', ['--prometheus', '127.0.0.1:0'], {
        OTEL_EXPORTER_OTLP_ENDPOINT: r.url,
        OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
        OTEL_BSP_SCHEDULE_DELAY: '100',
        OTEL_METRIC_EXPORT_INTERVAL: '300',
      });
      await d.clients().daemon.getStatus({});
      await eventually(
        () => r.requests.some((x) => x.path === '/v1/metrics' && x.type === 'application/x-protobuf'),
        'protobuf metrics',
      );
      await eventually(() => r.requests.some((x) => x.path === '/v1/traces'), 'protobuf spans');
      assert.match(await httpGet(`http://${d.prometheus}/metrics`), /rpc_server_call_duration_count\{/);
    });

    it('a stalled OTLP collector does not hold the exit: the last flush at SIGTERM is bounded', async (t) => {
      // A collector that accepts connections and never answers (a stopped or wedged process).
      const held: Socket[] = [];
      const stalled = createNetServer((s) => void held.push(s));
      await new Promise<void>((r) => stalled.listen(0, '127.0.0.1', () => r()));
      try {
        const port = (stalled.address() as { port: number }).port;
        const d = await start('w', [], {
          OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
          OTEL_BSP_SCHEDULE_DELAY: '60000', // spans wait for the shutdown's flush
          OTEL_METRIC_EXPORT_INTERVAL: '60000',
        });
        await d.clients().daemon.getStatus({});
        const t0 = Date.now();
        const code = await within(d.stop(), 30_000, 'still running after 30 s');
        const took = Date.now() - t0;
        t.diagnostic(`exit ${code} ${took} ms after SIGTERM, the collector never answering`);
        assert.equal(code, 0, d.output.slice(-2000));
        // The exporters' own timeout is 10 s (OTEL_EXPORTER_OTLP_TIMEOUT); the daemon waits 2 s for them.
        assert.ok(took < 6000, `the daemon took ${took} ms to exit`);
        assert.match(d.output, /telemetry not flushed within 2000 ms/);
      } finally {
        held.forEach((s) => s.destroy());
        stalled.close();
      }
    });

    it('with no OTEL_* variable, nothing is sent to the default OTLP endpoint, even at shutdown', async () => {
      const r = await Receiver.listen(4318); // where the SDK's default OTLP exporter would send
      receivers.push(r);
      const d = await start('n', []);
      const c = d.clients();
      await c.daemon.getStatus({});
      await c.daemon.getStatus({});
      assert.equal(await d.stop(), 0);
      await sleep(300);
      assert.deepEqual(
        r.requests.map((x) => x.path),
        [],
      );
      assert.equal(d.prometheus, undefined, 'no scrape endpoint unless asked');
    });
  });
});
