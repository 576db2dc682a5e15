/**
 * A counter read (a Prometheus scrape, GetCounters, a WatchCounters tick) reads every rule's and backend's
 * counters in slices, giving the event loop back between them: with 10 000 rules of 4 backends, one read in
 * one turn held the event loop 150-290 ms (BENCHMARKS.md, section 5). Proven by structure, not by timing: the
 * daemon's hub (controllerHub, as daemon.ts makes it) over a real Controller and the model dataplane, with a
 * pacer that counts its calls; between two calls the dataplane is asked for at most one slice of ids. And
 * what a read in slices reports while changes land between its slices: never one object's counter under
 * another's name, a rule read at its new counter id after it was replaced, a deleted rule left out, a read
 * that saw a change not shared with reads asked for after it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics';

import { COUNTER_SLICE, Controller } from '../../src/server/core/controller.js';
import { controllerHub } from '../../src/server/core/counter-hub.js';
import { zeroBackendStats, zeroRuleStats } from '../../src/server/core/dataplane.js';
import type { RuleSpec } from '../../src/server/core/model.js';
import { capacityForRules } from '../../src/server/daemon.js';
import {
  DATAPATH_METRICS,
  DatapathMetricProducer,
  registerDatapathMetrics,
} from '../../src/server/telemetry/datapath-metrics.js';
import { ListRulesResponse } from '../../src/gen/xdpctl/v1/rule.js';
import { serializer } from '../../src/server/services/encoded-reply.js';
import { ruleService } from '../../src/server/services/rule-service.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';

class PullReader extends MetricReader {
  protected async onForceFlush(): Promise<void> {}
  protected async onShutdown(): Promise<void> {}
}

const rule = (i: number, backends = 4, port = 10_000 + i): RuleSpec => ({
  name: `r${String(i).padStart(5, '0')}`,
  protocol: 'udp',
  port,
  destination: '',
  sourcePrefixes: [],
  ingressInterfaces: ['in0'],
  backends: Array.from({ length: backends }, (_, k) => ({
    ip: `10.${k}.${Math.floor(i / 250)}.${(i % 250) + 1}`,
    mac: '02:00:00:00:01:01',
    interface: `b${k}`,
    weight: 1,
  })),
  udpChecksum: 'update',
  labels: {},
});

/** A controller over the model dataplane with `n` rules; every kernel counter read is recorded. */
async function setup(n: number) {
  const dp = new ModelDataplane(capacityForRules(n + 8), ['in0', 'b0', 'b1', 'b2', 'b3']);
  // The backends' hosts behind veth peers of ours with their static MAC: confirmed, their rules ACTIVE.
  for (let k = 0; k < 4; k++)
    dp.vethPeers.set(`b${k}`, { name: `b${k}p`, mac: '02:00:00:00:01:01', takesOthers: false });
  const c = new Controller(dp, { mode: 'generic', fixVethPeers: false });
  await c.applyRules(
    Array.from({ length: n }, (_, i) => rule(i)),
    false,
  );
  // Each rule's matched packets = its number + 1, each backend's packets = 1000 x that + its index: any
  // counter reported under another object's name shows.
  for (let i = 0; i < n; i++) seed(c, dp, i);
  /** Ids asked for since the last pace, and the most of them seen between two paces. */
  const log = { paces: 0, since: 0, most: 0, calls: 0 };
  const read = dp.readCounters.bind(dp);
  dp.readCounters = (r, b, l) => {
    log.calls++;
    log.since += r.length + b.length;
    log.most = Math.max(log.most, log.since);
    return read(r, b, l);
  };
  const pace = async () => {
    log.paces++;
    log.since = 0;
    await new Promise((res) => setImmediate(res));
  };
  return { dp, c, log, pace };
}

/** Write a rule's and its backends' counters as {@link setup} describes, at their ids as they are now. */
function seed(c: Controller, dp: ModelDataplane, i: number, base = 0): void {
  const name = rule(i).name;
  const k = c['state'].ruleKernel.get(name)!;
  const v = BigInt(base + i + 1);
  const z = 0n;
  dp.dp.maps.ruleStats.put(k.statsId, {
    matched: v,
    matchedBytes: z,
    redirected: z,
    redirectedBytes: z,
    filtered: z,
    noBackend: z,
    redirectErrors: z,
  });
  let j = 0;
  for (const ids of k.backends.values()) {
    dp.dp.maps.backendStats.put(ids.statsId, { packets: v * 1000n + BigInt(j++), bytes: z, redirectErrors: z });
  }
}

