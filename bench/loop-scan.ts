#!/usr/bin/env node
/**
 * Which reads hold the daemon's event loop with many rules installed (for finding them; section 5 keeps the
 * figures that matter): a daemon with `--rules N` (default 10 000) rules of 4 backends, then, for each kind of
 * read, the longest event-loop delay while it runs (bench/loop-probe.mjs: monitorEventLoopDelay in the daemon,
 * reset and read by a signal) and its latency:
 *   node --import tsx bench/loop-scan.ts [--rules 10000] [--rounds 5] [--only scrape,getcounters,...]
 * XDPCTL_BENCH_CPU_PROF=<dir> profiles the daemon (bench/control.ts).
 */
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';

import { createClient } from 'nice-grpc';

import { CounterServiceDefinition } from '../src/gen/xdpctl/v1/counters.js';
import { DaemonServiceDefinition } from '../src/gen/xdpctl/v1/daemon.js';
import { Topology } from '../test/helpers/topology.js';
import { benchNet, BenchDaemon, rulesClient, scaleSpec } from './control.js';

const arg = (name: string, dflt: string) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const size = Number(arg('--rules', '10000'));
const rounds = Number(arg('--rounds', '5'));
const only = process.argv.includes('--only') ? arg('--only', '').split(',') : undefined;
const id = process.env.XDPCTL_BENCH_ID ?? randomBytes(2).toString('hex');
const nowMs = () => performance.now();
const pct = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))];

const topo = new Topology(id);
const d = new BenchDaemon(`${id}-l`, size + 2, { loopProbe: true });
try {
  const net = benchNet(topo);
  await d.start();
  const rules = rulesClient(d.channel(d.unix));
  const counters = createClient(CounterServiceDefinition, d.channel(d.unix));
  const daemon = createClient(DaemonServiceDefinition, d.channel(d.unix));
  await rules.applyRules({ rules: Array.from({ length: size }, (_, i) => scaleSpec(net, i, 0)) });
  await sleep(3000);
  const ops: Record<string, () => Promise<unknown>> = {
    scrape: async () => (await fetch(d.metricsUrl())).text(),
    getcounters: () => counters.getCounters({ pageToken: '' }),
    watch: async () => {
      const ac = new AbortController();
      let n = 0;
      try {
        for await (const _ of counters.watchCounters(
          { interval: { seconds: 0n, nanos: 100_000_000 } },
          { signal: ac.signal },
        )) {
          if (++n >= 5) ac.abort();
        }
      } catch {
        // aborted
      }
    },
    listrules: async () => {
      let token = '';
      do token = (await rules.listRules({ pageSize: 1000, pageToken: token })).nextPageToken;
      while (token);
    },
    getrule: () => rules.getRule({ name: 's5000' }),
    status: () => daemon.getStatus({}),
    idle: () => sleep(300),
  };
  const rows: Record<string, { delay: number[]; cpu: number[]; lat: number[] }> = {};
  for (let r = 0; r < rounds; r++) {
    for (const [name, op] of Object.entries(ops)) {
      if (only && !only.includes(name)) continue;
      await sleep(200);
      await d.loopProbe();
      const t0 = nowMs();
      await op();
      const lat = nowMs() - t0;
      await sleep(50);
      const { delayMs, cpuMs } = await d.loopProbe();
      const row = (rows[name] ??= { delay: [], cpu: [], lat: [] });
      row.delay.push(delayMs);
      row.cpu.push(cpuMs);
      row.lat.push(lat);
    }
  }
  const list = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(' ');
  for (const [name, { delay, cpu, lat }] of Object.entries(rows)) {
    process.stdout.write(
      `${name.padEnd(12)} longest CPU turn ${Math.max(...cpu).toFixed(1)} ms (${list(cpu)})` +
        `  loop delay max ${Math.max(...delay).toFixed(1)} ms (${list(delay)})` +
        `  latency p50 ${pct(lat, 0.5).toFixed(1)} ms max ${Math.max(...lat).toFixed(1)}\n`,
    );
  }
} finally {
  await d.destroy().catch(() => undefined);
  try {
    execFileSync('ip', ['link', 'set', 'dev', `x${id}in`, 'xdp', 'off'], { stdio: 'ignore' });
  } catch {
    // gone with the topology
  }
  topo.destroy();
}
