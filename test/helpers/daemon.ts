/**
 * A real xdpctld process for end-to-end tests, on a unique pin root and
 * socket, with generated nice-grpc clients.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';

import type { ChannelCredentials } from '@grpc/grpc-js';
import { createChannel, createClient, type Channel, type Client } from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { CounterServiceDefinition } from '../../src/gen/xdpctl/v1/counters.js';
import { DaemonServiceDefinition } from '../../src/gen/xdpctl/v1/daemon.js';
import { InterfaceServiceDefinition } from '../../src/gen/xdpctl/v1/interface.js';
import { LinkServiceDefinition } from '../../src/gen/xdpctl/v1/link.js';
import { RuleServiceDefinition } from '../../src/gen/xdpctl/v1/rule.js';
import { CLI, DAEMON, DAEMON_NODE_FLAGS, ROOT, sh, until } from './env.js';

export interface Clients {
  rules: Client<typeof RuleServiceDefinition>;
  links: Client<typeof LinkServiceDefinition>;
  interfaces: Client<typeof InterfaceServiceDefinition>;
  counters: Client<typeof CounterServiceDefinition>;
  daemon: Client<typeof DaemonServiceDefinition>;
  health: Client<typeof HealthDefinition>;
}

/** A JSON log line of the daemon: its pino level (30 info, 40 warn, 50 error), message and fields. */
export type LogRecord = { level: number; msg: string; [field: string]: unknown };

/** The line xdpctld prints once it serves. */
type ReadyLine = { addresses: string[]; http?: string[]; prometheus?: string };

export class DaemonProcess {
  private channels: Channel[] = [];
  output = '';
  /** The Prometheus endpoint's bound address from the ready line (with --prometheus). */
  prometheus?: string;
  /** Every bound address from the ready line (TCP ones with their real port). */
  addresses: string[] = [];
  /** The HTTP/JSON listeners' bound addresses from the ready line (with --http-listen). */
  http: string[] = [];

  private constructor(
    readonly child: ChildProcess,
    readonly pinRoot: string,
    readonly tcp: string,
    readonly unix: string,
  ) {}

