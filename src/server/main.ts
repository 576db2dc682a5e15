#!/usr/bin/env -S node --max-semi-space-size=2 --disable-sigusr1
/**
 * xdpctld: the daemon's command line. Everything else is in daemon.ts.
 *
 * The shebang's flags are the daemon's Node settings wherever it runs (the Dockerfile's ENTRYPOINT,
 * `npm start` and the bench pass the same, read from this line): young-generation semi-spaces of 2 MB
 * instead of V8's 16 MB keep ~30 MB less resident at rest (measured: 122 -> 95 MB with 0 rules, 30 s
 * after SERVING) for a control plane whose allocations are small and short-lived; --disable-sigusr1: a
 * SIGUSR1 never opens Node's inspector (before: on 127.0.0.1:9229, code execution as the daemon's user for
 * any local process), from the first instruction on (signals.ts).
 */

// First: on a Node older than engines.node, stop with a message before anything else loads.
import '../shared/supported-node.js';

import os from 'node:os';

import { Command, Option } from 'commander';
import { pino } from 'pino';

import { checkOwnCapabilities } from './auth/capabilities.js';
import { AuthConfigError, loadAuthConfig, type AuthConfig } from './auth/policy.js';
import { DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_WATCH_STREAMS, parseSocketMode } from './auth/transport.js';
import { DEFAULT_CONNECTION_LIMITS } from './connection-guard.js';
import { capacityForRules, Daemon, DEFAULTS, VERSION } from './daemon.js';
import { childGuard } from './dataplane/children.js';
import { seekFd } from './dataplane/fd-seek.js';
import { missingHostTools } from './dataplane/host-tools.js';
import { FileLogRelay, RELAY_READER } from './log-relay.js';
import { isFileFd, isRegularFd, LogSink, logDropSummary, stderrNotice, type DropEpisode } from './log-sink.js';
import { installSignalHandlers } from './signals.js';
import { traceLogFields } from './telemetry/log-context.js';
import { parsePrometheusAddress } from './telemetry/prometheus.js';
import { startTelemetry } from './telemetry/sdk.js';
import { visible } from '../shared/visible.js';

