/**
 * A rule's and a backend's counters lowered by another tool (`bpftool map update pinned PIN/maps/rule_stats
 * key ... value <zeros>`): nothing can put back what they held, but the decrease is a reset and is said
 * (core/counter-resets.ts): one log line per object naming it (before -> after), the rule's warnings,
 * `xdpctl_counter_resets_total{xdpctl_counter_kind}`, Prometheus showing the new, lower values (a counter
 * that went down: a reset, as rate() reads it), WatchCounters keeping the rule in its samples, and counting
 * on from the new base. Before, the counters went from 100 to 0 without a word.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { metric } from '../helpers/daemon.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { counterEntryWith, zeroCounterEntry, type CounterEntry } from '../helpers/counter-write.js';
import { kernelOnly, runId, sleep, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp } from '../helpers/udp.js';

describe('counters lowered by another tool: a reset, said', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess;
  let c: Clients;
  let vm: Host, b1: Host;

  before(async () => {
    ({ vm, b1 } = topo.clientAndBackend());
    d = await DaemonProcess.start(`crs${id}`, ['--prometheus', '127.0.0.1:0']);
    c = d.clients();
  });
  after(async () => {
    await d?.destroy();
    topo.destroy();
  });

  const counters = async () => (await c.counters.getCounters({ filter: { rules: ['web'] } })).counters!;
  const entryWith = (map: string, n: bigint) => counterEntryWith(d.pinRoot, map, n);
  const zero = (map: string, e: CounterEntry) => zeroCounterEntry(d.pinRoot, map, e);

  it('one log line per object, the warning, the metric, /metrics and WatchCounters true; counting on from 0', async () => {
    await c.rules.createRule({
      rule: {
        name: 'web',
        match: { port: 7311 },
        ingressInterfaces: [vm.hostIf],
        backends: [{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf }],
      },
    });
    await sendUdp(vm.netns, '198.18.9.9', 7311, 100).done;
    await until('100 counted', async () => (await counters()).rules[0]?.matchedPackets === 100n, 10_000);
    const prom = d.prometheus!;
    const rulePackets = () =>
      metric(prom, 'xdpctl_rule_packets_total', { xdpctl_rule: 'web', xdpctl_outcome: 'matched' });
    assert.equal(await rulePackets(), 100);
    // A stream watching, its first sample with the rule.
    const ac = new AbortController();
    const samples: { rules: string[]; matched?: bigint; backends: number }[] = [];
    const watching = (async () => {
      try {
        for await (const m of c.counters.watchCounters(
          { filter: { rules: ['web'] }, interval: { seconds: 0n, nanos: 200_000_000 } },
          { signal: ac.signal },
        )) {
          const x = m.counters!;
          samples.push({
            rules: x.rules.map((r) => r.rule),
            matched: x.rules[0]?.matchedPackets,
            backends: x.backends.length,
          });
        }
      } catch {
        // aborted
      }
    })();
    await until('a first sample', () => samples.length > 0, 10_000);

    const rule = entryWith('rule_stats', 100n);
    const backend = entryWith('backend_stats', 100n);
    const at = d.output.length;
    zero('rule_stats', rule);
    zero('backend_stats', backend);

    const said = () =>
      d.logLines<{ level: number; msg: string; object?: string }>(at).filter((l) => / went down at /.test(l.msg));
    await until('both resets said', () => said().length >= 2, 10_000);
    const lines = said();
    const ruleLine = lines.filter((l) => l.msg.startsWith('the counters of rule "web" went down at '));
    const bLine = lines.filter((l) =>
      l.msg.startsWith(`the counters of backend ${b1.ip} on ${b1.hostIf} of rule "web" went down at `),
    );
    assert.equal(ruleLine.length, 1, JSON.stringify(lines));
    assert.equal(bLine.length, 1, JSON.stringify(lines));
    assert.equal(ruleLine[0].level, 40);
    assert.match(ruleLine[0].msg, /\(matched 100 -> 0, matchedBytes \d+ -> 0, redirected 100 -> 0, /);
    assert.match(ruleLine[0].msg, new RegExp(`\\(map rule_stats, key ${rule.key}\\) was written by another tool`));
    assert.match(bLine[0].msg, /\(packets 100 -> 0, bytes \d+ -> 0, redirectErrors 0 -> 0\)/);

    // Among the rule's warnings (its own and its backend's).
    const w = (await c.rules.getRule({ name: 'web' })).rule!.status!.warnings;
    assert.ok(
      w.some((x) => x.startsWith('the counters of rule "web" went down at ')),
      JSON.stringify(w),
    );
    assert.ok(
      w.some((x) => x.startsWith(`the counters of backend ${b1.ip} `)),
      JSON.stringify(w),
    );

    // Counted by kind; /metrics shows the new values (a decrease: a reset, as rate() reads it).
    assert.equal(await metric(prom, 'xdpctl_counter_resets_total', { xdpctl_counter_kind: 'rule' }), 1);
    assert.equal(await metric(prom, 'xdpctl_counter_resets_total', { xdpctl_counter_kind: 'backend' }), 1);
    assert.equal(await metric(prom, 'xdpctl_reconciler_events_total', { xdpctl_event: 'counter_resets' }), 2);
    assert.equal(await rulePackets(), 0);

    // The stream kept the rule in every sample, at 0 once reset.
    await until('a sample at 0', () => samples.some((s) => s.matched === 0n), 10_000);
    assert.ok(
      samples.every((s) => s.rules.length === 1 && s.backends === 1),
      JSON.stringify(samples, (_, v) => (typeof v === 'bigint' ? String(v) : v)),
    );

    // More traffic counts up from the new base, no further reset said.
    await sendUdp(vm.netns, '198.18.9.9', 7311, 10).done;
    await until('10 counted', async () => (await counters()).rules[0]?.matchedPackets === 10n, 10_000);
    assert.equal((await counters()).backends[0].packets, 10n);
    await until('/metrics at 10', async () => (await rulePackets()) === 10, 10_000);
    await sleep(1500); // a reconciler pass or more
    assert.equal(said().length, 2, 'said once per object');
    assert.equal(await metric(prom, 'xdpctl_counter_resets_total', { xdpctl_counter_kind: 'rule' }), 1);
    ac.abort();
    await watching;
  });
});