  /**
   * `wrap`: a command that execs the daemon, e.g. ['setpriv', '--bounding-set', '-all,+bpf', '--'];
   * `main`: the daemon's script (default this checkout's dist/server/main.js; e.g. an installed package's);
   * `node`: the Node binary that runs it (e.g. a copy with file capabilities for a non-root uid).
   */
  static async start(
    id: string,
    extra: string[] = [],
    env: NodeJS.ProcessEnv = {},
    wrap: string[] = [],
    main = DAEMON,
    node = process.execPath,
  ): Promise<DaemonProcess> {
    const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
    const unix = `unix:/tmp/xdpctl-test-${id}.sock`;
    const child = spawn(
      wrap[0] ?? node,
      [
        ...(wrap.length ? [...wrap.slice(1), node] : []),
        ...DAEMON_NODE_FLAGS,
        main,
        '--listen',
        '127.0.0.1:0',
        unix,
        '--pin-root',
        pinRoot,
        '--max-rules',
        '16',
        '--state-dir',
        `/tmp/xdpctl-test-${id}-state`,
        '--log-level',
        'warn',
        ...extra,
      ],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } },
    );
    let out = '';
    child.stderr!.on('data', (d) => (out += d));
    // The 20 s guard is cleared once settled: a pending timer keeps the test file's process alive (the
    // runner waits for its exit), so a file that started a daemon last took up to 20 s more to end.
    let guard: NodeJS.Timeout | undefined;
    const { addresses, http, prometheus } = await new Promise<ReadyLine>((resolve, reject) => {
      child.stdout!.on('data', (d) => {
        out += d;
        const line = out.split('\n').find((l) => l.includes('"msg":"ready"'));
        if (line) resolve(JSON.parse(line) as ReadyLine);
      });
      child.on('exit', (code) => reject(new Error(`xdpctld exited ${code}: ${out}`)));
      // Not ready: killed, so that a start that hangs leaves no daemon behind (the test has no handle on it).
      guard = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`xdpctld not ready after 20 s: ${out}`));
      }, 20_000);
    }).finally(() => clearTimeout(guard));
    const d = new DaemonProcess(
      child,
      pinRoot,
      addresses.find((a) => !a.startsWith('unix:'))!,
      unix,
    );
    d.prometheus = prometheus;
    d.addresses = addresses;
    d.http = http ?? [];
    d.output = out; // what it wrote up to "ready" (e.g. start-up warnings), then everything after
    child.stdout!.on('data', (x) => (d.output += x));
    child.stderr!.on('data', (x) => (d.output += x));
    return d;
  }

  /** Its JSON log lines written after the first `from` characters of `output`, parsed; other lines passed over. */
  logLines<T = LogRecord>(from = 0): T[] {
    return this.output
      .slice(from)
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as T);
  }

  /** Clients on one channel; `credentials` for TLS (default: plaintext). */
  clients(address = this.tcp, credentials?: ChannelCredentials): Clients {
    // nice-grpc's channel wants the absolute form unix:///path.
    const ch = createChannel(address.replace(/^unix:(?!\/\/)/, 'unix://'), credentials);
    this.channels.push(ch);
    return {
      rules: createClient(RuleServiceDefinition, ch),
      links: createClient(LinkServiceDefinition, ch),
      interfaces: createClient(InterfaceServiceDefinition, ch),
      counters: createClient(CounterServiceDefinition, ch),
      daemon: createClient(DaemonServiceDefinition, ch),
      health: createClient(HealthDefinition, ch),
    };
  }

  /** SIGTERM and wait for exit; returns the exit code. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.child.exitCode;
    const exited = new Promise<number | null>((r) => this.child.once('exit', (code) => r(code)));
    this.child.kill(signal);
    return exited;
  }

  /** Close the channels of every client made by {@link clients} (e.g. of a daemon stopped to start another). */
  closeClients(): void {
    this.channels.forEach((c) => c.close());
    this.channels = [];
  }

  /** Stop, close channels and remove the pins (test cleanup). */
  async destroy(): Promise<void> {
    this.closeClients();
    await this.stop('SIGKILL');
    XdpDatapath.unpinAll(this.pinRoot);
    rmSync(this.stateDir, { recursive: true, force: true });
    // Every Unix socket it was given (--listen, --http-listen) and its lock file: left by a killed daemon.
    const unix = new Set([this.unix, ...this.child.spawnargs.filter((a) => a.startsWith('unix:'))]);
    for (const u of unix) {
      rmSync(u.slice('unix:'.length), { force: true });
      rmSync(`${u.slice('unix:'.length)}.lock`, { force: true });
    }
  }

  get stateDir(): string {
    return this.pinRoot.replace('/sys/fs/bpf/xdpctl-test-', '/tmp/xdpctl-test-') + '-state';
  }

  /** Every map's content as bpftool shows it (counters excluded). */
  dumpMaps(): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const m of ['xc_links', 'rule_match', 'rule_cfg', 'rule_ring', 'src_allow', 'backends']) {
      out[m] = JSON.parse(
        sh('bpftool', ['-j', 'map', 'dump', 'pinned', `${this.pinRoot}/maps/${m}`], { maxBuffer: 1 << 28 }),
      );
    }
    return out;
  }
}

/**
 * xdpctld started by `sh -c script`, so that the shell's redirections give it a stdout (and stderr) that is a FIFO
 * or a file, as a supervisor or a shell's `>`/`>>` does, and not a pipe of the test's. `shArgs` are the script's
 * $0, $1, …; after them come `wrap` (a command that execs the daemon, e.g. prlimit) and the daemon's command
 * line, which the script runs with `exec "$@"` (after shifting its own arguments past $0). The daemon listens on
 * `unix:sock` only, logs at debug with --max-rules 128 and a Prometheus endpoint on 127.0.0.1:0, plus `extra`.
 * Returns at once: the caller waits for its 'ready' line where it sent stdout.
 */
export function spawnRedirectedDaemon(o: {
  script: string;
  shArgs: string[];
  wrap?: string[];
  sock: string;
  pinRoot: string;
  stateDir: string;
  extra?: string[];
  stdio: StdioOptions;
}): ChildProcess {
  return spawn(
    'sh',
    [
      '-c',
      o.script,
      ...o.shArgs,
      ...(o.wrap ?? []),
      process.execPath,
      ...DAEMON_NODE_FLAGS,
      DAEMON,
      '--listen',
      `unix:${o.sock}`,
      '--pin-root',
      o.pinRoot,
      '--state-dir',
      o.stateDir,
      '--max-rules',
      '128',
      '--log-level',
      'debug',
      ...(o.extra ?? []),
      '--prometheus',
      '127.0.0.1:0',
    ],
    { cwd: ROOT, stdio: o.stdio },
  );
}

