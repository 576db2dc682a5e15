/**
 * The reconciler at rest forks no process per backend: with 200 backends given without MAC (`IP,,iface`) a pass
 * reads all their neighbour entries in one RTM_GETNEIGH dump. It forked `ip -j -s neigh show to IP dev DEV` for
 * each of them at every pass (a review measured 236 forks/s with 200 such backends).
 *
 * The daemon's forks are counted by the kernel, whatever it runs and however (a PATH wrapper would miss a
 * program run by its full path, or a fork from native code): the sched_process_fork tracepoint filtered on the
 * daemon's pid, in tracefs instances of the test's own (the host's trace buffer and its settings untouched),
 * with sched_process_exec to name what each child ran. 10 s at rest may see at most 40: the one ingress's
 * device-settings check forks whatever the backends (`ip` three times and `nsenter ... ethtool -k` twice every
 * 2 s: 25 in 10 s here); one process per backend per pass, brought back by a scratch revert of the dump, was
 * 799 in 10 s here. A rule of 48 static-MAC backends on the same egresses is there too (their MACs are
 * verified at every pass as well).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { Protocol, RuleState, UdpChecksumMode, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sh, sleep, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';

const TRACING = '/sys/kernel/tracing';
/** Egresses, and backends given without MAC on each (one rule each: at most 64 backends per rule). */
const EGRESSES = 4;
const PER_EGRESS = 50;
/** Backends given with a MAC on each egress too (one more rule): their MACs are verified against the same table. */
const STATIC_PER_EGRESS = 12;
/**
 * How long the daemon is watched at rest, and the forks it may make meanwhile: 4 a second, for what forks per
 * ingress interface (its device-settings check every 2 s: 5 processes), not per backend.
 */
const WATCH_MS = 10_000;
const MAX_FORKS = (4 * WATCH_MS) / 1000;

