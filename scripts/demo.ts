#!/usr/bin/env node
/**
 * npm run demo: both old demos, driven with the xdpctl CLI against a daemon
 * this script starts, on a topology of network namespaces it builds — and
 * removes again, whatever happens (an error, Ctrl-C or SIGTERM). Run as root.
 * `--quick` is the trimmed run the test suite uses (fewer packets, no pauses);
 * `--help` prints the usage and does nothing else (`npm run demo -- --help`).
 *
 *   h1, h2, h3   hosts for the cross-connect demo (198.18.0.1-3)
 *   vm           sends UDP to 198.18.9.9:7999, an address nobody has
 *   web          the "container" listening on 198.18.2.1:7999
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { removeEach } from './remove-each.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const USAGE = `Usage: npm run demo [-- --quick]

As root: starts its own xdpctld (own pins, socket and state), builds network namespaces, walks through
both old demos with the xdpctl CLI (cross-connect ping swapping between hosts; UDP to port 7999
redirected into a "container" with counters) and removes everything it made, also on Ctrl-C.

Options:
  --quick     fewer packets, no pauses (what the test suite runs)
  -h, --help  print this help and exit
`;
const args = process.argv.slice(2);
if (args.includes('--help') || args.includes('-h')) {
  process.stdout.write(USAGE);
  process.exit(0);
}
const unknown = args.filter((a) => a !== '--quick');
if (unknown.length) {
  process.stderr.write(`demo: unknown argument ${unknown[0]}\n${USAGE}`);
  process.exit(2);
}
const quick = args.includes('--quick');
const id = randomBytes(2).toString('hex');
const sock = `/tmp/xdpctl-demo-${id}.sock`;
const pinRoot = `/sys/fs/bpf/xdpctl-demo-${id}`;
const stateDir = `/tmp/xdpctl-demo-${id}-state`;
const linksFile = `/tmp/xdpctl-demo-${id}-links.yaml`;
const env = { ...process.env, XDPCTL_SERVER: `unix:${sock}` };
const made: { netns: string[]; links: string[] } = { netns: [], links: [] };
let daemon: ChildProcess | undefined;
/** Traffic tools started in the namespaces: killed by clean-up if still running. */
const tools: ChildProcess[] = [];

const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const say = (s: string) => console.log(`\n${bold(s)}`);
const pause = (ms: number) => new Promise((r) => setTimeout(r, quick ? Math.min(ms, 100) : ms));

/** Set by Ctrl-C/SIGTERM: every later step throws, so the demo goes straight to clean-up. */
let interrupted: NodeJS.Signals | undefined;
/** Set by the clean-up when something it made is still there: the run fails. */
let leftBehind = false;

