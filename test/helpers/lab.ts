/**
 * A rule lab for end-to-end tests: a Topology whose client host "vm" sends through our veth (routed to it,
 * Topology.routeToXdp), backend hosts beside it, and a DaemonProcess on the same run id; with the reads and
 * the traffic the tests of rules share. Every name carries the run id (helpers/env.ts runId), and destroy()
 * removes everything the lab and its daemons made, in one after() hook, even when a test failed:
 *
 *   const lab = new Lab();
 *   before(async () => {
 *     ({ vm, b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
 *     ({ d, c } = await lab.start(['--log-level', 'info']));
 *   });
 *   after(() => lab.destroy());
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, readlinkSync, rmSync } from 'node:fs';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { Protocol, RuleState, UdpChecksumMode, type Rule, type RuleStatus } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, type Clients } from './daemon.js';
import { removeIproute2BpffsDirs, runId, sh, shQuiet, sleep, until } from './env.js';
import { Topology, type Host } from './topology.js';
import { sendUdp, UdpListener } from './udp.js';

/** helpers/sealed-netns.py: a namespace only a socket keeps (Lab.addSealedHost). */
export const SEALED = new URL('./sealed-netns.py', import.meta.url).pathname;

/** The address vm sends to: nobody has it; the datapath redirects the datagrams before any route is looked up. */
export const NOWHERE = '198.18.9.9';

/** A rule's backend as the API takes it (without the weight, which the lab's rules give as 1). */
export interface BackendSpec {
  ip: string;
  mac: string;
  interface: string;
}

/** `h` as a backend: its address and host-side veth, with `mac` (h's own by default; '' for a MAC-less one). */
export const backendOf = (h: Host, mac = h.mac, iface = h.hostIf): BackendSpec => ({
  ip: h.ip!,
  mac,
  interface: iface,
});

/** A UDP rule on `port` from the `ingress` interfaces to `backends` (weight 1 each), UDP checksums zeroed. */
export const udpRule = (name: string, port: number, ingress: string[], backends: BackendSpec[]): Rule => ({
  name,
  match: { protocol: Protocol.PROTOCOL_UDP, port, destination: '', sourcePrefixes: [] },
  ingressInterfaces: ingress,
  backends: backends.map((b) => ({ ...b, weight: 1 })),
  udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
  labels: {},
  generation: 0n,
});

/**
 * A UDP rule on `port` from the `ingress` interfaces to `backends` as the API's defaults take it: no weight (1),
 * checksum mode unset (updated; a partial one completed in native mode).
 */
export const apiUdpRule = (
  name: string,
  port: number,
  ingress: string[],
  backends: BackendSpec[],
  labels: Record<string, string> = {},
): Rule => ({
  name,
  match: { protocol: Protocol.PROTOCOL_UDP, port, destination: '', sourcePrefixes: [] },
  ingressInterfaces: ingress,
  backends,
  udpChecksum: 0,
  labels,
  generation: 0n,
});

/** Where datagrams are received: a Host, or an UnnamedHost (`netns` a path). */
export type Receiver = Pick<Host, 'netns' | 'ip'>;

/** A host in a namespace with no name, which only a process holds (as a container's): Lab.addUnnamedHost. */
export interface UnnamedHost {
  /** /proc/PID/ns/net (what UdpListener.start and nsenter take). */
  netns: string;
  /** The process holding it. */
  pid: number;
  /** The veth end in the test's namespace. */
  hostIf: string;
  ip: string;
  /** Run a shell command in the namespace. */
  sh(cmd: string): string;
  /** Kill the process (the namespace goes with it) and delete the veth; idempotent. */
  remove(): void;
}

/** A network namespace only a socket keeps (helpers/sealed-netns.py): what xdpctld has no file to enter by. */
export interface SealedNetns {
  /** "sealed:PID:FD": what UdpListener.start takes to receive there (from outside it). */
  netns: string;
  /** The process holding the socket (outside the namespace). */
  pid: number;
  /** Run a shell command inside it (a process is in it while the command runs). */
  sh(cmd: string): string;
  /** A veth `here` in this namespace, its peer `there` in that one (down, as made). */
  addVeth(here: string, there: string): void;
  /** Move device `dev` of the namespace named `from` (/run/netns; this one when omitted) into it. */
  moveIn(dev: string, from?: string): void;
  /** Kill the holder: the namespace goes with it (idempotent). */
  kill(): void;
}

