/**
 * WatchCounters with changes_only against a real xdpctld, with real datagrams
 * through the XDP program and a real counter reset (the pinned per-CPU map
 * written to zero, as a recreated map would read):
 * - a client that asks for changes gets a complete first sample, then samples
 *   that carry only the entries whose counters (or rates) changed: nothing
 *   while the host is quiet, the rule that took traffic and its backend while
 *   it does, the reset rule when it is reset, never the other;
 * - every sample rebuilt from them (applyChanges, as the TypeScript client
 *   and the CLI do) is self-consistent (each rate is the counters' difference
 *   from the previous rebuilt sample over the samples' time difference), equal
 *   to the complete sample of an old-style stream whenever both streams got
 *   the same kernel read, and ends equal to GetCounters, with exactly the
 *   datagrams sent; so a changed entry left out, a stale value, or a rate
 *   computed against another sample than the stream's previous one fails here;
 * - a client that does not ask (every client written before changes_only: the
 *   field is absent from its request) gets complete samples only;
 * - `xdpctl watch` (which asks for changes) prints complete samples with the
 *   same values.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';

import { applyChanges } from '../../src/client/pages.js';
import { zeroRuleStats } from '../../src/server/core/dataplane.js';
import { openPinnedMap, type BpfMap } from '../../src/server/dataplane/bpf-map.js';
import { ruleStats, u32, type RuleStats } from '../../src/server/dataplane/codec.js';
import { possibleCpus } from '../../src/server/dataplane/libbpf.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import {
  CounterKind,
  Counters,
  WatchCountersRequest,
  type WatchCountersResponse,
} from '../../src/gen/xdpctl/v1/counters.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { CLI, kernelOnly, runId, sleep, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const HOT = 7999;
const COLD = 7998;

/** Collect every message of a stream until `signal` aborts. */
function collect(stream: AsyncIterable<WatchCountersResponse>, signal: AbortSignal) {
  const got: WatchCountersResponse[] = [];
  const done = (async () => {
    for await (const m of stream) got.push(m);
  })().catch((e: unknown) => {
    if (!signal.aborted) throw e;
  });
  return { got, done };
}

/** The counters of a sample without rates (what GetCounters at the end must equal). */
function valuesOf(c: Counters) {
  return {
    rules: c.rules.map((r) => ({ ...r, matchedRates: undefined, redirectedRates: undefined })),
    backends: c.backends.map((b) => ({ ...b, rates: undefined })),
  };
}

type Rates = { pps: number; bps: number } | undefined;
/**
 * The rate the daemon documents: the difference over the interval, none when a counter went down. The interval
 * is the time that passed between the two reads, measured on the monotonic clock (docs/architecture.md, "Two
 * clocks"); the samples' times are the wall clock's, in whole ms, read at the same instant: without a step of
 * the wall clock the two intervals agree within `slackS` (2 ms).
 */
function assertRate(
  got: Rates,
  cur: bigint,
  curBytes: bigint,
  prev: bigint,
  prevBytes: bigint,
  dt: number,
  what: string,
) {
  if (cur < prev || curBytes < prevBytes) return assert.equal(got, undefined, `${what}: none (a counter went down)`);
  const slackS = 0.002;
  const within = (v: number | undefined, delta: number) =>
    v !== undefined && v >= delta / (dt + slackS) - 1e-9 && v <= delta / (dt - slackS) + 1e-9;
  const [dp, db] = [Number(cur - prev), Number(curBytes - prevBytes) * 8];
  assert.ok(
    within(got?.pps, dp) && within(got?.bps, db),
    `${what}: ${JSON.stringify(got)} for ${dp} packets, ${db} bits in ${dt} s (within ${slackS} s)`,
  );
}

