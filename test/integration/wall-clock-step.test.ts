/**
 * A wall-clock step under a running daemon (an NTP step, `date -s`, a VM resumed): ages, intervals and rates
 * are measured on the monotonic clock (core/clock.ts), so what the daemon reports goes on as if there had
 * been no step; only the times it shows (a counter sample's time) follow the wall clock. Before, they were
 * measured on the wall clock: a step back of an hour made GetStatus's uptime an hour shorter (negative), and
 * WatchCounters stopped sending samples for the hour (its ticks were due by the wall clock); a sample across
 * a step back had no rates while traffic flowed, one across a step forward 1/3600 of the traffic's rate.
 *
 * The step is the daemon's own: libfaketime (Debian's faketime package) moves CLOCK_REALTIME of that one
 * process as a file says (FAKETIME_TIMESTAMP_FILE, read at every call: FAKETIME_NO_CACHE) and leaves
 * CLOCK_MONOTONIC alone (FAKETIME_DONT_FAKE_MONOTONIC). The host's clock is never changed. Real namespaces,
 * veths and datagrams.
 */
import assert from 'node:assert/strict';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import type { WatchCountersResponse } from '../../src/gen/xdpctl/v1/counters.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import type { Clients } from '../helpers/daemon.js';
import { kernelOnly, until, within } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import type { Host } from '../helpers/topology.js';

const LIBFAKETIME = [
  '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1',
  '/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1',
].find((p) => existsSync(p));

describe('a wall-clock step: ages and rates as without it (libfaketime, this daemon only)', kernelOnly(), () => {
  const lab = new Lab();
  const { status, rule } = lab;
  const clockFile = `/tmp/xdpctl-test-${lab.id}-faketime`;
  let c: Clients;
  let b1: Host;

  /** Step the daemon's wall clock to the real one plus `s` seconds (it reads the file at every call). */
  const setClock = (s: number) => writeFileSync(clockFile, `${s >= 0 ? '+' : ''}${s}\n`);

  before(async () => {
    assert.ok(LIBFAKETIME, 'libfaketime is installed (Debian package faketime; scripts/setup.sh installs it)');
    setClock(0);
    ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    ({ c } = await lab.start(['--log-level', 'info'], {
      LD_PRELOAD: LIBFAKETIME,
      FAKETIME_TIMESTAMP_FILE: clockFile,
      FAKETIME_NO_CACHE: '1',
      FAKETIME_DONT_FAKE_MONOTONIC: '1',
    }));
  });
  after(async () => {
    await lab.destroy();
    rmSync(clockFile, { force: true });
  });

  /** The daemon's wall clock minus ours (s), as the time of a fresh counter sample shows it. */
  const skew = async () => {
    const { counters } = await c.counters.getCounters({});
    return (counters!.time!.getTime() - Date.now()) / 1000;
  };
  const uptime = async () => {
    const u = (await c.daemon.getStatus({})).uptime!;
    return Number(u.seconds) + u.nanos / 1e9;
  };

  it('GetStatus uptime counts the time that passed, not the step back or forward', async () => {
    const t0 = performance.now();
    const u0 = await uptime();
    for (const s of [-3600, 3600, 0]) {
      setClock(s);
      await until(`the daemon's wall clock at ${s} s`, async () => Math.abs((await skew()) - s) < 30);
      const u = await uptime();
      const passed = (performance.now() - t0) / 1000;
      assert.ok(u >= u0 && u <= u0 + passed + 1, `uptime ${u} s after a step to ${s} s: ${u0} s + at most ${passed} s`);
    }
  });

  it('WatchCounters rates across a step back and a step forward are the traffic that flowed', async () => {
    setClock(0);
    await until('clock back to the real one', async () => Math.abs(await skew()) < 30);
    await c.rules.createRule({ rule: rule('clk', 7995, [backendOf(b1)]) });
    await until('clk active', async () => (await status('clk')).state === RuleState.RULE_STATE_ACTIVE);
    const done = await lab.stream(b1, 7995, 12); // 100 datagrams a second
    const ac = new AbortController();
    const samples: { time: number; matched: bigint; pps?: number }[] = [];
    try {
      const watch = c.counters.watchCounters(
        { filter: { rules: ['clk'], interfaces: [], kinds: [] }, interval: { seconds: 1n, nanos: 0 } },
        { signal: ac.signal },
      );
      const stream = watch[Symbol.asyncIterator]();
      while (samples.length < 9) {
        // Each sample 1 s after the last (within 10 %): a stream whose ticks wait for the wall clock stalls here.
        const next = await within(stream.next(), 10_000, 'late');
        assert.notEqual(next, 'late', `sample ${samples.length + 1} came within 10 s (interval 1 s)`);
        const m = (next as IteratorResult<WatchCountersResponse>).value as WatchCountersResponse;
        const r = m.counters!.rules.find((x) => x.rule === 'clk')!;
        samples.push({ time: m.counters!.time!.getTime(), matched: r.matchedPackets, pps: r.matchedRates?.pps });
        if (samples.length === 3) setClock(-3600); // between samples 3 and 4: back an hour
        if (samples.length === 6) setClock(0); // between samples 6 and 7: forward an hour
      }
    } finally {
      ac.abort();
      setClock(0);
    }
    const { sent } = await done();
    assert.ok(sent > 0, 'datagrams were sent');
    const gaps = samples.slice(1).map((s, i) => Math.round((s.time - samples[i].time) / 1000));
    // The samples' times are the wall clock's: the steps show there, and only there.
    assert.ok(gaps[2] < -3000 && gaps[5] > 3000, `the steps are in the samples' times (gaps ${gaps.join(', ')} s)`);
    for (let i = 1; i < samples.length; i++) {
      const delta = Number(samples[i].matched - samples[i - 1].matched);
      // The time that passed between the two reads: their wall-clock gap less the step in it (whole hours).
      const gap = (samples[i].time - samples[i - 1].time) / 1000;
      const passed = gap - Math.round(gap / 3600) * 3600;
      const want = delta / passed;
      const pps = samples[i].pps;
      assert.ok(
        passed > 0 && pps !== undefined && Math.abs(pps - want) <= 0.05 * want + 1,
        `sample ${i + 1}: ${delta} datagrams matched in the ${passed.toFixed(3)} s since the last one ` +
          `(${want.toFixed(1)} pps), rate ${pps} pps (gaps ${gaps.join(', ')} s)`,
      );
    }
    const sum = Number(samples.at(-1)!.matched - samples[0].matched);
    assert.ok(sum > 0, 'traffic was matched while watched');
  });
});
