/**
 * Reads while the reconciler runs, at scale (docs/architecture.md, promise 4): a real
 * xdpctld with RULES rules x BACKENDS backends on IFACES veth interfaces
 * (each rule's ingress one of them, its backends one per interface, shared
 * by every rule; MACs given), made here and removed at the end. It samples
 * the latency of health Check (xdpctl.datapath) and GetRule every 20 ms:
 *   - at rest (the periodic pass every second),
 *   - while the host changes: every backend egress flaps (down/up) in turn,
 *     so each pass rewrites every rule (64 000 backend checks).
 * Prints p50/p99/max per phase. Run it alone on the machine (other load moves
 * the latencies it measures): scripts/with-node node
 * --import tsx bench/reconciler-scale.ts [rules] [backends] [interfaces]
 * XDPCTL_BENCH_CPU_PROF=<dir> runs the daemon under --cpu-prof.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';

import { createChannel, createClient } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';

import { XdpDatapath } from '../src/server/dataplane/datapath.js';
import { Protocol, RuleServiceDefinition, UdpChecksumMode, type Rule } from '../src/gen/xdpctl/v1/rule.js';

const RULES = Number(process.argv[2] ?? 1000);
const BACKENDS = Number(process.argv[3] ?? 64);
const IFACES = Number(process.argv[4] ?? 64);
const id = randomBytes(2).toString('hex');
const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
const stateDir = `/tmp/xdpctl-test-${id}-state`;
const sock = `/tmp/xdpctl-test-${id}.sock`;
const ifs = Array.from({ length: IFACES }, (_, i) => `x${id}s${i}`);
const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: 'utf8', stdio: 'pipe' });
const quiet = (cmd: string, args: string[]) => {
  try {
    sh(cmd, args);
  } catch {
    /* cleanup */
  }
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function cleanup() {
  for (const i of ifs) quiet('ip', ['link', 'del', i]);
  XdpDatapath.unpinAll(pinRoot);
  rmSync(stateDir, { recursive: true, force: true });
  rmSync(sock, { force: true });
}

async function main() {
  // 64 veth pairs in our namespace: x<id>s<i> <-> x<id>t<i>, both up.
  const batch = ifs
    .map((n, i) => `link add ${n} type veth peer name x${id}t${i}\nlink set ${n} up\nlink set x${id}t${i} up\n`)
    .join('');
  execFileSync('ip', ['-batch', '-'], { input: batch });
  const macs = ifs.map((n) => JSON.parse(sh('ip', ['-j', 'link', 'show', `x${id}t${ifs.indexOf(n)}`]))[0].address);
  const prof = process.env.XDPCTL_BENCH_CPU_PROF;
  const child = spawn(
    process.execPath,
    [
      '--max-semi-space-size=2',
      '--disable-sigusr1',
      ...(prof ? ['--cpu-prof', `--cpu-prof-dir=${prof}`] : []),
      'dist/server/main.js',
      '--listen',
      `unix:${sock}`,
      '--pin-root',
      pinRoot,
      '--state-dir',
      stateDir,
      '--max-rules',
      String(Math.max(4096, RULES * 2)),
      '--max-message-bytes',
      String(64 << 20),
      '--log-level',
      'warn',
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  try {
    const t0 = Date.now();
    while (!out.includes('"msg":"ready"')) {
      if (child.exitCode !== null) throw new Error(`xdpctld exited: ${out}`);
      if (Date.now() - t0 > 30_000) throw new Error('not ready');
      await sleep(50);
    }
    const ch = createChannel(`unix://${sock}`, undefined, {
      'grpc.max_send_message_length': 64 << 20,
      'grpc.max_receive_message_length': 64 << 20,
    });
    const rules = createClient(RuleServiceDefinition, ch);
    const health = createClient(HealthDefinition, ch);
    const want: Rule[] = Array.from({ length: RULES }, (_, r) => ({
      name: `r${r}`,
      match: { protocol: Protocol.PROTOCOL_UDP, port: 1000 + r, destination: '', sourcePrefixes: [] },
      ingressInterfaces: [ifs[r % IFACES]],
      backends: Array.from({ length: BACKENDS }, (_, b) => ({
        ip: `10.${(b >> 8) & 255}.${b & 255}.1`,
        mac: macs[b % IFACES],
        interface: ifs[b % IFACES],
        weight: 1,
      })),
      udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
      labels: {},
      generation: 0n,
    }));
    let t = Date.now();
    await rules.applyRules({ rules: want, validateOnly: false });
    console.log(`ApplyRules ${RULES} x ${BACKENDS}: ${Date.now() - t} ms`);
    await sleep(3000);

    const sample = async (phase: string, ms: number, during?: () => Promise<void>) => {
      const hs: number[] = [];
      const gs: number[] = [];
      let stop = false;
      const bg = during ? during().finally(() => (stop = true)) : sleep(ms).then(() => (stop = true));
      const end = Date.now() + ms;
      while (!stop || Date.now() < end) {
        let a = performance.now();
        await health.check({ service: 'xdpctl.datapath' });
        hs.push(performance.now() - a);
        a = performance.now();
        await rules.getRule({ name: `r${gs.length % RULES}` });
        gs.push(performance.now() - a);
        await sleep(20);
        if (stop && Date.now() >= end) break;
      }
      await bg;
      const q = (xs: number[], p: number) =>
        [...xs].sort((x, y) => x - y)[Math.min(xs.length - 1, Math.floor(p * xs.length))];
      const f = (xs: number[]) =>
        `n=${xs.length} p50 ${q(xs, 0.5).toFixed(1)} p99 ${q(xs, 0.99).toFixed(1)} max ${Math.max(...xs).toFixed(1)} ms`;
      console.log(`${phase}: health ${f(hs)}; GetRule ${f(gs)}`);
    };
    await sample('at rest (passes every 1 s)', 10_000);
    await sample('egress flaps (every rule rewritten per pass)', 10_000, async () => {
      for (let k = 0; k < 8; k++) {
        const i = ifs[k % IFACES];
        sh('ip', ['link', 'set', i, 'down']);
        await sleep(600);
        sh('ip', ['link', 'set', i, 'up']);
        await sleep(600);
      }
    });
    t = Date.now();
    const st = await rules.getRule({ name: 'r0' });
    console.log(`r0 ${st.rule?.status?.state} ${st.rule?.status?.message} (${Date.now() - t} ms)`);
    ch.close();
  } finally {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    cleanup();
  }
}

main().catch((e) => {
  console.error(e);
  cleanup();
  process.exit(1);
});