/** Each rebuilt sample's rates against the previous rebuilt sample (same entries in both). */
function assertSelfConsistent(samples: Counters[], label: string): void {
  for (let i = 1; i < samples.length; i++) {
    const [p, s] = [samples[i - 1], samples[i]];
    const dt = (s.time!.getTime() - p.time!.getTime()) / 1000;
    assert.ok(dt > 0, `${label} sample ${i}: time goes forward`);
    const prevRules = new Map(p.rules.map((r) => [r.rule, r]));
    for (const r of s.rules) {
      const q = prevRules.get(r.rule)!;
      const what = `${label} sample ${i}: rates of rule ${r.rule} from its counters`;
      assertRate(
        r.matchedRates,
        r.matchedPackets,
        r.matchedBytes,
        q.matchedPackets,
        q.matchedBytes,
        dt,
        `${what} (matched)`,
      );
      assertRate(
        r.redirectedRates,
        r.redirectedPackets,
        r.redirectedBytes,
        q.redirectedPackets,
        q.redirectedBytes,
        dt,
        `${what} (redirected)`,
      );
    }
    const prevBackends = new Map(p.backends.map((b) => [`${b.rule}|${b.ip}`, b]));
    for (const b of s.backends) {
      const q = prevBackends.get(`${b.rule}|${b.ip}`)!;
      assertRate(
        b.rates,
        b.packets,
        b.bytes,
        q.packets,
        q.bytes,
        dt,
        `${label} sample ${i}: rates of backend ${b.ip} from its counters`,
      );
    }
  }
}

/** How many samples of a changes stream, taken after `since` (ms), carry no rule or backend entry at the end. */
function quietSince(msgs: WatchCountersResponse[], since: number): number {
  let n = 0;
  for (let i = msgs.length - 1; i > 0; i--) {
    const c = msgs[i].counters!;
    if (c.time!.getTime() <= since || c.rules.length || c.backends.length) break;
    n++;
  }
  return n;
}

/** Complete samples from a stream's messages (the client's bookkeeping: applyChanges on the last one). */
function rebuild(msgs: WatchCountersResponse[]): Counters[] {
  const out: Counters[] = [];
  for (const m of msgs) {
    assert.equal(m.continued, false, 'small samples come in one message');
    out.push(m.changesOnly ? applyChanges(out.at(-1)!, m.counters!) : m.counters!);
  }
  return out;
}

