/**
 * A metric export (Prometheus scrape, OTLP or console reader: the same MetricProducer) and a GetCounters
 * never reuse a counter read made before the last change of the desired state. A reviewer deleted a rule
 * 0.3 s after a scrape and saw its series in the next scrape (the hub shared reads up to 1 s old by age
 * alone), against docs/deployment.md's "gone from the next export". Every path that changes the desired
 * state is driven here through a real Controller over the model dataplane: CreateRule, UpdateRule,
 * DeleteRule, ApplyRules, Connect/Disconnect (links), a config file (applyConfig) and a restore. And reads
 * are still shared while nothing changes (the watch/export reuse tests in telemetry.test.ts stay as they
 * were).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { MeterProvider, MetricReader, type ResourceMetrics } from '@opentelemetry/sdk-metrics';

import { Controller } from '../../src/server/core/controller.js';
import { controllerHub } from '../../src/server/core/counter-hub.js';
import type { RuleSpec } from '../../src/server/core/model.js';
import {
  DATAPATH_METRICS,
  DatapathMetricProducer,
  MAX_SNAPSHOT_AGE_MS,
  registerDatapathMetrics,
} from '../../src/server/telemetry/datapath-metrics.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';
import { udpSpec } from '../helpers/rule-spec.js';

/** A metric reader that collects when asked (what a Prometheus scrape does). */
class PullReader extends MetricReader {
  protected async onForceFlush(): Promise<void> {}
  protected async onShutdown(): Promise<void> {}
}

const spec = (name: string, port: number, backends = ['b0']): RuleSpec =>
  udpSpec(
    name,
    port,
    backends.map((b, i) => ({ ip: `10.0.0.${i + 1}`, mac: '02:00:00:00:01:01', interface: b, weight: 1 })),
  );

/** The values of one attribute over the points of one metric. */
function seen(rm: ResourceMetrics, metric: string, attr: string): string[] {
  const m = rm.scopeMetrics.flatMap((s) => s.metrics).find((x) => x.descriptor.name === metric);
  return [...new Set((m?.dataPoints ?? []).map((p) => String(p.attributes[attr])))].sort();
}

/** A controller over the model dataplane with a hub, a producer and a reader wired as the daemon wires them. */
function rig(dp = new ModelDataplane()) {
  const c = new Controller(dp, { mode: 'generic', fixVethPeers: false });
  // The daemon's hub: default tick and sharing, and the desired state's version.
  const hub = controllerHub(c);
  const producer = new DatapathMetricProducer();
  const reader = new PullReader({ metricProducers: [producer] });
  const provider = new MeterProvider({ readers: [reader] });
  const unregister = registerDatapathMetrics(provider.getMeter('t'), hub, { name: 't' }, producer);
  const scrape = async () => (await reader.collect()).resourceMetrics;
  const close = async () => {
    unregister();
    hub.close();
    await provider.shutdown();
  };
  return { c, dp, hub, scrape, close };
}