function sh(cmd: string, args: string[]): string {
  if (interrupted) throw new Error(`interrupted (${interrupted})`);
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Show and run a CLI command, like a person typing it. */
function xdpctl(args: string[], expectFail = false): string {
  if (interrupted) throw new Error(`interrupted (${interrupted})`);
  console.log(`$ xdpctl ${args.join(' ')}`);
  try {
    const out = execFileSync(`${ROOT}dist/client/cli.js`, args, {
      encoding: 'utf8',
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    process.stdout.write(out);
    if (expectFail) throw new Error(`xdpctl ${args.join(' ')} was expected to fail`);
    return out;
  } catch (e) {
    const err = e as { status?: number; stderr?: string };
    if (!expectFail || err.status === undefined) throw e;
    process.stdout.write(err.stderr ?? '');
    console.log(`(exit code ${err.status})`);
    return '';
  }
}

function host(role: string, cidr: string) {
  const netns = `xdpdemo-${id}-${role}`;
  const hostIf = `xd${id}${role}`.slice(0, 15);
  made.netns.push(netns); // recorded first: an interruption right after creation still removes it
  sh('ip', ['netns', 'add', netns]);
  made.links.push(hostIf);
  sh('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns]);
  sh('ip', ['link', 'set', hostIf, 'up']);
  sh('sysctl', ['-qw', `net.ipv4.conf.${hostIf}.forwarding=0`]);
  sh('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
  sh('ip', ['-n', netns, 'link', 'set', 'eth0', 'up']);
  sh('ip', ['-n', netns, 'addr', 'add', cidr, 'dev', 'eth0']);
  const mac = JSON.parse(sh('ip', ['-n', netns, '-j', 'link', 'show', 'eth0']))[0].address as string;
  const hostMac = JSON.parse(sh('ip', ['-j', 'link', 'show', hostIf]))[0].address as string;
  return { netns, hostIf, ip: cidr.split('/')[0], mac, hostMac };
}

function ping(from: { netns: string }, to: { ip: string }): boolean {
  const args = [`--net=/run/netns/${from.netns}`, 'ping', '-c', '2', '-i', '0.2', '-W', '1', '-q', to.ip];
  console.log(`$ ping ${to.ip}    # from ${from.netns}`);
  // Forget what an earlier ping learned or is still resolving: an ARP entry left INCOMPLETE by a ping
  // before the link existed retries only once a second, which can miss this ping's short window.
  sh('ip', ['-n', from.netns, 'neigh', 'flush', 'all']);
  try {
    const out = sh('nsenter', args);
    console.log(
      `  ${out
        .trim()
        .split('\n')
        .find((l) => l.includes('received'))}`,
    );
    return true;
  } catch {
    console.log('  no reply');
    return false;
  }
}

function expect(ok: boolean, what: string): void {
  if (!ok) throw new Error(`demo check failed: ${what}`);
}

async function startDaemon(): Promise<void> {
  say('1. Start xdpctld (its own pins, socket and state, so it never touches a real one)');
  console.log(`$ xdpctld --listen unix:${sock} --pin-root ${pinRoot} --state-dir ${stateDir} --cleanup-on-exit`);
  daemon = spawn(
    `${ROOT}dist/server/main.js`,
    [
      '--listen',
      `unix:${sock}`,
      '--pin-root',
      pinRoot,
      '--state-dir',
      stateDir,
      '--cleanup-on-exit',
      '--log-level',
      'warn',
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((resolve, reject) => {
    let out = '';
    daemon!.stdout!.on('data', (d) => {
      out += d;
      if (out.includes('"msg":"ready"')) resolve();
    });
    daemon!.once('exit', (code) => reject(new Error(`xdpctld exited with ${code}`)));
  });
  xdpctl(['status']);
}

async function crossConnect(): Promise<void> {
  say('2. The cross-connect demo (replaces xdp-xconnect)');
  const h1 = host('h1', '198.18.0.1/24');
  const h2 = host('h2', '198.18.0.2/24');
  const h3 = host('h3', '198.18.0.3/24');
  console.log(`Three hosts hang off veths ${h1.hostIf}, ${h2.hostIf}, ${h3.hostIf}. Nothing connects them yet:`);
  expect(!ping(h1, h2), 'h1 must not reach h2 before the link');
  say('Connect h1 and h2: one devmap entry per direction, no bridge, no routing');
  xdpctl(['links', 'connect', h1.hostIf, h2.hostIf]);
  expect(ping(h1, h2), 'h1 reaches h2');
  say('Swap the link to h3 with a file (the xdp-xconnect format, applied atomically)');
  writeFileSync(linksFile, `links:\n  ${h1.hostIf}: ${h3.hostIf}\n`);
  console.log(`$ cat ${linksFile}\n${`links:\n  ${h1.hostIf}: ${h3.hostIf}`}`);
  xdpctl(['links', 'apply', '-f', linksFile, '--dry-run']);
  xdpctl(['links', 'apply', '-f', linksFile]);
  expect(ping(h1, h3), 'h1 reaches h3 after the swap');
  expect(!ping(h1, h2), 'h1 no longer reaches h2');
  xdpctl(['links', 'list']);
  xdpctl(['interfaces', 'list']);
}

async function udpRedirect(): Promise<void> {
  say('3. The UDP redirect demo (replaces the xdp-redirect POST /rules?sourceAddr=...)');
  const vm = host('vm', '198.18.1.1/24');
  const web = host('web', '198.18.2.1/24');
  // The VM routes everything to our veth (a made-up gateway, resolved statically).
  sh('ip', [
    '-n',
    vm.netns,
    'neigh',
    'replace',
    '198.18.1.254',
    'lladdr',
    vm.hostMac,
    'dev',
    'eth0',
    'nud',
    'permanent',
  ]);
  sh('ip', ['-n', vm.netns, 'route', 'replace', 'default', 'via', '198.18.1.254', 'dev', 'eth0', 'onlink']);
  console.log('A "VM" will send UDP to 198.18.9.9:7999 — an address nobody has. Only XDP can deliver it.');
  xdpctl([
    'rules',
    'add',
    'web',
    '--port',
    '7999',
    '--source',
    vm.ip,
    '--backend',
    `${web.ip},${web.mac},${web.hostIf}`,
    '--ingress',
    vm.hostIf,
  ]);
  xdpctl(['rules', 'list']);
  say('A mistake is caught before anything reaches the kernel:');
  xdpctl(
    ['rules', 'add', 'bad', '--port', '0', '--backend', `${web.ip},02:42:ac,${web.hostIf}`, '--ingress', vm.hostIf],
    true,
  );

  const count = quick ? 200 : 3000;
  say(`Listen in the container, send ${count} datagrams from the VM, and watch the counters rise`);
  const tool = `${ROOT}test/helpers/udp-tool.mjs`;
  const listener = spawn(
    'nsenter',
    [`--net=/run/netns/${web.netns}`, process.execPath, tool, 'listen', web.ip, '7999'],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  tools.push(listener);
  let got = '';
  listener.stdout!.on('data', (d) => (got += d));
  await new Promise<void>((r) => listener.stdout!.once('data', () => r()));
  if (interrupted) throw new Error(`interrupted (${interrupted})`);
  const sender = spawn(
    'nsenter',
    [
      `--net=/run/netns/${vm.netns}`,
      process.execPath,
      tool,
      'send',
      '198.18.9.9',
      '7999',
      String(count),
      '1',
      '40000',
      '10',
      '10',
    ],
    { stdio: 'ignore' },
  );
  tools.push(sender);
  xdpctl(['watch', 'backends', '--interval', '500ms', '--count', quick ? '2' : '4']);
  await new Promise((r) => sender.once('exit', r));
  await pause(300);
  listener.kill('SIGTERM');
  await new Promise((r) => listener.once('exit', r));
  const summary = JSON.parse(got.slice(got.indexOf('READY\n') + 6)) as { unique: number; bad: number };
  console.log(`The container received ${summary.unique} of ${count} datagrams, ${summary.bad} damaged.`);
  expect(summary.unique === count && summary.bad === 0, 'every datagram delivered intact');
  xdpctl(['rules', 'get', 'web', '-o', 'yaml']);
}

let cleaning: Promise<void> | undefined;
/** Remove everything the demo made; once, whoever asks first (the end of the run or a signal). */
function cleanup(): Promise<void> {
  cleaning ??= removeAll();
  return cleaning;
}

async function removeAll(): Promise<void> {
  say('4. Clean up: stop the daemon (--cleanup-on-exit detaches and unpins), remove the namespaces');
  const running = tools.filter((t) => t.exitCode === null && t.signalCode === null);
  for (const t of running) t.kill('SIGKILL');
  // Gone before their namespaces are removed (a process still in one can make `ip netns del` fail).
  await Promise.all(
    running.map((t) => new Promise((r) => (t.exitCode !== null || t.signalCode !== null ? r(0) : t.once('exit', r)))),
  );
  if (daemon && daemon.exitCode === null) {
    daemon.kill('SIGTERM');
    await new Promise((r) => daemon!.once('exit', r));
  }
  const run = (cmd: string, a: string[]) => execFileSync(cmd, a, { stdio: ['ignore', 'ignore', 'pipe'] });
  const links = await removeEach(
    made.links,
    (l) => run('ip', ['link', 'del', l]),
    (l) => existsSync(`/sys/class/net/${l}`),
  );
  const netns = await removeEach(
    made.netns,
    (n) => run('ip', ['netns', 'del', n]),
    (n) => existsSync(`/run/netns/${n}`),
  );
  rmSync(pinRoot, { recursive: true, force: true });
  rmSync(stateDir, { recursive: true, force: true });
  rmSync(linksFile, { force: true });
  rmSync(sock, { force: true });
  const left = [
    ...netns.left.map((x) => ({ ...x, kind: 'namespace' })),
    ...links.left.map((x) => ({ ...x, kind: 'veth' })),
  ];
  // A veth whose peer was in a removed namespace goes with it: counted as removed when it is gone.
  const vethsGone = made.links.length - links.left.length;
  console.log(
    `removed ${netns.removed.length}${netns.left.length ? ` of ${netns.removed.length + netns.left.length}` : ''} ` +
      `namespaces, ${vethsGone}${links.left.length ? ` of ${made.links.length}` : ''} veth pairs, pins and state`,
  );
  if (left.length) {
    leftBehind = true;
    for (const x of left) console.error(`demo: left behind: ${x.kind} ${x.name} (${x.error}); remove it by hand`);
  }
}

// Ctrl-C or SIGTERM: clean up, then exit 128+signal. Commands already running get the same signal from
// the terminal (same process group) and fail; the steps after them throw.
for (const [sig, code] of [
  ['SIGINT', 130],
  ['SIGTERM', 143],
] as const) {
  process.on(sig, () => {
    if (interrupted) return;
    interrupted = sig;
    console.error(`\ndemo: ${sig}: cleaning up`);
    void cleanup().finally(() => process.exit(code));
  });
}

let failed = false;
try {
  if (process.getuid?.() !== 0) throw new Error('the demo needs root (XDP, namespaces)');
  await startDaemon();
  await crossConnect();
  await udpRedirect();
  say('Done. Both old tools, one daemon, one CLI.');
} catch (e) {
  failed = true;
  console.error(`demo: ${(e as Error).message}`);
} finally {
  await cleanup();
}
process.exit(interrupted === 'SIGINT' ? 130 : interrupted === 'SIGTERM' ? 143 : failed || leftBehind ? 1 : 0);
