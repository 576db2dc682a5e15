/**
 * The live-frame benchmark's worker: runs inside the benchmark's own network
 * namespace (started by bench/live.ts through `nsenter --net=...`, which keeps
 * bpffs; `ip netns exec` would hide it), because BPF_PROG_TEST_RUN with live
 * frames takes the ingress ifindex from the caller's namespace
 * (docs/kernel-notes.md, trap 9). Everything it creates (veths, bridge, nftables
 * table, tc filter, sysctls) lives in that namespace and goes with it; the
 * parent deletes the namespace and the pins whatever happens here.
 *
 * Topology (all in the one namespace):
 *
 *   in0 (UDP ingress)  ─┐                            ┌─ out0 ══ out1 [sink]
 *   xc0 (x-connect in) ─┼─ xdpctl / minimal redirect ┤
 *                       └─ or XDP_PASS → the stack ──┘  (DNAT+route, tc mirred)
 *   bx0 ─ br0 (Linux bridge) ─ ob0 ══ ob1 [sink]
 *
 * The sink is one XDP program (base_sink: count IPv4 UDP, drop) attached
 * natively to out1 and ob1, so every path is counted by the same receiver
 * and the veths have NAPI (docs/kernel-notes.md, trap 3). Prints one JSON object.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';

import { fillRing } from '../src/server/core/ring.js';
import { BpfMap, mapInfo } from '../src/server/dataplane/bpf-map.js';
import { BpfObject, liveFramesRefusal, testRunTimed } from '../src/server/dataplane/bpf-object.js';
import { AF_INET, IPPROTO_UDP, NO_BACKEND, RING_SIZE, u32, u64 } from '../src/server/dataplane/codec.js';
import { check, lib } from '../src/server/dataplane/libbpf.js';
import { XdpDatapath } from '../src/server/dataplane/datapath.js';
import { ifindexOf } from '../src/server/dataplane/netdev.js';
import { connectDirection, publishMatches, writeRuleSlot } from '../src/server/dataplane/tables.js';
import { attachXdp } from '../src/server/dataplane/xdp.js';
import { ipBytes, macBytes, udpFrame } from '../test/helpers/packets.js';

/** What the parent asks for. */
export interface LiveWorkerArgs {
  pinRoot: string;
  /** Frames per test run. */
  repeat: number;
  runs: number;
  objectPath?: string;
}

/** One measured path: a rate per run. */
export interface LiveSeries {
  name: string;
  /** Frames delivered to the sink per second of test run, millions. */
  mpps: number[];
  /** Frames offered per second, millions (what the test run pushed). */
  offeredMpps: number[];
  /** delivered / sent per run. */
  deliveredShare: number[];
}

/** The worker's JSON output. */
export interface LiveWorkerResult {
  series: LiveSeries[];
  /** Set when the kernel refuses live frames ({@link liveFramesRefusal}): its answer; `series` is empty. */
  refused?: string;
  /** Frames the sink saw that were not IPv4 UDP (noise: should be ~0). */
  otherFrames: number;
}

const ROOT = new URL('..', import.meta.url).pathname;
const UDP_PORT = 7999;
const BACKEND_IP = '198.18.4.1';

const ip = (...a: string[]) => execFileSync('ip', a, { stdio: ['ignore', 'ignore', 'pipe'] });
const sysctl = (key: string, v: string) => writeFileSync(`/proc/sys/${key.replaceAll('.', '/')}`, v);
/** A device's MAC from iproute2: /sys/class/net still shows the root namespace under nsenter. */
const macOf = (dev: string) =>
  (JSON.parse(execFileSync('ip', ['-j', 'link', 'show', 'dev', dev], { encoding: 'utf8' })) as { address: string }[])[0]
    .address;
const sleepMs = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

