/** The benchmark code in smoke mode (tiny counts), so that `npm run bench` cannot rot. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { describe, it } from 'node:test';

import { BpfObject, liveFramesRefusal } from '../../src/server/dataplane/bpf-object.js';
import { kernelOnly, ROOT, runId } from '../helpers/env.js';

/** This kernel's answer to one live-frame test run (undefined: it runs them), asked apart from the bench. */
function kernelRefusesLiveFrames(): string | undefined {
  const base = BpfObject.load(`${ROOT}build/bpf/baseline.bpf.o`);
  try {
    return liveFramesRefusal(base.progFd('base_pass'));
  } finally {
    base.close();
  }
}

describe('npm run bench -- --smoke', kernelOnly(), () => {
  it('measures every datapath path, live-frame rate and Linux-stack path next to its baseline', () => {
    const out = `/tmp/xdpctl-bench-smoke-${runId()}.json`;
    try {
      const r = spawnSync(process.execPath, ['--import', 'tsx', `${ROOT}bench/run.ts`, '--smoke', '--out', out], {
        cwd: ROOT,
        encoding: 'utf8',
        timeout: 120_000,
      });
      assert.equal(r.status, 0, r.stderr);
      type Row = { name: string; median: number; ratio?: number; baseline?: string; delivered?: number };
      const res = JSON.parse(readFileSync(out, 'utf8')) as {
        datapath: Row[];
        live: Row[];
        liveUnavailable?: string;
        control: Row[];
      };
      const names = res.datapath.map((f) => f.name);
      for (const want of [
        'baseline: XDP_PASS program',
        'baseline: minimal bpf_redirect_map',
        'xdpctl: cross-connect hit',
        'xdpctl: UDP rule hit, 1 backend',
        'xdpctl: UDP rule hit, 16 backends',
        'xdpctl: rule miss (UDP, other port)',
        'xdpctl: non-IP (ARP)',
        'xdpctl: UDP rule hit with 1000 rules installed',
      ]) {
        assert.ok(names.includes(want), `missing: ${want}`);
      }
      for (const f of res.datapath) {
        assert.ok(f.median > 0, `${f.name}: ${f.median} ns`);
        if (f.baseline) assert.ok(typeof f.ratio === 'number' && f.ratio > 0, f.name);
      }
      // Live frames: measured wherever the kernel runs them; where it refuses them (asked here apart from the
      // bench), the bench says the kernel's answer and measures none, and never the other way round.
      const refused = kernelRefusesLiveFrames();
      if (refused) {
        assert.equal(res.liveUnavailable, refused, 'the bench says the kernel refused live frames, as it does');
        assert.deepEqual(res.live, []);
        assert.match(r.stdout, /Not measured in this run: this kernel refused live frames \(BPF_PROG_TEST_RUN/);
      } else
        assert.equal(res.liveUnavailable, undefined, `live frames run here, the bench said: ${res.liveUnavailable}`);
      const live = res.live.map((f) => f.name);
      for (const want of refused
        ? []
        : [
            'baseline: minimal bpf_redirect_map',
            'xdpctl: cross-connect',
            'xdpctl: UDP redirect',
            'Linux stack: UDP, routing + nftables DNAT',
            'Linux stack: cross-connect, tc mirred redirect',
            'Linux stack: cross-connect, bridge',
          ]) {
        assert.ok(live.includes(want), `missing live: ${want}`);
      }
      for (const f of res.live) {
        // Frames really arrived at the receiver, on every path (XDP and the stack).
        assert.ok(f.median > 0, `${f.name}: ${f.median} Mpps`);
        assert.ok((f.delivered ?? 0) > 0.5, `${f.name}: only ${f.delivered} of the frames delivered`);
        if (f.baseline) assert.ok(typeof f.ratio === 'number' && f.ratio > 0, f.name);
      }
      // The control plane: every section produced its rows, each with a measured value.
      const control = res.control.map((f) => f.name);
      for (const want of [
        /^UpdateRule end to end .*, Unix socket, p50$/,
        /^ApplyRules 20 rules x 4 backends, until live$/,
        /^5 WatchCounters streams at 1 s, 20 rules: daemon CPU$/,
        /^5 WatchCounters streams \(changes_only\) at 1 s, 20 rules: daemon CPU$/,
        /^start to SERVING, 20 rules to adopt$/,
        /^RSS at rest \(.* after SERVING\), 20 rules$/,
        /^UpdateRule p50 with 50 rules installed$/,
        /^GetRule\/ListRules p99 while ApplyRules replaces 50 rules/,
        /^event-loop delay, longest, during that ApplyRules$/,
        /^baseline: start to SERVING, 0 rules, src\/ through tsx \(as before\)$/,
        /^start to SERVING, 0 rules \(compiled dist\/\)$/,
        /^RSS at rest \(.* after SERVING\), 0 rules \(dist\/\)$/,
      ]) {
        assert.ok(
          control.some((n) => want.test(n)),
          `missing control row ${want}: ${control.join(' | ')}`,
        );
      }
      for (const f of res.control) {
        // An idle daemon's CPU can round to 0; latencies, rates and RSS cannot.
        // So can an event-loop delay (none recorded) and a difference of two latencies.
        if (/CPU|idle \(0 streams\)$|event-loop|minus/.test(f.name))
          assert.ok(Number.isFinite(f.median), `${f.name}: ${f.median}`);
        else assert.ok(f.median > 0, `${f.name}: ${f.median}`);
      }
    } finally {
      rmSync(out, { force: true });
    }
  });
});