/**
 * A process in a network namespace of its own, as a container runtime's (`unshare --net sleep SECONDS`), and a
 * promise settled once it is in it and runs sleep (its /proc/PID/ns/net another namespace than ours). The caller
 * kills it (the namespace goes with it unless something else keeps it).
 */
export function unsharedProcess(seconds = 600): { proc: ChildProcess; ready: Promise<void> } {
  const proc = spawn('unshare', ['--net', 'sleep', String(seconds)], { stdio: 'ignore' });
  const ownNs = readlinkSync('/proc/self/ns/net');
  const ready = until(`unshare (pid ${proc.pid}) in a namespace of its own`, () => {
    try {
      return (
        readlinkSync(`/proc/${proc.pid}/ns/net`) !== ownNs &&
        readFileSync(`/proc/${proc.pid}/comm`, 'utf8').trim() === 'sleep'
      );
    } catch {
      return false;
    }
  });
  return { proc, ready };
}

/** A {@link SealedNetns}; the caller kills it (and deletes the veths it made). */
export async function sealedNetns(): Promise<SealedNetns> {
  const holder = spawn('python3', [SEALED, 'hold'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const fd = await new Promise<string>((resolve, reject) => {
    let out = '';
    holder.stdout!.on('data', (d) => {
      out += d;
      const m = /READY (\d+)\n/.exec(out);
      if (m) resolve(m[1]);
    });
    holder.on('exit', (code) => reject(new Error(`sealed-netns hold exited ${code}`)));
  });
  const pid = String(holder.pid);
  const inNs = (cmd: string) => sh('python3', [SEALED, 'run', pid, fd, 'sh', '-c', cmd]);
  const moveIn = (dev: string, from?: string) =>
    sh(from === undefined ? 'python3' : 'ip', [
      ...(from === undefined ? [] : ['netns', 'exec', from, 'python3']),
      SEALED,
      'move',
      pid,
      fd,
      dev,
    ]);
  return {
    netns: `sealed:${pid}:${fd}`,
    pid: holder.pid!,
    sh: inNs,
    addVeth: (here, there) => {
      const tmp = `${here.slice(0, 11)}tmp`;
      sh('ip', ['link', 'add', here, 'type', 'veth', 'peer', 'name', tmp]);
      moveIn(tmp);
      inNs(`ip link set ${tmp} name ${there}`);
      sh('ip', ['link', 'set', here, 'up']);
    },
    moveIn,
    kill: () => {
      if (holder.exitCode === null && holder.signalCode === null) holder.kill();
    },
  };
}

/**
 * Another tool moves our program on `dev` from native to generic mode: detached and the daemon's pinned program
 * attached in generic mode, in one `ip -batch` (a pass between two commands would attach ours natively again,
 * and the kernel refuse the generic attach: tried again 2.5 s later, at most 3 times). Returns the length of
 * `d.output` just before the batch that succeeded (the daemon's lines about the move follow it).
 */
export async function moveToGenericMode(d: DaemonProcess, dev: string): Promise<number> {
  const progPin = XdpDatapath.progPinPath(d.pinRoot);
  for (let attempt = 1; ; attempt++) {
    const from = d.output.length;
    try {
      sh('ip', ['-batch', '-'], {
        input: `link set dev ${dev} xdp off\nlink set dev ${dev} xdpgeneric pinned ${progPin}\n`,
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      return from;
    } catch (e) {
      if (attempt === 3) throw e;
      await sleep(2500);
    }
  }
}

/** `x` escaped for a RegExp. */
export const esc = (x: string) => x.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** A rule status's condition of `type`. */
export const cond = (st: RuleStatus, type: string) => st.conditions.find((x) => x.type === type)!;

export class Lab {
  readonly id = runId();
  readonly topo = new Topology(this.id);
  /** Listeners to kill at destroy() (a test that failed before stopping them). */
  readonly listeners: UdpListener[] = [];
  /** The daemon the last start() started (undefined before). */
  d: DaemonProcess | undefined;
  /** Clients of that daemon. */
  c!: Clients;
  private readonly cleanups: (() => void)[] = [];

  /**
   * Hosts by role with their addresses (Topology.addHost), made in this order; "vm", if among them, is routed
   * to our veth (the client every test sends from) unless `routeVm` is false.
   */
  addHosts<K extends string>(cidrs: Record<K, string>, { routeVm = true } = {}): Record<K, Host> {
    const out = {} as Record<K, Host>;
    for (const [role, cidr] of Object.entries(cidrs) as [K, string][]) out[role] = this.topo.addHost(role, cidr);
    if (routeVm && 'vm' in out) this.topo.routeToXdp('vm');
    return out;
  }

  /**
   * A host in a namespace that only a process holds: veth `hostIf` here, eth0 there with `cidr` (and `mac`), up
   * with GRO switched on while up (NAPI: the kernel announces ndo-xmit for our side). Removed at destroy(), or
   * before by its remove().
   */
  async addUnnamedHost(hostIf: string, cidr: string, mac = ''): Promise<UnnamedHost> {
    const { proc: ns, ready } = unsharedProcess();
    const remove = () => {
      ns.kill();
      shQuiet('ip', ['link', 'del', hostIf]);
    };
    this.cleanups.push(remove);
    await ready;
    const pid = String(ns.pid);
    const inNs = (cmd: string) => sh('nsenter', ['-t', pid, '-n', 'sh', '-c', cmd]);
    sh('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', pid]);
    sh('ip', ['link', 'set', hostIf, 'up']);
    inNs(
      `ip link set lo up && ${mac ? `ip link set eth0 address ${mac} && ` : ''}ip addr add ${cidr} dev eth0 && ` +
        'ip link set eth0 up && ethtool -K eth0 gro on',
    );
    return { netns: `/proc/${pid}/ns/net`, pid: ns.pid!, hostIf, ip: cidr.split('/')[0], sh: inNs, remove };
  }

  /**
   * A host in a namespace that nothing xdpctld can enter keeps: no name, no bind mount, no process in it, no open
   * namespace file; only a socket made in it, held by a process outside it (helpers/sealed-netns.py). Veth
   * `hostIf` here, eth0 there with `cidr` (and `mac`), up with GRO switched on while up. Its `netns` is
   * "sealed:PID:FD" (UdpListener.start receives there from outside it); `sh` runs a command inside it (a
   * process in it while that command runs). Removed at destroy(), or before by its remove().
   */
  async addSealedHost(hostIf: string, cidr: string, mac = ''): Promise<UnnamedHost> {
    const ns = await sealedNetns();
    const remove = () => {
      ns.kill();
      shQuiet('ip', ['link', 'del', hostIf]);
    };
    this.cleanups.push(remove);
    ns.addVeth(hostIf, 'eth0');
    ns.sh(
      `ip link set lo up && ${mac ? `ip link set eth0 address ${mac} && ` : ''}` +
        `ip addr add ${cidr} dev eth0 && ip link set eth0 up && ethtool -K eth0 gro on`,
    );
    return { netns: ns.netns, pid: ns.pid, hostIf, ip: cidr.split('/')[0], sh: ns.sh, remove };
  }

  /** The client host "vm". */
  get vm(): Host {
    return this.topo.host('vm');
  }

  /**
   * Start a daemon on the lab's id (pins, socket and state dir of DaemonProcess.start) with `extra` arguments
   * and `env`; it becomes `d`.
   */
  async start(
    extra: string[] = ['--log-level', 'info'],
    env: NodeJS.ProcessEnv = {},
  ): Promise<{ d: DaemonProcess; c: Clients }> {
    const d = await DaemonProcess.start(this.id, extra, env);
    this.d = d;
    this.c = d.clients();
    return { d, c: this.c };
  }

  /** `fn` runs at destroy(), after the daemon is gone and before the hosts are removed (links a test made). */
  onDestroy(fn: () => void): void {
    this.cleanups.push(fn);
  }

  /** Remove everything: listeners, the daemon, what onDestroy() names, the hosts, pins, state dir (idempotent). */
  async destroy(): Promise<void> {
    this.listeners.forEach((l) => l.kill());
    await this.d?.destroy();
    for (const fn of this.cleanups) fn();
    this.topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${this.id}`);
    rmSync(`/tmp/xdpctl-test-${this.id}-state`, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  }

  // The helpers below are bound (arrow functions): a test file may take them out, `const { status } = lab`.

  /** A UDP rule on `port` from `ingress` (vm's veth) to `backends` (weight 1 each), UDP checksums zeroed. */
  readonly rule = (name: string, port: number, backends: BackendSpec[], ingress = [this.vm.hostIf]): Rule =>
    udpRule(name, port, ingress, backends);

  readonly status = async (name: string) => (await this.c.rules.getRule({ name })).rule!.status!;
  /** Waits up to `ms` for rule `name` to be ACTIVE (GetRule's status). */
  /** Until rule `name` is ACTIVE; a timeout says the state, message and backend messages it had last. */
  readonly untilActive = (name: string, ms = 10_000) =>
    until(
      async () => {
        const r = await this.status(name);
        return `${name} ACTIVE; last ${RuleState[r.state]}: ${r.message} [${r.backendStatus.map((b) => b.message).join('; ')}]`;
      },
      async () => (await this.status(name)).state === RuleState.RULE_STATE_ACTIVE,
      ms,
    );
  readonly health = async (service = 'xdpctl.datapath') => (await this.c.health.check({ service })).status;
  /** A UDP rule on `port` from vm's veth to `backends` as the API's defaults take it: no weight, checksum mode unset. */
  readonly apiRule = (name: string, port: number, backends: BackendSpec[], labels: Record<string, string> = {}): Rule =>
    apiUdpRule(name, port, [this.vm.hostIf], backends, labels);
  /** The status of the link whose side a is `a`. */
  readonly linkStatus = async (a: string) => (await this.c.links.listLinks({})).links.find((x) => x.a === a)!.status!;
  /** The redirect errors counted for rule `rule`'s backend `ip`. */
  readonly redirectErrors = async (rule: string, ip: string) => {
    const { counters } = await this.c.counters.getCounters({ filter: { rules: [rule] } });
    return counters!.backends.find((b) => b.ip === ip)?.redirectErrorPackets ?? 0n;
  };
  /** How many lines of the daemon's output match `re`. */
  readonly count = (re: RegExp) => this.d!.output.split('\n').filter((l) => re.test(l)).length;

  /**
   * Send `n` datagrams (of `size` bytes of payload, 0: the tool's default) over `flows` flows from vm to `port`
   * (to NOWHERE); how many each of `to` received on its address, read `settle` ms after the last was sent
   * (`started`: listeners already started, in the order of `to`).
   */
  readonly send = async (
    port: number,
    to: Receiver[],
    n: number,
    flows: number,
    { started, size, settle = 150 }: { started?: UdpListener[]; size?: number; settle?: number } = {},
  ) => {
    const ls = started ?? (await Promise.all(to.map((b) => UdpListener.start(b.netns, b.ip!, port))));
    this.listeners.push(...ls);
    const { sent } = await sendUdp(this.vm.netns, NOWHERE, port, n, { flows, size }).done;
    await sleep(settle);
    const got = await Promise.all(ls.map(async (l) => (await l.stop()).unique));
    return { sent, got, total: got.reduce((a, b) => a + b, 0) };
  };

  /**
   * 100 datagrams a second to `port` for `seconds` from vm over 10 flows, received by `h`: call, change what is
   * under test, then await the function returned for what was sent and received.
   */
  readonly stream = async (h: Host, port: number, seconds: number) => {
    const l = await UdpListener.start(h.netns, h.ip!, port);
    this.listeners.push(l);
    const tx = sendUdp(this.vm.netns, NOWHERE, port, seconds * 100, { flows: 10, perTick: 1, tickMs: 10 });
    return async () => {
      const { sent } = await tx.done;
      await sleep(150);
      const r = await l.stop();
      return { sent, got: r.unique, seqs: r.seqs };
    };
  };

  /** A MAC nobody has, unique to this run (`last`: its last byte, in hex). */
  readonly mac = (last: string): string => `02:16:3e:${this.id.slice(0, 2)}:${this.id.slice(2, 4)}:${last}`;

  /** Another tool writes `mac` into `h`'s neighbour entry on our side with state `nud` (e.g. "reachable"). */
  readonly writeEntry = (h: Host, mac: string, nud: string): void =>
    void sh('ip', ['neigh', 'replace', h.ip!, 'lladdr', mac, 'dev', h.hostIf, 'nud', nud]);

  /** `h`'s entry removed if it still holds `mac` (a failed test), so that the kernel resolves the right one. */
  readonly dropEntry = (h: Host, mac: string): void => {
    if (sh('ip', ['neigh', 'show', h.ip!, 'dev', h.hostIf]).includes(mac))
      shQuiet('ip', ['neigh', 'del', h.ip!, 'dev', h.hostIf]);
  };
}