describe('WatchCounters changes_only on a real daemon', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess;
  let c: Clients;
  let vm: Host, b1: Host, b2: Host;
  let rs: BpfMap<number, RuleStats> | undefined;

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    b2 = topo.addHost('b2', '198.18.3.1/24');
    topo.routeToXdp('vm');
    d = await DaemonProcess.start(`cc${id}`);
    c = d.clients();
  });
  after(async () => {
    rs?.close();
    await d?.destroy();
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-cc${id}`);
  });

  it('first a complete sample, then only what changed; rebuilt samples are right; old clients get complete ones', async () => {
    const rule = (name: string, port: number, h: Host) => ({
      name,
      match: { port },
      ingressInterfaces: [vm.hostIf],
      backends: [{ ip: h.ip!, mac: h.mac, interface: h.hostIf }],
    });
    await c.rules.createRule({ rule: rule('hot', HOT, b1) });
    await c.rules.createRule({ rule: rule('cold', COLD, b2) });
    // Three real datagrams to "cold" before the streams start: its counters are not zero, and its entry in
    // the pinned per-CPU map is the one that counts 3.
    assert.equal((await sendUdp(vm.netns, NOWHERE, COLD, 3).done).sent, 3);
    const coldAt = async (n: bigint) => {
      for (let i = 0; i < 100; i++) {
        const { counters } = await c.counters.getCounters({ filter: { rules: ['cold'] } });
        if (counters!.rules[0]?.redirectedPackets === n) return;
        await sleep(50);
      }
      assert.fail(`cold never counted ${n}`);
    };
    await coldAt(3n);
    rs = openPinnedMap(`${d.pinRoot}/maps/rule_stats`, u32, ruleStats);
    const total = (per: RuleStats[]) => per.reduce((n, v) => n + v.redirected, 0n);
    const coldId = rs.entriesPerCpu().find(([, per]) => total(per) === 3n)?.[0];
    assert.ok(coldId !== undefined, "cold's counter entry");

    // A client written before changes_only sends the same bytes as one that leaves it false.
    const oldStyle = WatchCountersRequest.encode(
      WatchCountersRequest.fromPartial({ interval: { seconds: 0n, nanos: 200e6 } }),
    ).finish();
    assert.deepEqual(
      oldStyle,
      WatchCountersRequest.encode({ interval: { seconds: 0n, nanos: 200e6 }, changesOnly: false }).finish(),
    );

    const ac = new AbortController();
    const opts = { signal: ac.signal };
    const interval = { seconds: 0n, nanos: 200e6 };
    const changes = collect(c.counters.watchCounters({ interval, changesOnly: true }, opts), ac.signal);
    const complete = collect(c.counters.watchCounters({ interval }, opts), ac.signal);
    // Another interval and a filter: a stream's changes are against its own previous sample.
    const filtered = collect(
      c.counters.watchCounters(
        {
          interval: { seconds: 0n, nanos: 300e6 },
          changesOnly: true,
          filter: { kinds: [CounterKind.COUNTER_KIND_RULES, CounterKind.COUNTER_KIND_BACKENDS] },
        },
        opts,
      ),
      ac.signal,
    );
    // The CLI, which asks for changes and prints complete samples.
    const cli = spawn(CLI, ['--server', d.unix, 'watch', '--interval', '200ms', '-o', 'json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let cliOut = '';
    let cliErr = '';
    cli.stdout.on('data', (x) => (cliOut += x));
    cli.stderr.on('data', (x) => (cliErr += x));
    let trafficFrom = 0;
    let trafficTo = 0;
    let resetAt = 0;
    const cliExit = new Promise<number | null>((r) => cli.on('close', (code) => r(code)));
    try {
      for (let i = 0; i < 200 && !cliOut.includes('\n'); i++) await sleep(50);
      assert.ok(cliOut.includes('\n'), `the CLI printed its first sample (stderr: ${cliErr})`);
      // Quiet: nothing changes for two samples.
      await until('two samples after the first', () => changes.got.length >= 3, 10_000);

      trafficFrom = Date.now();
      const { sent } = await sendUdp(vm.netns, NOWHERE, HOT, 300, { perTick: 10, tickMs: 10 }).done;
      trafficTo = Date.now();
      assert.equal(sent, 300);
      // The hot entries are sent, then once more with rates of 0, then the stream is quiet again.
      await until('two empty samples after the traffic', () => quietSince(changes.got, trafficTo) >= 2, 15_000);

      // A counter reset: cold's per-CPU values written to zero (what a recreated map reads).
      resetAt = Date.now();
      rs.putPerCpu(coldId!, Array.from({ length: possibleCpus() }, zeroRuleStats));
      await coldAt(0n);
      // Every stream has seen the reset, and the changes stream is quiet again.
      const coldZero = (x: Counters | undefined) =>
        x !== undefined &&
        x.time!.getTime() >= resetAt &&
        x.rules.find((r) => r.rule === 'cold')?.redirectedPackets === 0n;
      const lastCli = () => {
        const lines = cliOut.split('\n').filter((l) => l !== '');
        return lines.length
          ? Counters.fromJSON((JSON.parse(lines.at(-1)!) as { counters: unknown }).counters)
          : undefined;
      };
      await until(
        'every stream saw the reset; the changes stream quiet again',
        () =>
          quietSince(changes.got, resetAt) >= 2 &&
          coldZero(complete.got.at(-1)?.counters) &&
          coldZero(rebuild(filtered.got).at(-1)) &&
          coldZero(lastCli()),
        15_000,
      );
    } finally {
      ac.abort();
      cli.kill('SIGINT');
    }
    await Promise.all([changes.done, complete.done, filtered.done]);
    assert.equal(await cliExit, 0, `the CLI ends cleanly on SIGINT (stderr: ${cliErr})`);
    const { counters: truth } = await c.counters.getCounters({});
    const hotEnd = truth!.rules.find((r) => r.rule === 'hot')!;
    assert.equal(hotEnd.redirectedPackets, 300n, 'every datagram sent was counted');
    assert.equal(truth!.rules.find((r) => r.rule === 'cold')!.redirectedPackets, 0n);

    // The changes stream: a complete first sample, then changes only.
    const msgs = changes.got;
    assert.ok(msgs.length >= 8, `${msgs.length} samples`);
    assert.equal(msgs[0].changesOnly, false, 'the first sample is complete');
    assert.deepEqual(
      msgs[0].counters!.rules.map((r) => r.rule),
      ['cold', 'hot'],
    );
    assert.equal(msgs[0].counters!.backends.length, 2);
    assert.ok(
      msgs.slice(1).every((m) => m.changesOnly),
      'every later sample is changes only (no rule came or went)',
    );
    const names = (m: WatchCountersResponse) => [
      ...m.counters!.rules.map((r) => r.rule),
      ...m.counters!.backends.map((b) => `backend of ${b.rule}`),
    ];
    const at = (m: WatchCountersResponse) => m.counters!.time!.getTime();
    const later = msgs.slice(1);
    // Nothing while quiet: before the traffic, and at the end (the last 3 samples, 600 ms after the reset).
    const quietBefore = later.filter((m) => at(m) < trafficFrom);
    assert.ok(quietBefore.length >= 2, `${quietBefore.length} samples before the traffic`);
    for (const m of [...quietBefore, later.at(-1)!]) assert.deepEqual(names(m), [], 'a quiet sample is empty');
    // The hot rule and its backend while it takes traffic; cold only once reset.
    assert.ok(
      later.some((m) => names(m).includes('hot') && names(m).includes('backend of hot')),
      'the rule that took traffic was sent',
    );
    for (const m of later) {
      if (names(m).includes('cold')) assert.ok(at(m) >= resetAt, 'cold is sent only after its reset');
      for (const n of names(m)) assert.ok(['hot', 'backend of hot', 'cold'].includes(n), `${n} did not change`);
    }
    const coldSamples = later.filter((m) => names(m).includes('cold'));
    assert.ok(coldSamples.length >= 1, 'the reset was sent');
    const firstCold = coldSamples[0].counters!.rules.find((r) => r.rule === 'cold')!;
    assert.equal(firstCold.redirectedPackets, 0n);
    assert.equal(firstCold.redirectedRates, undefined, 'no rate over a reset');
    // Rebuilt samples: self-consistent, as the complete stream's where both had the same read, and at the end
    // equal to GetCounters.
    const rebuilt = rebuild(msgs);
    assertSelfConsistent(rebuilt, 'changes');
    assert.ok(
      rebuilt.some((s) => (s.rules.find((r) => r.rule === 'hot')!.redirectedRates?.pps ?? 0) > 0),
      'a rate while the traffic ran',
    );
    assert.deepEqual(valuesOf(rebuilt.at(-1)!), valuesOf(truth!), 'the rebuilt counters are the kernel counters');

    // The old-style stream: complete samples only, as before changes_only existed.
    const fulls = complete.got;
    assert.ok(fulls.length >= 8, `${fulls.length} complete samples`);
    for (const m of fulls) {
      assert.equal(m.changesOnly, false);
      assert.deepEqual(
        m.counters!.rules.map((r) => r.rule),
        ['cold', 'hot'],
      );
      assert.equal(m.counters!.backends.length, 2);
      assert.ok(m.counters!.global, 'global counters in every complete sample');
    }
    assertSelfConsistent(
      fulls.map((m) => m.counters!),
      'complete',
    );
    assert.deepEqual(valuesOf(fulls.at(-1)!.counters!), valuesOf(truth!));
    // Where both streams got the same read after the same previous one, the rebuilt sample is the complete one.
    const byTime = new Map(fulls.map((m, i) => [at(m), { m, prev: i > 0 ? at(fulls[i - 1]) : undefined }]));
    for (let i = 1; i < rebuilt.length; i++) {
      const twin = byTime.get(rebuilt[i].time!.getTime());
      if (twin && twin.prev === rebuilt[i - 1].time!.getTime()) assert.deepEqual(rebuilt[i], twin.m.counters);
    }

    // The filtered stream at 300 ms: its own bookkeeping, same end.
    const f = filtered.got;
    assert.ok(f.length >= 5 && f[0].changesOnly === false && f.slice(1).every((m) => m.changesOnly));
    const fr = rebuild(f);
    assertSelfConsistent(fr, 'filtered');
    assert.equal(fr.at(-1)!.global, undefined, 'no global counters asked for');
    assert.deepEqual(valuesOf(fr.at(-1)!), valuesOf(truth!));

    // The CLI: complete samples, self-consistent, ending at the kernel's counters.
    const lines = cliOut
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as { counters: unknown; changesOnly?: boolean });
    assert.ok(lines.length >= 5, `${lines.length} CLI samples`);
    const cliSamples = lines.map((l) => {
      assert.equal(l.changesOnly, undefined, 'the CLI prints complete samples');
      return Counters.fromJSON(l.counters);
    });
    for (const s of cliSamples) {
      assert.deepEqual(
        s.rules.map((r) => r.rule),
        ['cold', 'hot'],
      );
      assert.equal(s.backends.length, 2);
    }
    assertSelfConsistent(cliSamples, 'CLI');
    assert.deepEqual(valuesOf(cliSamples.at(-1)!), valuesOf(truth!));
  });
});
