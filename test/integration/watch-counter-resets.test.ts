/**
 * WatchCounters across a restart of a counter series, on a real daemon with real datagrams:
 * - a rule's and a backend's counters lowered by another tool (`bpftool map update pinned
 *   PIN/maps/rule_stats ...`, and backend_stats) while a TypeScript client and `xdpctl watch` stream them: the
 *   sample that first shows them lower marks both entries `reset` with a new `start_time`; every other pair of
 *   consecutive samples has the same start time and counters that only go up, so that a client subtracting
 *   them (as it may only then) never gets a negative rate; the daemon's rates are never negative and count on
 *   from the new base; the rule and its backend are in every sample of both;
 * - the rule deleted and re-created under the same name between two samples (a new object: its counters from
 *   0, more than the old one had): `reset`, a later start time, rates over the time since it (not the
 *   difference from the old object's counters);
 * - the rule deleted, a sample without it, then re-created: the sample it is back in says `reset` (its start time
 *   differs from the last sample it was in; before, not: the previous sample did not have it);
 * - a daemon restart: the stream ends (UNAVAILABLE); a new stream starts afresh: no `reset`, no rates in its
 *   first sample, then rates that count on; the counters, kept in the pinned maps, are FOUND (start_kind): counted
 *   since at most the new daemon's first read, as `xdpctl rules get` says (before: "counting since" that read).
 * Before: no `reset` and no start time in any sample, a client's difference of the lowered counters negative,
 * and the re-created rule's rate the difference from the old object's counters.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';

import { CounterStartKind, WatchCountersResponse, type Counters } from '../../src/gen/xdpctl/v1/counters.js';
import { counterEntryWith, zeroCounterEntry } from '../helpers/counter-write.js';
import { DaemonProcess, xdpctl, type Clients } from '../helpers/daemon.js';
import { CLI, kernelOnly, runId, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const PORT = 7411;
const big = (_: string, v: unknown) => (typeof v === 'bigint' ? String(v) : v);

type Entry = {
  what: string;
  packets: bigint;
  bytes: bigint;
  pps?: number;
  start?: number;
  reset: boolean;
};

/** The rule's and its backend's entries of a sample, as the assertions read them. */
function entries(c: Counters): Entry[] {
  return [
    ...c.rules.map((r) => ({
      what: `rule ${r.rule}`,
      packets: r.matchedPackets,
      bytes: r.matchedBytes,
      pps: r.matchedRates?.pps,
      start: r.startTime?.getTime(),
      reset: r.reset ?? false,
    })),
    ...c.backends.map((b) => ({
      what: `backend ${b.ip} of ${b.rule}`,
      packets: b.packets,
      bytes: b.bytes,
      pps: b.rates?.pps,
      start: b.startTime?.getTime(),
      reset: b.reset ?? false,
    })),
  ];
}

/**
 * Every pair of consecutive samples: either the entry says `reset`, or its start time is the same and its
 * counters did not go down (a client's difference is then >= 0); the daemon's rates are never negative.
 * Returns the samples (index, entry) that said reset.
 */
function assertNoNegative(samples: Counters[], label: string): { i: number; e: Entry }[] {
  const resets: { i: number; e: Entry }[] = [];
  for (let i = 0; i < samples.length; i++) {
    const cur = entries(samples[i]);
    for (const e of cur) assert.ok(e.pps === undefined || e.pps >= 0, `${label} sample ${i}: ${e.what} rate ${e.pps}`);
    if (i === 0) continue;
    const prev = new Map(entries(samples[i - 1]).map((e) => [e.what, e]));
    for (const e of cur) {
      const p = prev.get(e.what);
      if (!p) continue;
      if (e.reset) {
        resets.push({ i, e });
        continue;
      }
      assert.equal(e.start, p.start, `${label} sample ${i}: ${e.what}: the same series without a reset`);
      assert.ok(
        e.packets >= p.packets && e.bytes >= p.bytes,
        `${label} sample ${i}: ${e.what} went from ${p.packets} to ${e.packets} packets without a reset: ` +
          `a client's rate ${Number(e.packets - p.packets)} packets / interval`,
      );
    }
  }
  return resets;
}

