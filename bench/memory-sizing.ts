/**
 * What a memory limit must cover (the DaemonSet's `limits.memory`, docs/deployment.md "Memory"): a real
 * xdpctld on its default capacity flags (--max-rules, --max-watch-streams) in a memory cgroup of its own,
 * whose usage is what a container's limit counts (RSS, the kernel memory of its BPF maps, which kernels
 * since 5.11 charge to the cgroup that creates them, and page cache). Phases, each read as the cgroup's
 * usage and the daemon's RSS:
 *   1. at rest after SERVING with 0 rules;
 *   2. 30 s after ApplyRules of RULES rules × 4 backends (default: the default --max-rules, 4096);
 *   3. with STREAMS WatchCounters streams at 1 s from one identity (default: --max-watch-streams' default,
 *      256), full samples (the larger kind), for 30 s; the cgroup's peak over the whole run.
 *
 *   scripts/with-node node --import tsx bench/memory-sizing.ts [RULES] [STREAMS[,STREAMS...]]
 *
 * Needs root and a memory cgroup (v1 or v2) to make a child in; removes everything it made.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmdirSync, rmSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

import { createChannel, createClient } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';

import { RuleServiceDefinition } from '../src/gen/xdpctl/v1/rule.js';
import { XdpDatapath } from '../src/server/dataplane/datapath.js';
import { DAEMON_NODE_FLAGS } from '../test/helpers/env.js';
import { Topology } from '../test/helpers/topology.js';
import { benchNet, ruleSet } from './control.js';

const ROOT = new URL('..', import.meta.url).pathname;
const RULES = Number(process.argv[2] ?? 4096);
const STREAMS = (process.argv[3] ?? '256').split(',').map(Number);
const MB = 1e6;

/** This process's memory cgroup directory (v1 "memory" hierarchy or v2 unified). */
function ownMemoryCgroup(): { dir: string; usage: string; peak: string } {
  const lines = readFileSync('/proc/self/cgroup', 'utf8').trim().split('\n');
  const v1 = lines.find((l) => /^\d+:([^:]*,)?memory(,[^:]*)?:/.test(l));
  if (v1 && existsSync('/sys/fs/cgroup/memory')) {
    return {
      dir: `/sys/fs/cgroup/memory${v1.split(':')[2]}`,
      usage: 'memory.usage_in_bytes',
      peak: 'memory.max_usage_in_bytes',
    };
  }
  const v2 = lines.find((l) => l.startsWith('0::'))!;
  return { dir: `/sys/fs/cgroup${v2.slice(3)}`, usage: 'memory.current', peak: 'memory.peak' };
}

const rssOf = (pid: number) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * 1e3;

async function main() {
  const id = randomBytes(2).toString('hex');
  const cg = ownMemoryCgroup();
  const dir = `${cg.dir}/xdpctl-mem-${id}`;
  const read = (f: string) => Number(readFileSync(`${dir}/${f}`, 'utf8'));
  const pinRoot = `/sys/fs/bpf/xdpctl-mem-${id}`;
  const stateDir = `/tmp/xdpctl-mem-${id}-state`;
  const sock = `/tmp/xdpctl-mem-${id}.sock`;
  const topo = new Topology(`m${id}`);
  let daemon: ChildProcess | undefined;
  let watchers: ChildProcess | undefined;
  try {
    mkdirSync(dir);
    const net = benchNet(topo);
    // The daemon joins the cgroup before it starts, so its maps are charged there.
    const argv = [
      ...DAEMON_NODE_FLAGS,
      `${ROOT}dist/server/main.js`,
      ...['--listen', `unix:${sock}`, '--pin-root', pinRoot, '--state-dir', stateDir, '--log-level', 'warn'],
      ...['--prometheus', '127.0.0.1:0'],
    ];
    daemon = spawn('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', dir, process.execPath, ...argv], {
      cwd: ROOT,
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    const ch = createChannel(`unix://${sock}`, undefined, {
      'grpc.max_receive_message_length': 256 << 20,
      'grpc.max_send_message_length': 256 << 20,
    });
    const health = createClient(HealthDefinition, ch);
    for (;;) {
      if (daemon.exitCode !== null) throw new Error(`xdpctld exited ${daemon.exitCode}`);
      try {
        if ((await health.check({ service: '' })).status === 1) break;
      } catch {
        /* not yet */
      }
      await sleep(50);
    }
    const pid = daemon.pid!;
    const row = (what: string) =>
      console.log(
        `${what}: cgroup ${(read(cg.usage) / MB).toFixed(0)} MB (peak so far ${(read(cg.peak) / MB).toFixed(0)}), ` +
          `RSS ${(rssOf(pid) / MB).toFixed(0)} MB`,
      );
    await sleep(30_000);
    row('0 rules, 30 s after SERVING');
    await createClient(RuleServiceDefinition, ch).applyRules({ rules: ruleSet(net, RULES) });
    await sleep(30_000);
    row(`${RULES} rules, 30 s after ApplyRules`);
    for (const streams of STREAMS) {
      const w = spawn(
        process.execPath,
        ['--import', 'tsx', `${ROOT}bench/cp-watchers.ts`, `unix:${sock}`, String(streams), '1000'],
        { cwd: ROOT, stdio: ['pipe', 'pipe', 'inherit'] },
      );
      watchers = w;
      let out = '';
      w.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      const t0 = Date.now();
      while (!out.includes('"ready"') && Date.now() - t0 < 120_000) {
        if (w.exitCode !== null) throw new Error(`watchers exited ${w.exitCode}`);
        await sleep(200);
      }
      const ready = out.includes('"ready"');
      let maxRss = 0;
      for (let s = 0; s < 30; s++) {
        await sleep(1000);
        maxRss = Math.max(maxRss, rssOf(pid));
      }
      w.stdin!.write('stats\n');
      await sleep(500);
      row(
        `${RULES} rules + ${streams} streams at 1 s (${ready ? `all first messages in ${Date.now() - t0 - 30_500} ms` : 'NOT all streams had a first message after 120 s'}), 30 s later`,
      );
      console.log(
        `  peak RSS over those 30 s ${(maxRss / MB).toFixed(0)} MB; watchers ${out.trim().split('\n').pop()}`,
      );
      w.kill('SIGTERM');
      await new Promise((r) => (w.exitCode !== null ? r(0) : w.once('exit', r)));
      await sleep(20_000);
      row(`${RULES} rules, 20 s after the ${streams} streams closed`);
    }
    ch.close();
  } finally {
    watchers?.kill('SIGTERM');
    if (daemon && daemon.exitCode === null) {
      const d = daemon;
      d.kill('SIGTERM');
      await new Promise((r) => d.once('exit', r));
    }
    XdpDatapath.unpinAll(pinRoot);
    rmSync(stateDir, { recursive: true, force: true });
    rmSync(sock, { force: true });
    topo.destroy();
    for (let i = 0; i < 50 && existsSync(dir); i++) {
      try {
        rmdirSync(dir);
      } catch {
        await sleep(100); // the exited daemon leaves the cgroup a moment later
      }
    }
    if (existsSync(dir)) console.error(`left behind: ${dir}`);
  }
}

await main();