const program = new Command('xdpctld')
  .description(
    'gRPC control plane for the xdpctl XDP datapath: UDP redirect rules and interface cross-connects.\n' +
      'Needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON (and CAP_SYS_ADMIN for native redirects into ' +
      'veths whose peer is in another network namespace; CAP_NET_RAW to confirm neighbour MACs by ARP requests ' +
      'of its own), and bpffs mounted at /sys/fs/bpf.',
  )
  .version(VERSION)
  .option('--listen <address...>', 'where to serve gRPC: host:port or unix:/path (repeatable)', DEFAULTS.listen)
  .option(
    '--http-listen <address...>',
    'also serve every unary RPC as HTTP/JSON (the Connect protocol: POST /xdpctl.v1.RuleService/ListRules ' +
      'with a JSON body) on host:port or unix:/path (repeatable; none by default); same TLS, identities, ' +
      'roles and errors as gRPC',
  )
  .option(
    '--pin-root <dir>',
    'bpffs directory for pinned maps and program; created 0700, refused if another user owns it or others ' +
      'may write it; one daemon per pin root, state dir and socket (a second one refuses to start)',
    DEFAULTS.pinRoot,
  )
  .option('--bpf-object <file>', 'compiled XDP object', DEFAULTS.objectPath)
  .option('--descriptor <file>', 'FileDescriptorSet served by gRPC reflection', DEFAULTS.descriptorPath)
  .addOption(
    new Option(
      '--xdp-mode <mode>',
      'XDP attach mode; auto tries native, then generic (a program an earlier start attached in generic mode stays generic, and its interface status says so)',
    )
      .choices(['auto', 'native', 'generic'])
      .default(DEFAULTS.mode),
  )
  .option(
    '--no-fix-veth-peers',
    'refuse native redirects into veths whose peer lacks NAPI, instead of enabling GRO on the peer',
  )
  .option(
    '--config <file.yaml>',
    'apply this YAML file (links and rules; also what "xdpctl -o yaml rules list" prints) and re-apply it on every change; a refused file keeps the last good configuration (xdpctl status and the xdpctl.config health service say so), and so does one a process still holds open for writing (applied once closed; after 10 s as it is, with a warning); a path that is not a regular file (a FIFO, a device, a directory) or of more than 64 MiB is refused unread; API changes are then refused',
  )
  .option('--tls-cert <file>', 'PEM certificate for TCP listeners (enables TLS)')
  .option('--tls-key <file>', 'PEM private key for --tls-cert')
  .option('--tls-client-ca <file>', 'PEM CA: require client certificates signed by it (mutual TLS)')
  .option(
    '--tls-refresh-seconds <n>',
    're-read the TLS files this often; a new valid set (mesh rotation) is used for new connections',
    '60',
  )
  .option(
    '--auth-config <file.yaml>',
    'who may read (readOnly) and change (admin): lists of spiffe://ID, x509-cn:NAME, unix-uid:N, ' +
      'unix-user:NAME, unix-gid:N, unix-group:NAME, anonymous (see below); read again on SIGHUP',
  )
  .option(
    '--insecure',
    'allow plaintext gRPC and HTTP/JSON on non-loopback TCP addresses (refused otherwise); logs a warning at ' +
      'every start',
    false,
  )
  .option(
    '--socket-group <group>',
    'group (name or gid) of the Unix socket file; its members may connect and, without --auth-config, read',
  )
  .option('--socket-mode <octal>', 'permissions of the Unix socket file', '660')
  .option(
    '--max-message-bytes <n>',
    'largest request message accepted; larger ones fail with RESOURCE_EXHAUSTED',
    String(DEFAULT_MAX_MESSAGE_BYTES),
  )
  .option(
    '--max-watch-streams <n>',
    'watch streams (WatchCounters, health Watch) one client identity may hold open; more fail with RESOURCE_EXHAUSTED',
    String(DEFAULT_MAX_WATCH_STREAMS),
  )
  .option(
    '--max-connections <n>',
    'connections a TCP listener holds at most; more are closed at once (the Unix socket is not bounded)',
    String(DEFAULT_CONNECTION_LIMITS.maxConnections),
  )
  .option(
    '--max-connections-per-peer <n>',
    'connections one peer may hold on a TCP listener: a remote peer per address, a loopback peer per uid ' +
      '(so one local user cannot take 127.0.0.1 from the others)',
    String(DEFAULT_CONNECTION_LIMITS.maxPerPeer),
  )
  .option(
    '--preface-timeout-seconds <n>',
    'a connection that has not finished its TLS handshake and sent its HTTP/2 preface by then is closed',
    String(DEFAULT_CONNECTION_LIMITS.prefaceTimeoutMs / 1000),
  )
  .option('--state-dir <dir>', 'where the desired state persists across restarts', DEFAULTS.stateDir)
  .option(
    '--no-state',
    'do not persist the desired state (start empty every time); refused while the pinned datapath holds rules or links (see --reset-datapath)',
  )
  .option(
    '--reset-datapath',
    'when the state store is missing, belongs to another pin root, is older than the pinned datapath (its generation ' +
      "behind the pins'), or --no-state is given, but the pinned datapath still holds rules or links, take the store " +
      'as the truth (clear what it lacks) and detach the program instead of refusing to start (never when a live ' +
      'xdpctld uses those maps or program, under whatever path: that start is refused, naming it)',
    false,
  )
  .option(
    '--max-rules <n>',
    'capacity of the rule tables; a different value than the pinned maps have migrates them at start (new maps, rules rewritten, program swapped without a gap); a value too small for the stored rules is refused at start, naming the smallest that fits',
    '4096',
  )
  .option(
    '--cleanup-on-exit',
    'on SIGTERM, SIGINT, SIGQUIT or another stop signal (see Signals below) detach our program from every ' +
      'interface that runs it, switch GRO back off and ' +
      'offloads back on where xdpctld changed them (recorded in the state dir; a veth peer moved to another ' +
      'network namespace since is found through its veth), and remove all pins. A setting listed by a record ' +
      'whose last write was never confirmed (a host-changes.json.tmp left by a stop on a frozen disk) is left ' +
      'as found, and said',
    false,
  )
  .addOption(new Option('--log-level <level>', 'log level').choices(['debug', 'info', 'warn', 'error']).default('info'))
  .option(
    '--log-buffer-bytes <n>',
    'log lines (JSON on stdout) that may wait for a reader that does not keep up; beyond, lines are dropped ' +
      'and counted (xdpctl_log_lines_dropped_total), said once on stderr and, once stdout is read again, in ' +
      'the log; the daemon never waits for its log reader',
    String(1024 * 1024),
  )
  .option(
    '--prometheus [host:port]',
    'serve Prometheus metrics at http://host:port/metrics; without a value 127.0.0.1:9464 ' +
      '(loopback: other hosts only if you give their address, e.g. 0.0.0.0:9464; port 0 picks one)',
  )
  .addHelpText(
    'after',
    `
Examples:
  xdpctld                                   # 127.0.0.1:9091 and unix:/run/xdpctl/xdpctl.sock
  xdpctld --listen unix:/tmp/x.sock --xdp-mode generic
  xdpctld --cleanup-on-exit                 # leave no trace when stopped
  xdpctld --config /etc/xdpctl/links.yaml   # the xdp-xconnect workflow: links: {eth0: tap0}
  xdpctld --prometheus                      # metrics at http://127.0.0.1:9464/metrics
  xdpctld --http-listen 127.0.0.1:9092      # curl too (see HTTP/JSON below)
  OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 xdpctld   # traces and metrics over OTLP

Access: every call has an identity: the SPIFFE ID of a verified client
certificate (its URI SAN), else its subject CN (x509-cn:NAME); on the Unix
socket and loopback TCP the caller's uid (unix-uid:N, from the kernel);
otherwise anonymous. Roles: read-only (Get/List/Watch, status, reflection)
and admin (every change); health checks need none. Without --auth-config,
root and the daemon's own user are admin, --socket-group members and clients
with a certificate from --tls-client-ca are read-only, everyone else has no
role. With it, exactly the listed identities have roles:
  admin: [unix-uid:0, "spiffe://example.org/ns/net/sa/controller"]
  readOnly: ["spiffe://example.org/ns/monitoring/*", unix-group:xdpctl]
Denials are PERMISSION_DENIED; every change and every denial is logged as an
audit record ("audit":true, at any --log-level).

HTTP/JSON (--http-listen): every unary RPC at POST /<service>/<method> with
Content-Type: application/json, the request in the proto3 JSON mapping; Get
and List methods also answer GET ...?encoding=json&message=<JSON>. Errors are
Connect errors: {"code":"invalid_argument","message":...,"details":[...]},
each detail with its JSON under "debug". Any other Content-Type (binary
application/proto included: use gRPC) is 415, nothing applied. For example:
  curl -sS --json '{}' http://127.0.0.1:9092/xdpctl.v1.RuleService/ListRules

Telemetry: nothing is exported unless asked. Traces go over OTLP when
OTEL_TRACES_EXPORTER or OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT)
is set, metrics when OTEL_METRICS_EXPORTER or OTEL_EXPORTER_OTLP_ENDPOINT (or
..._METRICS_ENDPOINT) is set; OTEL_EXPORTER_OTLP_PROTOCOL picks grpc,
http/protobuf (default) or http/json, and the other standard OTEL_* variables
apply. A client's W3C traceparent is honoured; logs are JSON lines on stdout
with the trace_id and span_id of the RPC they belong to. An export that fails
is logged once with the exporter's cause (connection refused, HTTP status,
timeout), summarised every 5 min, and logged once when it succeeds again;
xdpctl status and xdpctl_telemetry_export_failures_total say it too.

Signals: SIGTERM, SIGINT, SIGQUIT (and SIGALRM, SIGVTALRM, SIGXCPU, SIGPWR,
SIGIO, SIGSTKFLT) are logged and stop the daemon in order (NOT_SERVING,
streams ended, calls drained, --cleanup-on-exit); its writes to the state
dir share 1.5 s (none when its disk is known not to answer), so a stop on a
frozen disk exits in about 2 s, saying what it did not write (with a commit
held there, only once the disk completes it, said: "stopped" comes then); another one
during the stop is logged and the stop goes on. SIGHUP is logged and reads the --config file,
the TLS files and the --auth-config file again at once (an invalid auth file
is refused and the roles in force stay); the daemon keeps serving. SIGUSR2 is logged
and ignored; SIGUSR1, SIGPIPE and SIGXFSZ are ignored (SIGUSR1 never opens
Node's inspector: the daemon runs with --disable-sigusr1). SIGKILL skips the
stop. Child processes (ip monitor, ethtool) end with the daemon however it
ends (setpriv --pdeathsig, util-linux).

The datapath keeps forwarding while the daemon is stopped or restarting: the
program stays attached and the maps stay pinned under --pin-root. While it
runs, the daemon reconciles every second and on link/neighbour changes:
it re-attaches its program if another tool detaches it, leaves a foreign
program alone and reports it, and takes backends that cannot receive out of
their rule until they recover (rule status, conditions, xdpctl.datapath
health and the log say what it observed).`,
  );

