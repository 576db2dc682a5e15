/**
 * Live-frame benchmarks: packets per second really delivered into a veth in
 * native mode (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES), for the
 * xdpctl program's cross-connect and UDP redirect, next to the minimal
 * bpf_redirect_map program on the same veth, and the Linux stack's own way of
 * doing the same (live frames through XDP_PASS feed the stack: routing +
 * nftables DNAT, tc mirred, a bridge) counted by the same receiver.
 *
 * This side makes a uniquely named network namespace and a pin root, runs
 * bench/live-worker.ts inside the namespace, and removes both whatever
 * happens (deleting the namespace removes every device, bridge, nftables
 * table and filter the worker made there).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, rmSync } from 'node:fs';

import { XdpDatapath } from '../src/server/dataplane/datapath.js';
import { median, type Figure } from './datapath.js';
import type { LiveSeries, LiveWorkerArgs, LiveWorkerResult } from './live-worker.js';

const HERE = new URL('.', import.meta.url).pathname;

/** Options of the live-frame run. */
export interface LiveBenchOptions {
  /** Frames per test run. */
  repeat: number;
  runs: number;
  /** The xdpctl object to measure (default build/bpf/xdpctl.bpf.o). */
  objectPath?: string;
}

/** The live-frame figures (Mpps, higher is better) and the sink's noise count. */
export interface LiveBenchResult {
  figures: Figure[];
  otherFrames: number;
  /** Why nothing was measured: the kernel's refusal of live frames (`figures` is then empty). */
  unavailable?: string;
}

function figure(s: LiveSeries, o: LiveBenchOptions): Figure {
  return {
    name: s.name,
    unit: 'Mpps',
    better: 'higher',
    median: median(s.mpps),
    min: Math.min(...s.mpps),
    max: Math.max(...s.mpps),
    runs: o.runs,
    repeat: o.repeat,
    delivered: median(s.deliveredShare),
  };
}

function against(f: Figure, base: Figure, target?: number): Figure {
  const ratio = f.median / Math.max(base.median, 1e-9);
  return { ...f, baseline: base.name, ratio, target, met: target === undefined ? undefined : ratio >= target };
}

export function benchLive(o: LiveBenchOptions): LiveBenchResult {
  const id = randomBytes(3).toString('hex');
  const netns = `xbench-${id}`;
  const pinRoot = `/sys/fs/bpf/xdpctl-bench-live-${id}`;
  execFileSync('ip', ['netns', 'add', netns]);
  try {
    const args: LiveWorkerArgs = { pinRoot, repeat: o.repeat, runs: o.runs, objectPath: o.objectPath };
    const stdout = execFileSync(
      'nsenter',
      [`--net=/run/netns/${netns}`, process.execPath, '--import', 'tsx', `${HERE}live-worker.ts`, JSON.stringify(args)],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 20 },
    );
    const res = JSON.parse(stdout) as LiveWorkerResult;
    if (res.refused) return { figures: [], otherFrames: 0, unavailable: res.refused };
    const byName = new Map(res.series.map((s) => [s.name, figure(s, o)]));
    const get = (name: string) => {
      const f = byName.get(name);
      if (!f) throw new Error(`live benchmark: no series ${name}`);
      return f;
    };
    const redirect = get('baseline: minimal bpf_redirect_map');
    const xc = against(get('xdpctl: cross-connect'), redirect, 0.9);
    const udp = against(get('xdpctl: UDP redirect'), redirect, 0.9);
    return {
      figures: [
        redirect,
        xc,
        udp,
        // The stack's rate as a share of xdpctl's on the same path.
        against(get('Linux stack: UDP, routing + nftables DNAT'), udp),
        against(get('Linux stack: cross-connect, tc mirred redirect'), xc),
        against(get('Linux stack: cross-connect, bridge'), xc),
      ],
      otherFrames: res.otherFrames,
    };
  } finally {
    try {
      execFileSync('ip', ['netns', 'del', netns], { stdio: 'ignore' });
    } catch {
      /* already gone */
    }
    XdpDatapath.unpinAll(pinRoot);
    // tc (for the stack's baselines) makes its bpffs directory on first use: remove it when empty.
    removeTcBpffsDir();
  }
}

/** Remove /sys/fs/bpf/{tc,ip,xdp} that tc made, if nothing is pinned in them. */
function removeTcBpffsDir(): void {
  const globals = '/sys/fs/bpf/tc/globals';
  if (existsSync(globals) && readdirSync(globals).length > 0) return;
  for (const link of ['/sys/fs/bpf/ip', '/sys/fs/bpf/xdp']) rmSync(link, { force: true });
  rmSync('/sys/fs/bpf/tc', { recursive: true, force: true });
}