function setupTopology(): void {
  sysctl('net.ipv6.conf.all.disable_ipv6', '1');
  sysctl('net.ipv6.conf.default.disable_ipv6', '1');
  ip('link', 'set', 'lo', 'up');
  for (const [a, b] of [
    ['in0', 'in1'],
    ['xc0', 'xc1'],
    ['bx0', 'bx1'],
    ['out0', 'out1'],
    ['ob0', 'ob1'],
  ]) {
    ip('link', 'add', a, 'type', 'veth', 'peer', 'name', b);
    ip('link', 'set', a, 'up');
    ip('link', 'set', b, 'up');
  }
  // The stack's UDP path: route 198.18.9.9:7999 -> DNAT -> backend via out0.
  sysctl('net.ipv4.ip_forward', '1');
  for (const dev of ['all', 'default', 'in0', 'out0']) sysctl(`net.ipv4.conf.${dev}.rp_filter`, '0');
  ip('addr', 'add', '198.18.1.254/24', 'dev', 'in0');
  ip('addr', 'add', '198.18.4.254/24', 'dev', 'out0');
  ip('neigh', 'replace', BACKEND_IP, 'lladdr', macOf('out1'), 'dev', 'out0', 'nud', 'permanent');
  execFileSync('nft', ['-f', '-'], {
    input: `table ip xbench {
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
    iif "in0" udp dport ${UDP_PORT} dnat to ${BACKEND_IP}
  }
}
`,
  });
  // The stack's cross-connect, twice: a tc mirred redirect xc0 -> out0, and
  // a Linux bridge bx0 <-> ob0.
  execFileSync('tc', ['qdisc', 'add', 'dev', 'xc0', 'clsact']);
  execFileSync('tc', [
    'filter',
    'add',
    'dev',
    'xc0',
    'ingress',
    'u32', // matchall is not built into this kernel; u32 matching nothing-in-particular is
    'match',
    'u32',
    '0',
    '0',
    'action',
    'mirred',
    'egress',
    'redirect',
    'dev',
    'out0',
  ]);
  ip('link', 'add', 'br0', 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0');
  ip('link', 'set', 'bx0', 'master', 'br0');
  ip('link', 'set', 'ob0', 'master', 'br0');
  ip('link', 'set', 'br0', 'up');
}

function main(): void {
  const args = JSON.parse(process.argv[2]) as LiveWorkerArgs;
  const base = BpfObject.load(`${ROOT}build/bpf/baseline.bpf.o`);
  // A kernel that refuses live frames to every caller: said, nothing measured (no series can be had).
  const refused = liveFramesRefusal(base.progFd('base_pass'));
  if (refused) {
    base.close();
    const out: LiveWorkerResult = { series: [], refused, otherFrames: 0 };
    process.stdout.write(JSON.stringify(out));
    return;
  }
  setupTopology();
  const dp = XdpDatapath.open({
    objectPath: args.objectPath ?? `${ROOT}build/bpf/xdpctl.bpf.o`,
    pinRoot: args.pinRoot,
    capacity: { ruleSlots: 16, statsIds: 16, backends: 64, matches: 64 },
  });
  try {
    const sink = base.progFd('base_sink');
    for (const dev of ['out1', 'ob1']) attachXdp(ifindexOf(dev), dev, sink, 'native', () => false);
    const sinkFd = base.mapFd('sink_rx');
    const rx = new BpfMap(mapInfo(sinkFd, 'sink_rx'), sinkFd, u32, u64, false);
    const count = (key: number) => (rx.getPerCpu(key) ?? []).reduce((a, b) => a + b, 0n);

    const idx = Object.fromEntries(['in0', 'xc0', 'bx0', 'out0'].map((d) => [d, ifindexOf(d)]));
    base.putU32('base_tx', 0, idx.out0);
    // xdpctl programmed through the dataplane's own table writers.
    writeRuleSlot(dp.maps, {
      slot: 1,
      statsId: 1,
      flags: 0,
      srcPrefixes: [],
      ring: fillRing([{ key: BACKEND_IP, weight: 1, value: 1 }], RING_SIZE, NO_BACKEND),
      backends: [
        [
          1,
          {
            dmac: macBytes(macOf('out1')),
            smac: macBytes(macOf('out0')),
            ifindex: idx.out0,
            statsId: 1,
            family: AF_INET,
            addr: ipBytes(BACKEND_IP),
          },
        ],
      ],
    });
    publishMatches(
      dp.maps,
      [{ ifindex: idx.in0, dport: UDP_PORT, proto: IPPROTO_UDP, family: AF_INET, daddr: new Uint8Array(4) }],
      1,
    );
    connectDirection(dp.maps, idx.xc0, idx.out0);

    const frame = (dmac: string) =>
      udpFrame({
        dmac,
        smac: '02:00:00:00:00:01',
        sip: '198.18.1.1',
        dip: '198.18.9.9',
        sport: 40000,
        dport: UDP_PORT,
      });
    const toRouter = frame(macOf('in0')); // routed: addressed to the ingress
    const passing = frame(macOf('out1')); // cross-connected / bridged: not for us
    // The stack paths are fed by XDP_PASS that restores the injected headers
    // (base_feed): live-frame pages are recycled with whatever the stack
    // wrote into them. Paths with two frames use the same template slot, so
    // they must not share a round: each stack path sets its own before it runs.
    const feed = base.progFd('base_feed');
    const feedThen = base.progFd('base_feed_then');
    const feedFd = base.mapFd('feed_tmpl');
    // base_feed_then restores the headers, then runs the xdpctl program (whose
    // rewrite, TTL included, a recycled page would otherwise inject again).
    {
      const k = Buffer.alloc(4);
      const v = Buffer.alloc(4);
      v.writeUInt32LE(dp.progFd, 0);
      check('update map feed_next', lib.bpf_map_update_elem(base.mapFd('feed_next'), k, v, 0) as number);
    }
    const setFeed = (f: Buffer) => {
      const k = Buffer.alloc(4);
      check('update map feed_tmpl', lib.bpf_map_update_elem(feedFd, k, f.subarray(0, 42), 0) as number);
    };
    const paths: { name: string; prog: number; frame: Buffer; ingress: number }[] = [
      {
        name: 'baseline: minimal bpf_redirect_map',
        prog: base.progFd('base_redirect'),
        frame: passing,
        ingress: idx.xc0,
      },
      { name: 'xdpctl: cross-connect', prog: dp.progFd, frame: passing, ingress: idx.xc0 },
      { name: 'xdpctl: UDP redirect', prog: feedThen, frame: toRouter, ingress: idx.in0 },
      { name: 'Linux stack: UDP, routing + nftables DNAT', prog: feed, frame: toRouter, ingress: idx.in0 },
      { name: 'Linux stack: cross-connect, tc mirred redirect', prog: feed, frame: passing, ingress: idx.xc0 },
      { name: 'Linux stack: cross-connect, bridge', prog: feed, frame: passing, ingress: idx.bx0 },
    ];
    const series = new Map(
      paths.map((p) => [p.name, { name: p.name, mpps: [], offeredMpps: [], deliveredShare: [] } as LiveSeries]),
    );
    const drained = () => {
      let last = -1n;
      let cur = count(0);
      for (let i = 0; i < 100 && cur !== last; i++) {
        sleepMs(2);
        last = cur;
        cur = count(0);
      }
      return cur;
    };
    // Warm-up: conntrack entry, neighbour, bridge FDB, page pools.
    for (const p of paths) {
      if (p.prog === feed || p.prog === feedThen) setFeed(p.frame);
      testRunTimed(p.prog, p.frame, p.ingress, Math.min(args.repeat, 10_000), true);
    }
    drained();
    for (let run = 0; run < args.runs; run++) {
      // Rotate the order so that no path always runs first (or last) in a round.
      for (let k = 0; k < paths.length; k++) {
        const p = paths[(k + run) % paths.length];
        if (p.prog === feed || p.prog === feedThen) setFeed(p.frame);
        const before = drained();
        const r = testRunTimed(p.prog, p.frame, p.ingress, args.repeat, true);
        const delivered = Number(drained() - before);
        const s = series.get(p.name)!;
        s.mpps.push((delivered / r.wallNs) * 1000);
        s.offeredMpps.push((args.repeat / r.wallNs) * 1000);
        s.deliveredShare.push(delivered / args.repeat);
      }
    }
    const out: LiveWorkerResult = { series: [...series.values()], otherFrames: Number(count(1)) };
    process.stdout.write(JSON.stringify(out));
  } finally {
    dp.close();
    base.close();
  }
}

main();