describe('metric exports and GetCounters after a change of the desired state', () => {
  it('a rule deleted 0.3 s after a scrape is gone from the next scrape; unchanged, a scrape reuses the read', async () => {
    const r = rig();
    try {
      await r.c.createRule(spec('keep', 5000));
      await r.c.createRule(spec('gone', 5001));
      let rm = await r.scrape();
      assert.deepEqual(seen(rm, DATAPATH_METRICS.rulePackets, 'xdpctl.rule'), ['gone', 'keep']);
      const reads = r.hub.reads;
      // Nothing changed (a reconciler pass that finds all as desired changes nothing): the next scrape
      // within MAX_SNAPSHOT_AGE_MS shares the read.
      await r.c.resync();
      await r.scrape();
      assert.equal(r.hub.reads, reads, 'an unchanged desired state: the read is shared');
      await new Promise((res) => setTimeout(res, 300));
      assert.ok(300 < MAX_SNAPSHOT_AGE_MS, 'the deletion falls within the age a scrape may reuse');
      await r.c.deleteRule('gone', 0);
      rm = await r.scrape();
      assert.equal(r.hub.reads, reads + 1, 'the scrape after the delete read the kernel again');
      assert.deepEqual(seen(rm, DATAPATH_METRICS.rulePackets, 'xdpctl.rule'), ['keep']);
      assert.deepEqual(seen(rm, DATAPATH_METRICS.backendPackets, 'xdpctl.rule'), ['keep']);
      assert.deepEqual(seen(rm, DATAPATH_METRICS.ruleRedirectErrors, 'xdpctl.rule'), ['keep']);
      // And GetCounters (hub.snapshot, shared for 100 ms) after a delete made right after it.
      assert.deepEqual(
        (await r.hub.snapshot()).rules.map((x) => x.name),
        ['keep'],
      );
      await r.c.deleteRule('keep', 0);
      assert.deepEqual(
        (await r.hub.snapshot()).rules.map((x) => x.name),
        [],
        'GetCounters right after a delete',
      );
    } finally {
      await r.close();
    }
  });

  it('create, update (a backend added), ApplyRules, Connect and Disconnect: each next scrape shows it', async () => {
    const r = rig();
    try {
      await r.scrape();
      await r.c.createRule(spec('web', 5000));
      let rm = await r.scrape();
      assert.deepEqual(seen(rm, DATAPATH_METRICS.rulePackets, 'xdpctl.rule'), ['web'], 'created');
      await r.c.updateRule(spec('web', 5000, ['b0', 'b1']), 0);
      rm = await r.scrape();
      assert.deepEqual(seen(rm, DATAPATH_METRICS.backendPackets, 'xdpctl.backend.interface'), ['b0', 'b1'], 'updated');
      await r.c.applyRules([spec('api', 5002)], false);
      rm = await r.scrape();
      assert.deepEqual(seen(rm, DATAPATH_METRICS.rulePackets, 'xdpctl.rule'), ['api'], 'ApplyRules replaced the set');
      await r.c.connect({ a: 'in1', b: 'b2', direction: 'a-to-b' });
      rm = await r.scrape();
      assert.deepEqual(seen(rm, DATAPATH_METRICS.linkPackets, 'xdpctl.link.from'), ['in1'], 'connected');
      assert.deepEqual(seen(rm, DATAPATH_METRICS.linkRedirectErrors, 'xdpctl.link.from'), ['in1']);
      await r.c.disconnect('in1', 'b2');
      rm = await r.scrape();
      assert.deepEqual(seen(rm, DATAPATH_METRICS.linkPackets, 'xdpctl.link.from'), [], 'disconnected');
    } finally {
      await r.close();
    }
  });

  it('a config file applied (rules and links) and a restore: the next scrape shows them', async () => {
    const r = rig();
    try {
      await r.scrape();
      await r.c.applyConfig({ rules: [spec('cfg', 5003)], links: [{ a: 'in1', b: 'b2', direction: 'both' }] });
      let rm = await r.scrape();
      assert.deepEqual(seen(rm, DATAPATH_METRICS.rulePackets, 'xdpctl.rule'), ['cfg']);
      assert.deepEqual(seen(rm, DATAPATH_METRICS.linkPackets, 'xdpctl.link.from'), ['b2', 'in1']);
      await r.c.applyConfig({ rules: [], links: [] });
      rm = await r.scrape();
      assert.deepEqual(seen(rm, DATAPATH_METRICS.rulePackets, 'xdpctl.rule'), [], 'the file emptied: gone');
      assert.deepEqual(seen(rm, DATAPATH_METRICS.linkPackets, 'xdpctl.link.from'), []);

      // A restore into a fresh controller whose hub was read before the restore finished.
      await r.c.createRule(spec('stored', 5004));
      const stored = r.c.storedState();
      const s = rig();
      try {
        await s.scrape(); // before the restore: nothing
        await s.c.restore(stored);
        rm = await s.scrape();
        assert.deepEqual(seen(rm, DATAPATH_METRICS.rulePackets, 'xdpctl.rule'), ['stored'], 'restored');
      } finally {
        await s.close();
      }
    } finally {
      await r.close();
    }
  });
});