describe('counter reads in slices', () => {
  it('a scrape through the daemon hub gives the event loop back every slice, and reports every counter as one read does', async () => {
    const n = 700; // 700 rules + 2 800 backends: several slices of COUNTER_SLICE
    const { c, log, pace } = await setup(n);
    const hub = controllerHub(c, () => pace);
    const producer = new DatapathMetricProducer();
    const reader = new PullReader({ metricProducers: [producer] });
    const provider = new MeterProvider({ readers: [reader] });
    const unregister = registerDatapathMetrics(provider.getMeter('t'), hub, { name: 't' }, producer);
    try {
      const rm = (await reader.collect()).resourceMetrics;
      assert.equal(hub.reads, 1, 'one read for the scrape (its reads counter and its series share it)');
      const objects = n * 5;
      assert.ok(
        log.paces >= Math.floor(objects / COUNTER_SLICE) * 2,
        `${log.paces} yields for ${objects} rules and backends (slice ${COUNTER_SLICE})`,
      );
      assert.ok(log.most <= COUNTER_SLICE, `at most one slice of ids between two yields (${log.most})`);
      const metric = (name: string) =>
        rm.scopeMetrics.flatMap((s) => s.metrics).find((m) => m.descriptor.name === name)!.dataPoints;
      const matched = metric(DATAPATH_METRICS.rulePackets).filter((p) => p.attributes['xdpctl.outcome'] === 'matched');
      assert.equal(matched.length, n);
      for (const p of matched) {
        const i = Number(String(p.attributes['xdpctl.rule']).slice(1));
        assert.equal(p.value, i + 1, `rule ${p.attributes['xdpctl.rule']}`);
      }
      const backends = metric(DATAPATH_METRICS.backendPackets);
      assert.equal(backends.length, n * 4);
      for (const p of backends) {
        const i = Number(String(p.attributes['xdpctl.rule']).slice(1));
        const k = Number(String(p.attributes['xdpctl.backend.ip']).split('.')[1]);
        assert.equal(p.value, (i + 1) * 1000 + k, `backend ${k} of rule ${p.attributes['xdpctl.rule']}`);
      }
      // The same numbers as a read with no pacer (one piece).
      const whole = await c.readCounters();
      const paced = await c.readCounters(pace);
      assert.deepEqual(paced.rules, whole.rules);
      assert.deepEqual(paced.backends, whole.backends);
      // The problems gauge counts what problems() lists, without making 700 texts per scrape.
      assert.equal(c.problemCount(), c.problems().length);
      assert.deepEqual(await c.problemsPaced(pace), c.problems());
    } finally {
      unregister();
      hub.close();
      await provider.shutdown();
    }
  });

  it('changes between slices: a replaced rule is read at its new ids, a deleted one left out, a new one in the next read', async () => {
    const n = 60;
    const { dp, c, pace } = await setup(n);
    const hub = controllerHub(c, () => pace);
    let step = 0;
    const changes = async () => {
      // After the read began: r00003 replaced (new backends: new counter ids, new values), r00007 deleted,
      // r09999 created; each counter written at its new ids.
      const replaced = rule(3, 2, 10_003);
      replaced.backends = replaced.backends.map((b, k) => ({ ...b, ip: `10.${k}.9.9` }));
      await c.updateRule(replaced, 0);
      await c.deleteRule(rule(7).name, 0);
      await c.createRule(rule(9999, 1, 19_999));
      const k = c['state'].ruleKernel.get(rule(3).name)!;
      dp.dp.maps.ruleStats.put(k.statsId, { ...zeroRuleStats(), matched: 777n });
      for (const ids of k.backends.values()) {
        dp.dp.maps.backendStats.put(ids.statsId, { ...zeroBackendStats(), packets: 7770n });
      }
    };
    const before = c.desiredVersion;
    const read = c.readCounters(async () => {
      if (++step === 1) await changes(); // after the names were taken, before any counter was read
      await pace();
    }, 16);
    const snap = await read;
    assert.equal(snap.version, before, 'the version the read began at');
    assert.ok(snap.started! <= snap.time);
    const names = snap.rules.map((r) => r.name);
    assert.ok(!names.includes(rule(7).name), 'the deleted rule is left out');
    assert.ok(!names.includes(rule(9999).name), 'the rule created during the read is in the next one');
    assert.equal(names.length, n - 1);
    for (const r of snap.rules) {
      const i = Number(r.name.slice(1));
      assert.equal(r.matched, i === 3 ? 777n : BigInt(i + 1), `${r.name}: its own counter`);
    }
    // r00003's backends as its spec named them when the read began: their ids are gone, so they are left out
    // (never another object's counters under their names); the other rules' backends are all there.
    const of3 = snap.backends.filter((b) => b.rule === rule(3).name);
    assert.deepEqual(of3, []);
    assert.equal(snap.backends.length, (n - 2) * 4);
    for (const b of snap.backends) {
      const i = Number(b.rule.slice(1));
      assert.equal(b.packets, BigInt((i + 1) * 1000 + Number(b.ip.split('.')[1])), `${b.rule} ${b.ip}`);
    }
    // The hub does not share a read that saw a change with a read asked for after it.
    const first = await hub.snapshot();
    assert.equal(first.version, c.desiredVersion);
    assert.ok(
      first.rules.some((r) => r.name === rule(9999).name),
      'the next read has the new rule',
    );
    assert.deepEqual(
      first.backends.filter((b) => b.rule === rule(3).name).map((b) => [b.ip, b.packets]),
      [
        ['10.0.9.9', 7770n],
        ['10.1.9.9', 7770n],
      ],
    );
    hub.close();
  });

  it('everyone asking while a read is under way shares it; a change meanwhile makes the next ask read again', async () => {
    const { c, log, pace } = await setup(40);
    const hub = controllerHub(c, () => pace);
    const a = hub.snapshot();
    const b = hub.recent(1000);
    const [sa, sb] = await Promise.all([a, b]);
    assert.equal(sa, sb, 'one read shared');
    assert.equal(hub.reads, 1);
    const during = hub.recent(-1); // a read under way (none kept is young enough) ...
    await c.deleteRule(rule(0).name, 0); // ... and a change before it ends
    const after = await hub.snapshot();
    assert.equal(hub.reads, 3, 'the ask after the change did not join the read begun before it');
    assert.ok(!after.rules.some((r) => r.name === rule(0).name));
    await during;
    assert.ok(log.calls > 0);
    hub.close();
  });

  it('a ListRules page of 1 000 is read and encoded 128 rules at a time, and is the page one piece would be', async () => {
    const n = 1100;
    const { c } = await setup(n);
    const limits: number[] = [];
    const page = c.rulePage.bind(c);
    c.rulePage = (after, limit) => {
      limits.push(limit);
      return page(after, limit);
    };
    const svc = ruleService(c);
    const ctx = {} as Parameters<typeof svc.listRules>[1];
    const bytes = serializer((r: ListRulesResponse) =>
      ListRulesResponse.encode(ListRulesResponse.fromPartial(r)).finish(),
    );
    const first = (await svc.listRules({ pageSize: 1000, pageToken: '' }, ctx)) as ListRulesResponse;
    assert.ok(limits.length >= 8 && limits.every((l) => l <= 128), `rule reads of ${limits.join(', ')}`);
    assert.equal(first.rules.length, 1000);
    const whole = page(undefined, 1000).rules.map((r) => r.name);
    assert.deepEqual(
      first.rules.map((r) => r.name),
      whole,
    );
    assert.deepEqual(
      Buffer.from(bytes(first)),
      Buffer.from(ListRulesResponse.encode(ListRulesResponse.fromPartial(first)).finish()),
    );
    const second = (await svc.listRules({ pageSize: 1000, pageToken: first.nextPageToken }, ctx)) as ListRulesResponse;
    assert.equal(second.rules.length, n - 1000);
    assert.equal(second.nextPageToken, '', 'the last page says there is no more');
    assert.equal(second.rules[0].name, rule(1000).name);
  });
});