program.parse();
const o = program.opts<{
  listen: string[];
  httpListen?: string[];
  pinRoot: string;
  bpfObject: string;
  descriptor: string;
  xdpMode: 'auto' | 'native' | 'generic';
  fixVethPeers: boolean;
  cleanupOnExit: boolean;
  maxRules: string;
  stateDir: string;
  state: boolean;
  resetDatapath: boolean;
  config?: string;
  logLevel: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsClientCa?: string;
  tlsRefreshSeconds: string;
  prometheus?: string | true;
  authConfig?: string;
  insecure: boolean;
  socketGroup?: string;
  socketMode: string;
  maxMessageBytes: string;
  maxWatchStreams: string;
  maxConnections: string;
  maxConnectionsPerPeer: string;
  prefaceTimeoutSeconds: string;
  logBufferBytes: string;
}>();
const refreshMs = Number(o.tlsRefreshSeconds) * 1000;
if (!Number.isInteger(refreshMs) || refreshMs < 1000 || refreshMs > 86_400_000) {
  process.stderr.write(
    `xdpctld: --tls-refresh-seconds must be an integer from 1 to 86400, not "${o.tlsRefreshSeconds}"\n`,
  );
  process.exit(2);
}
if (!!o.tlsCert !== !!o.tlsKey || (o.tlsClientCa && !o.tlsCert)) {
  process.stderr.write('xdpctld: --tls-cert and --tls-key go together, and --tls-client-ca needs them\n');
  process.exit(2);
}
/**
 * Why a listen address is not one we can serve on, or undefined: `unix:` and an absolute path, or
 * host:port with a literal or name for host ([...] around IPv6) and a port from 0 to 65535.
 */