describe('reconciler at rest: no process forked per backend', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const forks = `${TRACING}/instances/xdpctl-test-${id}-forks`;
  const execs = `${TRACING}/instances/xdpctl-test-${id}-execs`;
  let d: DaemonProcess | undefined;
  let vm: Host;
  const egresses: Host[] = [];
  /** Backend i of egress e: 198.18.(10+e).(10+i), an address of that host. */
  const backendIp = (e: number, i: number) => `198.18.${10 + e}.${10 + i}`;
  /** Static-MAC backend i of egress e: 198.18.(10+e).(100+i). */
  const staticIp = (e: number, i: number) => `198.18.${10 + e}.${100 + i}`;

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    for (let e = 0; e < EGRESSES; e++) {
      const h = topo.addHost(`b${e}`, `${backendIp(e, 0)}/24`);
      // Every backend's address answers ARP on that host: their neighbour entries resolve, the rules go ACTIVE.
      const batch = [
        ...Array.from({ length: PER_EGRESS - 1 }, (_, i) => `addr add ${backendIp(e, i + 1)}/24 dev eth0`),
        ...Array.from({ length: STATIC_PER_EGRESS }, (_, i) => `addr add ${staticIp(e, i)}/24 dev eth0`),
      ];
      sh('ip', ['-n', h.netns, '-batch', '-'], { input: `${batch.join('\n')}\n`, stdio: ['pipe', 'pipe', 'pipe'] });
      egresses.push(h);
    }
    // Backend slots for every rule twice over: a rule re-applied takes its new entries before it frees the old.
    d = await DaemonProcess.start(id, ['--log-level', 'info', '--xdp-mode', 'generic', '--max-rules', '64']);
  });
  after(async () => {
    for (const i of [forks, execs]) {
      if (!existsSync(i)) continue;
      writeFileSync(`${i}/events/enable`, '0');
      rmdirSync(i);
    }
    await d?.destroy();
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  const rule = (e: number): Rule => ({
    name: `r${e}`,
    match: { protocol: Protocol.PROTOCOL_UDP, port: 7000 + e, destination: '', sourcePrefixes: [] },
    ingressInterfaces: [vm.hostIf],
    backends: Array.from({ length: PER_EGRESS }, (_, i) => ({
      ip: backendIp(e, i),
      mac: '', // from the neighbour table: read at every pass
      interface: egresses[e].hostIf,
      weight: 1,
    })),
    udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
    labels: {},
    generation: 0n,
  });

  const staticRule = (): Rule => ({
    ...rule(0),
    name: 'static',
    match: { protocol: Protocol.PROTOCOL_UDP, port: 7100, destination: '', sourcePrefixes: [] },
    backends: egresses.flatMap((h, e) =>
      Array.from({ length: STATIC_PER_EGRESS }, (_, i) => ({
        ip: staticIp(e, i),
        mac: h.mac,
        interface: h.hostIf,
        weight: 1,
      })),
    ),
  });

  it(`${EGRESSES * PER_EGRESS} backends without MAC, ${WATCH_MS / 1000} s at rest: at most ${MAX_FORKS} forks`, async (t) => {
    assert.ok(existsSync(`${TRACING}/instances`), `tracefs is not mounted at ${TRACING}`);
    const c = d!.clients();
    for (let e = 0; e < EGRESSES; e++) await c.rules.createRule({ rule: rule(e) });
    await c.rules.createRule({ rule: staticRule() });
    // At rest: every backend's MAC known (the rules ACTIVE), the passes that followed the changes done.
    const states = async () => (await c.rules.listRules({})).rules.map((r) => `${r.name}: ${r.status?.message}`);
    await until(
      async () => `not all ACTIVE: ${(await states()).join('; ')}`,
      async () => (await c.rules.listRules({})).rules.every((r) => r.status?.state === RuleState.RULE_STATE_ACTIVE),
      30_000,
    );
    await sleep(1000);

    // Two instances: the forks of the daemon (filtered: a few events, never overwritten), and every exec of
    // the host (only to name what the children ran: a busy host may overwrite some of those).
    const pid = d!.child.pid!;
    for (const i of [forks, execs]) mkdirSync(i);
    writeFileSync(`${forks}/events/sched/sched_process_fork/filter`, `parent_pid == ${pid}`);
    writeFileSync(`${forks}/events/sched/sched_process_fork/enable`, '1');
    writeFileSync(`${execs}/buffer_size_kb`, '1024');
    writeFileSync(`${execs}/events/sched/sched_process_exec/enable`, '1');
    await sleep(WATCH_MS);
    for (const i of [forks, execs]) writeFileSync(`${i}/events/enable`, '0');
    const [trace, execTrace] = [forks, execs].map((i) => readFileSync(`${i}/trace`, 'utf8').split('\n'));
    for (const i of [forks, execs]) rmdirSync(i);

    const children = new Set<number>();
    for (const l of trace) {
      const m = / sched_process_fork: .* pid=(\d+) child_comm=.* child_pid=(\d+)/.exec(l);
      if (m && Number(m[1]) === pid) children.add(Number(m[2]));
    }
    const ran = new Map<string, number>();
    for (const l of execTrace) {
      const m = / sched_process_exec: filename=(\S+) pid=(\d+)/.exec(l);
      if (m && children.has(Number(m[2]))) ran.set(m[1], (ran.get(m[1]) ?? 0) + 1);
    }
    const lost = trace.find((l) => /LOST|entries-in-buffer\/entries-written: (\d+)\/(?!\1\b)/.test(l));
    t.diagnostic(`${children.size} forks in ${WATCH_MS} ms; ran: ${JSON.stringify(Object.fromEntries(ran))}`);
    assert.equal(lost, undefined, `the trace lost events: ${lost}`);
    assert.ok(
      children.size <= MAX_FORKS,
      `${children.size} forks in ${WATCH_MS / 1000} s at rest (at most ${MAX_FORKS}); ran: ${JSON.stringify(Object.fromEntries(ran))}`,
    );
  });
});