describe('WatchCounters says a restarted counter series (reset, start_time)', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess;
  let c: Clients;
  let vm: Host, b1: Host;
  const rule = () => ({
    name: 'web',
    match: { port: PORT },
    ingressInterfaces: [vm.hostIf],
    backends: [{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf }],
  });
  const counters = async () => (await c.counters.getCounters({ filter: { rules: ['web'] } })).counters!;

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    topo.routeToXdp('vm');
    d = await DaemonProcess.start(`wcr${id}`, ['--http-listen', '127.0.0.1:0']);
    c = d.clients();
  });
  after(async () => {
    await d?.destroy();
    topo.destroy();
  });

  /** Collect a stream's messages (one message per sample here) until `ac` aborts or it ends. */
  function collect(ac: AbortController, interval: number) {
    const got: Counters[] = [];
    let ended: unknown;
    const done = (async () => {
      try {
        for await (const m of c.counters.watchCounters(
          {
            filter: { rules: ['web'] },
            interval: { seconds: BigInt(Math.floor(interval / 1000)), nanos: (interval % 1000) * 1e6 },
          },
          { signal: ac.signal },
        )) {
          assert.equal(m.continued, false);
          got.push(m.counters!);
        }
      } catch (e) {
        if (!ac.signal.aborted) ended = e;
      }
    })();
    return { got, done, ended: () => ended };
  }

  it('lowered by bpftool during a stream: reset and a new start time, no negative rate, the rule always there (client and CLI)', async () => {
    await c.rules.createRule({ rule: rule() });
    assert.equal((await sendUdp(vm.netns, NOWHERE, PORT, 100).done).sent, 100);
    await until('100 counted', async () => (await counters()).rules[0]?.matchedPackets === 100n, 10_000);
    const first = await counters();

    const ac = new AbortController();
    const stream = collect(ac, 200);
    const cli = spawn(
      CLI,
      ['--server', d.unix, 'watch', 'rules', '--interval', '200ms', '-o', 'json', '--rule', 'web'],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    const cliB = spawn(
      CLI,
      ['--server', d.unix, 'watch', 'backends', '--interval', '200ms', '-o', 'json', '--rule', 'web'],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let cliOut = '';
    let cliBOut = '';
    let cliErr = '';
    cli.stdout.on('data', (x) => (cliOut += x));
    cliB.stdout.on('data', (x) => (cliBOut += x));
    cli.stderr.on('data', (x) => (cliErr += x));
    cliB.stderr.on('data', (x) => (cliErr += x));
    const cliSamples = (out: string) =>
      out
        .split('\n')
        .filter(Boolean)
        .map((l) => WatchCountersResponse.fromJSON(JSON.parse(l)).counters!);
    try {
      await until(
        () => `two samples on each (stream ${stream.got.length}; CLI stderr: ${cliErr})`,
        () => stream.got.length >= 2 && cliSamples(cliOut).length >= 2 && cliSamples(cliBOut).length >= 2,
        15_000,
      );
      const lowerAt = Date.now();
      zeroCounterEntry(d.pinRoot, 'rule_stats', counterEntryWith(d.pinRoot, 'rule_stats', 100n));
      zeroCounterEntry(d.pinRoot, 'backend_stats', counterEntryWith(d.pinRoot, 'backend_stats', 100n));
      // Counting on from the new base, over several samples.
      assert.equal((await sendUdp(vm.netns, NOWHERE, PORT, 40, { perTick: 2, tickMs: 20 }).done).sent, 40);
      await until(
        () => `40 in every stream (CLI stderr: ${cliErr})`,
        () =>
          stream.got.some((x) => x.rules[0]?.matchedPackets === 40n && x.backends[0]?.packets === 40n) &&
          cliSamples(cliOut).some((x) => x.rules[0]?.matchedPackets === 40n) &&
          cliSamples(cliBOut).some((x) => x.backends[0]?.packets === 40n),
        15_000,
      );
      // Two more samples at 40 (the rates fall to 0, still no reset).
      const n = stream.got.length;
      await until('two more samples', () => stream.got.length >= n + 2, 10_000);
      ac.abort();
      cli.kill('SIGINT');
      cliB.kill('SIGINT');
      await stream.done;

      for (const [label, samples, kinds] of [
        ['client', stream.got, ['rule', 'backend']],
        ['CLI watch rules', cliSamples(cliOut), ['rule']],
        ['CLI watch backends', cliSamples(cliBOut), ['backend']],
      ] as [string, Counters[], string[]][]) {
        const dump = () =>
          JSON.stringify(
            samples.map((s) => entries(s)),
            big,
          );
        // Never absent: the rule (and its backend) in every sample.
        for (const [i, s] of samples.entries()) {
          if (kinds.includes('rule')) assert.equal(s.rules.map((r) => r.rule).join(), 'web', `${label} sample ${i}`);
          if (kinds.includes('backend')) assert.equal(s.backends.length, 1, `${label} sample ${i}`);
        }
        const resets = assertNoNegative(samples, label);
        for (const kind of kinds) {
          const r = resets.filter((x) => x.e.what.startsWith(kind));
          assert.equal(r.length, 1, `${label}: one ${kind} sample says reset: ${dump()}`);
          const { i, e } = r[0];
          const before = entries(samples[i - 1]).find((x) => x.what === e.what)!;
          assert.ok(e.packets < before.packets, `${label}: the reset is the sample where it went down: ${dump()}`);
          assert.ok(e.start! >= lowerAt - 1000 && e.start! > before.start!, `${label}: a new start time: ${dump()}`);
          assert.equal(e.pps, undefined, `${label}: no rate over the interval of another tool's write`);
          // From the next sample on: rates again, the difference from the new base.
          const next = entries(samples[i + 1]).find((x) => x.what === e.what)!;
          assert.equal(next.start, e.start);
          assert.ok(next.pps !== undefined && next.pps >= 0, `${label}: a rate after the reset: ${dump()}`);
          assert.equal(next.pps === 0, next.packets === e.packets, `${label}: the rate is the difference`);
        }
      }
      // GetCounters: the start time too (no reset: it has no previous sample).
      assert.ok(first.rules[0].startTime && first.backends[0].startTime, 'GetCounters carries the start time');
      assert.equal(first.rules[0].reset, false, 'GetCounters: no reset (no previous sample)');
      const now = await counters();
      assert.equal(now.rules[0].startTime?.getTime(), stream.got.at(-1)!.rules[0].startTime?.getTime());
      // HTTP/JSON (GetCounters): the same start times, as RFC 3339 strings; no reset.
      const res = await fetch(`http://${d.http[0]}/xdpctl.v1.CounterService/GetCounters`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ filter: { rules: ['web'] } }),
      });
      const json = (await res.json()) as {
        counters: { rules: { startTime?: string; reset?: boolean }[]; backends: { startTime?: string }[] };
      };
      assert.equal(res.status, 200, JSON.stringify(json));
      const at = (t?: string) => (t === undefined ? NaN : Date.parse(t));
      assert.equal(at(json.counters.rules[0].startTime), now.rules[0].startTime!.getTime(), JSON.stringify(json));
      assert.equal(at(json.counters.backends[0].startTime), now.backends[0].startTime!.getTime());
      assert.equal(json.counters.rules[0].reset ?? false, false);
    } finally {
      ac.abort();
      cli.kill('SIGKILL');
      cliB.kill('SIGKILL');
    }
  });

  it('deleted and re-created under the same name between two samples: a new series, rates from its start', async () => {
    const before = await counters();
    const oldCount = before.rules[0].matchedPackets;
    const oldStart = before.rules[0].startTime?.getTime() ?? NaN;
    assert.equal(oldCount, 40n);
    // A long interval, so that the delete, the create and 60 datagrams (more than the old rule counted) fit
    // between two samples; tried again if the machine was too slow for that.
    for (let attempt = 1; ; attempt++) {
      const ac = new AbortController();
      const stream = collect(ac, 5000);
      try {
        await until('a first sample', () => stream.got.length >= 1, 10_000);
        const was = stream.got.at(-1)!;
        const wasCount = was.rules[0].matchedPackets;
        await c.rules.deleteRule({ name: 'web' });
        await c.rules.createRule({ rule: rule() });
        assert.equal((await sendUdp(vm.netns, NOWHERE, PORT, 60 + Number(wasCount)).done).sent, 60 + Number(wasCount));
        const want = 60n + wasCount;
        await until('counted', async () => (await counters()).rules[0]?.matchedPackets === want, 10_000);
        const inTime = stream.got.length === 1;
        await until('the next sample', () => stream.got.length >= 2, 15_000);
        const s = stream.got[1];
        if (!inTime || s.rules[0]?.matchedPackets !== want) {
          assert.ok(attempt < 3, `the change and the datagrams never fitted between two samples 5 s apart`);
          continue;
        }
        const dump = JSON.stringify(
          stream.got.map((x) => entries(x)),
          big,
        );
        for (const e of entries(s)) {
          const p = entries(was).find((x) => x.what === e.what)!;
          assert.equal(e.reset, true, `${e.what}: reset (a new object under the same name): ${dump}`);
          assert.ok(e.start! > p.start! && e.start! > oldStart, `${e.what}: a later start time: ${dump}`);
          // Over the time since the new object's start, from 0: not (new - old) / interval.
          const since = (s.time!.getTime() - e.start!) / 1000;
          assert.ok(e.pps !== undefined, `${e.what}: a rate from the new start: ${dump}`);
          assert.ok(
            Math.abs(e.pps * since - Number(want)) <= Number(want) * 0.01 + 1,
            `${e.what}: ${e.pps} pps over ${since} s is ${want} packets: ${dump}`,
          );
        }
        return;
      } finally {
        ac.abort();
        await stream.done;
      }
    }
  });

  it('deleted in one sample, re-created by a later one: reset against the last sample it was in', async () => {
    const ac = new AbortController();
    const stream = collect(ac, 300);
    try {
      await until('a sample with the rule', () => stream.got.some((x) => x.rules.length === 1), 10_000);
      const last = entries(stream.got.at(-1)!);
      await c.rules.deleteRule({ name: 'web' });
      await until('a sample without it', () => stream.got.at(-1)!.rules.length === 0, 10_000);
      const absentAt = stream.got.length - 1;
      await c.rules.createRule({ rule: rule() });
      assert.equal((await sendUdp(vm.netns, NOWHERE, PORT, 5).done).sent, 5);
      await until(
        'back, counting',
        () => stream.got.slice(absentAt).some((x) => x.rules[0]?.matchedPackets === 5n && x.backends.length === 1),
        10_000,
      );
      const dump = JSON.stringify(
        stream.got.map((x) => entries(x)),
        big,
      );
      const back = stream.got.slice(absentAt).findIndex((x) => x.rules.length === 1) + absentAt;
      const e = entries(stream.got[back]);
      assert.equal(e.length, 2, dump);
      for (const x of e) {
        const was = last.find((y) => y.what === x.what)!;
        // Before: reset false (the previous sample did not have it: "new to the stream").
        assert.equal(x.reset, true, `${x.what}: a new series, back after a sample without it: ${dump}`);
        assert.ok(x.start! > was.start!, `${x.what}: a later start time: ${dump}`);
      }
    } finally {
      ac.abort();
      await stream.done;
    }
  });

  it('a daemon restart ends the stream; a new stream starts afresh', async () => {
    const ac = new AbortController();
    const stream = collect(ac, 200);
    await until('a first sample', () => stream.got.length >= 1, 10_000);
    const kept = stream.got[0].rules[0].matchedPackets;
    // Made by this daemon (the case before re-created it): counted from 0 at its start time.
    for (const x of [stream.got[0].rules[0], stream.got[0].backends[0]]) {
      assert.equal(x.startKind, CounterStartKind.COUNTER_START_KIND_ZEROED);
    }
    const since = async () => {
      const get = await xdpctl(d.unix, ['rules', 'get', 'web']);
      assert.equal(get.code, 0, get.stderr);
      return get.stdout.split('\n').find((l) => l.startsWith('counting since'))!;
    };
    assert.match(await since(), /^counting since:\s+\S+Z \(from 0\)$/);
    const started = Date.now();
    assert.equal(await d.stop('SIGTERM'), 0);
    await stream.done;
    d.closeClients();
    assert.match(String(stream.ended()), /UNAVAILABLE/, 'the stream ends with UNAVAILABLE');
    d = await DaemonProcess.start(`wcr${id}`);
    c = d.clients();
    const ac2 = new AbortController();
    const fresh = collect(ac2, 200);
    try {
      await until('a first sample of the new daemon', () => fresh.got.length >= 1, 10_000);
      assert.equal((await sendUdp(vm.netns, NOWHERE, PORT, 10).done).sent, 10);
      await until('10 more', () => fresh.got.some((x) => x.rules[0]?.matchedPackets === kept + 10n), 10_000);
      const dump = JSON.stringify(
        fresh.got.map((x) => entries(x)),
        big,
      );
      const first = entries(fresh.got[0]);
      assert.equal(first.length, 2, dump);
      for (const e of first) {
        assert.equal(e.reset, false, `${e.what}: no reset in a stream's first sample: ${dump}`);
        assert.equal(e.pps, undefined, `${e.what}: no rate in a stream's first sample`);
        assert.ok(e.start !== undefined && e.start >= started, `${e.what}: its first read by this daemon: ${dump}`);
      }
      assert.equal(first[0].packets, kept, 'the counters kept across the restart');
      // They include packets counted before this daemon started: its first read is not when they began. Before:
      // `xdpctl rules get` said "counting since <first read>", and nothing in the reply told otherwise.
      for (const x of [fresh.got[0].rules[0], fresh.got[0].backends[0]]) {
        assert.equal(x.startKind, CounterStartKind.COUNTER_START_KIND_FOUND, dump);
      }
      const line = await since();
      const t = fresh.got[0].rules[0].startTime!.toISOString();
      assert.ok(line.includes(`at most ${t}: counted before this xdpctld started`), `${line} (the first read: ${t})`);
      assert.deepEqual(assertNoNegative(fresh.got, 'after the restart'), [], `no reset: ${dump}`);
    } finally {
      ac2.abort();
      await fresh.done;
    }
  });
});