function listenProblem(a: string): string | undefined {
  if (a.startsWith('unix:')) {
    return a.length > 5 && a[5] === '/' ? undefined : 'a Unix socket is unix: and an absolute path (unix:/run/x.sock)';
  }
  const m = /^(\[[0-9a-fA-F:.]+\]|[^\s:[\]/]+):(\d{1,5})$/.exec(a);
  if (!m) return 'expected host:port (127.0.0.1:9091, [::1]:9091) or unix:/path';
  if (Number(m[2]) > 65535) return `port ${m[2]} is over 65535`;
  return undefined;
}
for (const [flag, list] of [
  ['--listen', o.listen],
  ['--http-listen', o.httpListen ?? []],
] as const) {
  for (const a of list) {
    const problem = listenProblem(a);
    if (problem) {
      process.stderr.write(`xdpctld: ${flag} "${a}": ${problem}\n`);
      process.exit(2);
    }
  }
}
const maxRules = Number(o.maxRules);
if (!Number.isInteger(maxRules) || maxRules < 1 || maxRules > 1_000_000) {
  process.stderr.write(`xdpctld: --max-rules must be an integer between 1 and 1000000, not "${o.maxRules}"\n`);
  process.exit(2);
}

const intFlag = (flag: string, text: string, min: number, max: number): number => {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) {
    process.stderr.write(`xdpctld: ${flag} must be an integer between ${min} and ${max}, not "${text}"\n`);
    process.exit(2);
  }
  return n;
};
const maxMessageBytes = intFlag('--max-message-bytes', o.maxMessageBytes, 1024, 256 * 1024 * 1024);
const maxWatchStreams = intFlag('--max-watch-streams', o.maxWatchStreams, 1, 100_000);
const connectionLimits = {
  maxConnections: intFlag('--max-connections', o.maxConnections, 1, 1_000_000),
  maxPerPeer: intFlag('--max-connections-per-peer', o.maxConnectionsPerPeer, 1, 1_000_000),
  prefaceTimeoutMs: intFlag('--preface-timeout-seconds', o.prefaceTimeoutSeconds, 1, 3600) * 1000,
};
const socketMode = parseSocketMode(o.socketMode);
if (socketMode === undefined) {
  process.stderr.write(`xdpctld: --socket-mode must be an octal mode such as 660, not "${o.socketMode}"\n`);
  process.exit(2);
}
let auth: AuthConfig | undefined;
try {
  auth = o.authConfig === undefined ? undefined : loadAuthConfig(o.authConfig);
} catch (err) {
  if (!(err instanceof AuthConfigError)) throw err;
  process.stderr.write(`xdpctld: --auth-config ${err.file}:\n${err.problems.map((p) => `  ${p}\n`).join('')}`);
  process.exit(2);
}