/** A JSON line of xdpctld's log as read back from a file. */
export type FileLogLine = { msg?: string; level?: number; [k: string]: unknown };

/** The text of file `f` ('' while it does not exist). */
export const fileText = (f: string): string => (existsSync(f) ? readFileSync(f, 'utf8') : '');

/** The whole JSON lines of log file `f` (a line cut short, e.g. by a refused write, is passed over). */
export const fileLogLines = (f: string): FileLogLine[] =>
  fileText(f)
    .split('\n')
    .filter((l) => l.startsWith('{') && l.endsWith('}'))
    .map((l) => JSON.parse(l) as FileLogLine);

/**
 * xdpctld with stdout written to the file `out` and stderr to `err` by a shell's redirections (`>>`, or `>`: opened
 * without O_APPEND), through spawnRedirectedDaemon (`wrap` execs it, e.g. prlimit); waits up to 20 s for its 'ready'
 * line in `out` and asserts it still runs. Returns the child, a promise of its exit code and its Prometheus address.
 */
export async function startFileLoggedDaemon(o: {
  out: string;
  err: string;
  redirect?: '>>' | '>';
  wrap?: string[];
  sock: string;
  pinRoot: string;
  stateDir: string;
  extra?: string[];
  /** How long to wait for its 'ready' line (ms; default 20 s). */
  readyMs?: number;
}): Promise<{ child: ChildProcess; exit: Promise<number | null>; prometheus: string }> {
  const r = o.redirect ?? '>>';
  const child = spawnRedirectedDaemon({
    script: `o=$0 e=$1; shift; exec "$@" ${r}"$o" ${r === '>' ? '2>' : '2>>'}"$e"`,
    shArgs: [o.out, o.err],
    ...(o.wrap ? { wrap: o.wrap } : {}),
    sock: o.sock,
    pinRoot: o.pinRoot,
    stateDir: o.stateDir,
    ...(o.extra ? { extra: o.extra } : {}),
    stdio: ['ignore', 'ignore', 'ignore'],
  });
  const exit = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  const tails = () => `${fileText(o.out).slice(-2000)} ${fileText(o.err).slice(-2000)}`;
  try {
    await until(
      () => `no ready line: ${tails()}`,
      () => fileLogLines(o.out).some((l) => l.msg === 'ready') || child.exitCode !== null,
      o.readyMs ?? 20_000,
    );
  } catch (e) {
    // Not ready: killed, so that a start that hangs leaves no daemon behind (the caller has no handle on it).
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exit;
    }
    throw e;
  }
  assert.equal(child.exitCode, null, `xdpctld exited: ${tails()}`);
  const prometheus = fileLogLines(o.out).find((l) => l.msg === 'ready')!.prometheus as string;
  return { child, exit, prometheus };
}

/** Run the CLI against `server`; its exit code and output. */
export function xdpctl(
  server: string,
  args: string[],
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(CLI, ['--server', server, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (x) => (stdout += x));
    child.stderr.on('data', (x) => (stderr += x));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** The value of one sample of `name` on a Prometheus endpoint whose labels include all of `labels`. */
export async function metric(addr: string, name: string, labels: Record<string, string>): Promise<number | undefined> {
  return promSample(await (await fetch(`http://${addr}/metrics`)).text(), name, labels);
}

/** Every series of `name` on a Prometheus endpoint: its labels and value. */
export async function metricSeries(
  addr: string,
  name: string,
): Promise<{ labels: Record<string, string>; value: number }[]> {
  return promSeries(await (await fetch(`http://${addr}/metrics`)).text(), name);
}

/** The value of one sample of `name` in Prometheus text whose labels include all of `labels`; undefined when absent. */
export function promSample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  return promSeries(text, name).find((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
}

/** Every sample of `name` in Prometheus text: its labels and value. */
export function promSeries(text: string, name: string): { labels: Record<string, string>; value: number }[] {
  const out: { labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const labels = Object.fromEntries(
      [...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]),
    );
    out.push({ labels, value: Number(m[3]) });
  }
  return out;
}