let prometheus;
try {
  prometheus = o.prometheus === undefined ? undefined : parsePrometheusAddress(o.prometheus);
} catch (err) {
  process.stderr.write(`xdpctld: ${visible((err as Error).message, true)}\n`);
  process.exit(2);
}

const logBufferBytes = intFlag('--log-buffer-bytes', o.logBufferBytes, 4096, 1024 * 1024 * 1024);

// Every line carries the trace and span of the RPC it belongs to, if any.
// Lines go to stdout through one bounded sink that never blocks (log-sink.ts): while the reader keeps up each
// line is out before the next statement runs (a pipe with room is written at once, a file synchronously), so
// the 'ready' line below follows every start-up line and nothing logged is lost if the process dies. A
// reader that stops reading (a stalled log driver) no longer freezes the daemon (before, the synchronous
// write waited for it: gRPC, health, the reconciler and SIGTERM with it): what it has not read waits up to
// --log-buffer-bytes, beyond that lines are dropped and counted (xdpctl_log_lines_dropped_total), said once
// on stderr and, once it reads again, in one log line.
// A file (stdout redirected to one) is written by a writer process fed through a pipe (log-relay.ts), never on the
// event loop: a disk that stops completing writes (fsfreeze) holds that process only (lines beyond the pipe and
// --log-buffer-bytes dropped and counted as above; GetStatus: not answering after 5 s). It writes line by line: a line the disk refuses (full: ENOSPC, the file size
// limit: EFBIG, EIO) is dropped and counted (xdpctl_log_write_errors_total by errno), said once on stderr and in
// GetStatus, and the next line tries again; a line cut short by the refusal is taken back out of the file (every
// line in it stays JSON). stderr is written so that a refusal there is passed over too (it may be
// the same full disk): before, the first refused write on a stderr file was an unhandled 'error' that ended the
// daemon.
// Control characters in what it says (a device's name) are shown visibly (\e, \xNN), never raw.
const stderrLine = stderrNotice();
const notice = (text: string) => stderrLine(visible(text, true));
const sinkOptions = {
  out: process.stdout,
  seek: seekFd,
  name: 'stdout',
  maxBytes: logBufferBytes,
  notice,
  recovered: (e: DropEpisode) => logDropSummary(log, e, logBufferBytes),
};
/** A file is written by a writer process (log-relay.ts); should it not start, here (a frozen disk holds the daemon then). */
const fileSink = (): FileLogRelay | LogSink => {
  try {
    return new FileLogRelay({
      level: o.logLevel,
      maxBytes: logBufferBytes,
      notice,
      recovered: (e) => logDropSummary(log, e, logBufferBytes, RELAY_READER),
    });
  } catch (err) {
    notice(`cannot start the log writer process (${(err as Error).message}): stdout is written on the event loop`);
    return new LogSink({ ...sinkOptions, fd: 1 });
  }
};
// A character device that is no terminal (/dev/null) is written here, as before: no file system to freeze.
const sink: FileLogRelay | LogSink = isRegularFd(1)
  ? fileSink()
  : new LogSink({ ...sinkOptions, fd: isFileFd(1) ? 1 : undefined });
const logOptions = { base: { service: 'xdpctld' }, mixin: traceLogFields };
const log = pino({ ...logOptions, level: o.logLevel }, sink.log);
/**
 * Stop with `code`: wait (bounded: a reader that stopped must not hold the exit) for the lines still waiting. The
 * code is set first and a timer holds the event loop meanwhile: the log writer and its pipes are unref'd, so with
 * nothing else left Node would end the process by itself, with code 0, before the flush returned (a refused start
 * with stdout on a regular file exited 0).
 */
const exit = (code: number) => {
  process.exitCode = code;
  setTimeout(() => process.exit(code), 10_000);
  void sink.flush().finally(() => process.exit(code));
};

// Name a missing capability here rather than let the kernel answer EPERM.
const caps = checkOwnCapabilities();
if (caps.missing.length) {
  process.stderr.write(
    `xdpctld: missing capabilities: ${caps.missing.join(', ')}. Run as root or grant them ` +
      '(systemd AmbientCapabilities, docker --cap-add, a Kubernetes securityContext)\n',
  );
  process.exit(1);
}
if (!caps.canEnterNetns) {
  log.warn(
    { capability: 'CAP_SYS_ADMIN' },
    'without CAP_SYS_ADMIN, veth peers in other network namespaces cannot be inspected: native redirects ' +
      'into such veths are refused (generic mode and other devices are not affected), and the tc filters, ' +
      "tcx programs and nftables chains on such a peer's ingress are not read: one that drops what a rule " +
      'redirects there is not seen',
  );
}
if (!caps.canSendArp) {
  log.warn(
    { capability: 'CAP_NET_RAW' },
    'without CAP_NET_RAW, ARP requests of our own cannot be sent: the MAC of a backend given without MAC is ' +
      'never confirmed by an answer (its status says "not confirmed yet ... cannot be confirmed: no CAP_NET_RAW"), and a MAC that answered is not kept ' +
      'over a changed neighbour entry',
  );
}

// Child processes (ip monitor, ethtool) end with the daemon, however it ends (dataplane/children.ts).
const guard = childGuard();
if (!guard.guarded) {
  log.warn(
    { why: guard.why },
    `${guard.why}: a child process of xdpctld (ip monitor) may outlive it if it is killed (SIGKILL) ` +
      'instead of stopped',
  );
}

// The programs the daemon runs to observe the host (dataplane/host-tools.ts): each one missing named, with what
// cannot be observed without it (also in GetStatus warnings).
const missingTools = missingHostTools();
if (missingTools.length) {
  log.warn({ missing: missingTools.map((t) => t.name) }, missingTools.map((t) => t.text).join('; '));
}

// Every signal is handled from here on (signals.ts: SIGTERM, SIGINT, SIGQUIT and the other terminating
// ones stop the daemon in order; SIGHUP reads the configuration again; SIGUSR2 is logged and ignored,
// SIGUSR1 too when Node delivers it: not under --disable-sigusr1). A stop signal that comes while the daemon starts stops it once it has started (the default
// action would kill it half-way, pins and all), and one right after the 'ready' line finds its handler
// installed (a supervisor that signals as soon as it reads 'ready' used to kill the process by the default
// action now and then). Another stop signal during the stop is logged; the stop goes on.
let daemon: Daemon | undefined;
let stopSignal: string | undefined;
const stop = (signal: string) => {
  stopSignal = signal;
  if (!daemon) {
    log.info({ signal }, 'signal during start: stopping once started');
    return;
  }
  log.info({ signal, cleanup: o.cleanupOnExit }, `${signal} received: shutting down`);
  daemon.stop().then(
    () => exit(0),
    (err) => {
      log.error({ err }, 'shutdown failed');
      exit(1);
    },
  );
};
installSignalHandlers(
  {
    stop,
    reload: (signal) => daemon!.reload(signal),
    started: () => daemon !== undefined,
    log,
  },
  os.constants.signals,
);

try {
  // Before the server exists, so that every RPC is traced and measured.
  const telemetry = await startTelemetry({ version: VERSION, prometheus, log });
  daemon = await Daemon.start({
    listen: o.listen,
    httpListen: o.httpListen,
    pinRoot: o.pinRoot,
    objectPath: o.bpfObject,
    descriptorPath: o.descriptor,
    mode: o.xdpMode,
    fixVethPeers: o.fixVethPeers,
    cleanupOnExit: o.cleanupOnExit,
    capacity: capacityForRules(maxRules),
    stateDir: o.state ? o.stateDir : undefined,
    resetDatapath: o.resetDatapath,
    configPath: o.config,
    tls: o.tlsCert ? { certFile: o.tlsCert, keyFile: o.tlsKey!, clientCaFile: o.tlsClientCa, refreshMs } : undefined,
    log,
    telemetry,
    auth,
    authConfigPath: o.authConfig,
    insecure: o.insecure,
    maxMessageBytes,
    maxWatchStreams,
    connectionLimits,
    socketMode,
    socketGroup: o.socketGroup,
    // Audit records are written whatever --log-level says (the same sink, counted apart when dropped).
    audit: pino({ ...logOptions, level: 'info' }, sink.audit).child({ audit: true }),
    logSink: sink,
  });
  // Tests and supervisors wait for this line: after every start-up log line (the same sink, in order).
  sink.write(
    `${JSON.stringify({
      msg: 'ready',
      addresses: daemon.addresses,
      ...(daemon.httpAddresses.length ? { http: daemon.httpAddresses } : {}),
      prometheus: telemetry.prometheus,
    })}\n`,
  );
  if (stopSignal) stop(stopSignal);
} catch (err) {
  log.error({ err }, 'start failed');
  process.stderr.write(`xdpctld: ${visible((err as Error).message, true)}\n`);
  exit(1);
}
