/**
 * Wiring of the daemon: datapath, controller, gRPC server (services, health,
 * reflection, error mapping), listeners, and an orderly shutdown. Used by
 * main.ts (the CLI) and by tests that start a daemon in-process.
 */
import {
  accessSync,
  chmodSync,
  chownSync,
  constants as fsConstants,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  watch,
  type FSWatcher,
} from 'node:fs';
import { createServer as createNetServer } from 'node:net';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { ServerCredentials } from '@grpc/grpc-js';
import { metrics } from '@opentelemetry/api';
import { createServer, ServerError, Status, type Server, type ServerMiddleware } from 'nice-grpc';
import { composeServerMiddleware } from 'nice-grpc-common';
import { HealthDefinition, HealthServiceImpl, HealthState } from 'nice-grpc-server-health';

import {
  AuthConfigError,
  defaultAuthConfig,
  loadAuthConfig,
  Policy,
  readUserDb,
  resolveGroup,
  type AuthConfig,
} from './auth/policy.js';
import {
  DEFAULT_MAX_MESSAGE_BYTES,
  DEFAULT_MAX_WATCH_STREAMS,
  DEFAULT_SOCKET_MODE,
  exposedPlaintext,
  listenHost,
  serverOptions,
} from './auth/transport.js';
import { ConfigWatcher } from './config-watcher.js';
import {
  DEFAULT_CONNECTION_LIMITS,
  destroyConnections,
  guardConnections,
  type ConnectionLimits,
} from './connection-guard.js';
import type { HttpJsonListener } from './http-json.js';
import { Controller } from './core/controller.js';
import { StateStore, stateDbPath, storeReason, type StoredState } from './core/store.js';
import { controllerHub, type CounterHub } from './core/counter-hub.js';
import { pacer } from './core/execute.js';
import { monotonicMs } from './core/clock.js';
import { LogDamper } from './core/log-damper.js';
import type { XdpModeName } from './core/dataplane.js';
import { KernelDataplane } from './dataplane/adapter.js';
import { assertOnBpffs } from './dataplane/bpffs.js';
import { childDeadlineMs } from './dataplane/children.js';
import { DEFAULT_CAPACITY, XdpDatapath, type Capacity } from './dataplane/datapath.js';
import {
  assertSocketNotLive,
  pathTaken,
  pinRootOwnership,
  lockInstance,
  liveDatapathOwners,
  DatapathInUseError,
  makeDirs,
  removeCreatedDirs,
  removeOwnSocket,
  socketIdentity,
  type InstanceLock,
} from './dataplane/instance-lock.js';
import { LinkMonitor } from './dataplane/link-monitor.js';
import { linkNames } from './dataplane/netdev.js';
import { DiskProbe } from './dataplane/disk-probe.js';
import { GenerationPin, readPinnedGeneration, removeGenerationPin } from './dataplane/store-generation.js';
import { checkStoreBehind } from './store-behind.js';
import { silentLogger, type Logger } from './log.js';
import { lazyReflection } from './reflection-lazy.js';
import { carryLongDeadlines } from './grpc-timeout.js';
import { accessMiddleware, listenerCredentials, usePeerCredentials, type AccessMiddleware } from './services/access.js';
import { peerCred, tcpSocketUid } from './dataplane/peer-cred.js';
import { logRefusedHandshakes, reloadingServerCredentials, type TlsFiles } from './tls.js';
import { counterService, sharedEncoding } from './services/counter-service.js';
import { daemonService } from './services/daemon-service.js';
import { interfaceService } from './services/interface-service.js';
import { linkService } from './services/link-service.js';
import { ruleService, ruleWireDefinition } from './services/rule-service.js';
import { errorMiddleware } from './services/status.js';
import { createTerminator, type Terminator } from './services/terminator.js';
import { registerDatapathMetrics } from './telemetry/datapath-metrics.js';
import { registerEventLoopMetrics } from './telemetry/event-loop-metrics.js';
import { registerLogMetrics, type LogSinkState } from './telemetry/log-metrics.js';
import { configMetrics, registerConfigMetrics } from './telemetry/config-metrics.js';
import type { ExportReport } from './telemetry/export-health.js';
import { registerGauges } from './telemetry/gauge-producer.js';
import { registerStateMetrics, storeMetrics } from './telemetry/state-metrics.js';
import { telemetryMiddleware } from './telemetry/rpc.js';
import { CounterServiceDefinition } from '../gen/xdpctl/v1/counters.js';
import { DaemonServiceDefinition } from '../gen/xdpctl/v1/daemon.js';
import { InterfaceServiceDefinition } from '../gen/xdpctl/v1/interface.js';
import { LinkServiceDefinition } from '../gen/xdpctl/v1/link.js';
import { RuleServiceDefinition } from '../gen/xdpctl/v1/rule.js';

export const PACKAGE_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const VERSION = (JSON.parse(readFileSync(`${PACKAGE_ROOT}package.json`, 'utf8')) as { version: string }).version;

export interface DaemonOptions {
  /** "host:port" or "unix:/path". */
  listen: string[];
  /**
   * Where to serve every unary RPC as HTTP/JSON too (the Connect protocol, http-json.ts): "host:port"
   * or "unix:/path"; none by default. Same TLS, identities, roles, validation and errors as gRPC.
   */
  httpListen?: string[];
  pinRoot: string;
  objectPath: string;
  descriptorPath: string;
  mode: XdpModeName;
  fixVethPeers: boolean;
  cleanupOnExit: boolean;
  /**
   * TLS for TCP listeners (PEM files, re-read when they change); with
   * clientCaFile, clients must present a certificate it signed.
   */
  tls?: TlsFiles;
  /** A YAML file that owns the desired state (config-file mode). */
  configPath?: string;
  /** Where the desired state persists (undefined: not persisted). */
  stateDir?: string;
  /**
   * Start even though the state store is missing while the pinned datapath
   * still holds rules or links: clear them and detach the program
   * (--reset-datapath). Without it such a start is refused.
   */
  resetDatapath?: boolean;
  capacity?: Partial<Capacity>;
  log?: Logger;
  /** Role allow-lists (--auth-config); undefined: the default policy (auth/policy.ts defaultAuthConfig). */
  auth?: AuthConfig;
  /** The --auth-config file `auth` was read from: read again on SIGHUP ({@link Daemon.reload}). */
  authConfigPath?: string;
  /** Serve plaintext on non-loopback TCP addresses; without it such a listener stops the start. */
  insecure?: boolean;
  /** Largest request message in bytes (default 4 MiB); larger ones are RESOURCE_EXHAUSTED. */
  maxMessageBytes?: number;
  /** Watch streams one client identity may hold open (default 256); more are RESOURCE_EXHAUSTED. */
  maxWatchStreams?: number;
  /** Preface timeout and connection bounds per peer and per listener (connection-guard.ts defaults). */
  connectionLimits?: ConnectionLimits;
  /** Mode of the Unix socket file (default 0o660). */
  socketMode?: number;
  /** Group (name or gid) of the Unix socket file; its members are read-only under the default policy. */
  socketGroup?: string;
  /**
   * How often the reconciler runs a full pass besides the rtnetlink triggers
   * (default 1000 ms); 0 turns both off (tests that measure the kernel writes
   * of single requests, where a background repair would count).
   */
  resyncMs?: number;
  /** Where audit records go (default: log.child({audit: true})). */
  audit?: Logger;
  /** The sink the log writes to (main.ts: stdout, bounded): its drops and backlog as metrics, its refused writes in GetStatus. */
  logSink?: LogSinkState;
  /**
   * The OpenTelemetry SDK started before the daemon (telemetry/sdk.ts
   * startTelemetry): the daemon shuts it down, flushing, when it stops.
   * Without it, spans and metrics go to whatever the global API has.
   */
  telemetry?: { shutdown(): Promise<void>; exports?(): ExportReport[] };
}

export const DEFAULTS = {
  listen: ['127.0.0.1:9091', 'unix:/run/xdpctl/xdpctl.sock'],
  pinRoot: '/sys/fs/bpf/xdpctl',
  objectPath: `${PACKAGE_ROOT}build/bpf/xdpctl.bpf.o`,
  descriptorPath: `${PACKAGE_ROOT}build/descriptor.binpb`,
  mode: 'auto' as XdpModeName,
  stateDir: '/var/lib/xdpctl',
};

/**
 * Health service name that is NOT_SERVING while an interface the desired
 * state needs is missing (the daemon itself keeps SERVING).
 */
export const DATAPATH_HEALTH = 'xdpctl.datapath';

/**
 * Health service name (with --config only) that is SERVING while the config file on disk is in force and
 * NOT_SERVING while it is refused (the datapath then runs the last good configuration; DaemonService
 * GetStatus says which file, since when and why).
 */
export const CONFIG_HEALTH = 'xdpctl.config';

export const SERVICE_NAMES = [
  'xdpctl.v1.RuleService',
  'xdpctl.v1.LinkService',
  'xdpctl.v1.InterfaceService',
  'xdpctl.v1.CounterService',
  'xdpctl.v1.DaemonService',
  'grpc.health.v1.Health',
  'grpc.reflection.v1.ServerReflection',
  'grpc.reflection.v1alpha.ServerReflection',
];

/** How long a shutdown lets calls finish before it closes every connection. */
export const SHUTDOWN_GRACE_MS = 5000;
/**
 * At a stop, how long every write to the state directory together may take (ms): the store's write-back under
 * way, --cleanup-on-exit's write of the host-changes record, the stop's own write of it, the store's close. Past
 * it (or at once when the disk probe already found the disk not answering: a frozen file system), the stop says
 * what it could not write and leaves the store's checkpoint and the lock file's removal to the next start,
 * instead of waiting for the disk.
 */
export const STOP_DISK_MS = 1500;
/** How long a shutdown waits for the last telemetry export (spans of the calls just drained). */
export const TELEMETRY_FLUSH_MS = 2000;

/** Problems listed in a "datapath not as desired" line; the rest are counted (GetStatus lists them all). */
export const LOGGED_PROBLEMS = 100;

/**
 * The problems a "datapath not as desired" line lists: all of them up to {@link LOGGED_PROBLEMS}, else the first
 * ones with `problemCount` (how many there are) and `notListed` (how many the line leaves out).
 */
export function loggedProblems(problems: readonly string[]): {
  problems: readonly string[];
  problemCount?: number;
  notListed?: number;
} {
  if (problems.length <= LOGGED_PROBLEMS) return { problems };
  return {
    problems: problems.slice(0, LOGGED_PROBLEMS),
    problemCount: problems.length,
    notListed: problems.length - LOGGED_PROBLEMS,
  };
}

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Map capacities for a number of rules (each rule may hold a shadow slot during a change). */
export function capacityForRules(maxRules: number): Capacity {
  return {
    links: 1024,
    ruleSlots: 2 * maxRules + 1,
    statsIds: maxRules + 1,
    matches: 4 * maxRules,
    srcPrefixes: 16 * maxRules,
    backends: 16 * maxRules + 1,
  };
}

/** A running daemon. */
export class Daemon {
  readonly servers: Server[] = [];
  config?: ConfigWatcher;
  /** Bound addresses, with the real port for ":0". */
  readonly addresses: string[] = [];
  /** HTTP/JSON listeners (--http-listen) and their bound addresses. */
  readonly http: HttpJsonListener[] = [];
  readonly httpAddresses: string[] = [];
  private stopping?: Promise<void>;

  private constructor(
    readonly opts: DaemonOptions,
    readonly datapath: XdpDatapath,
    readonly controller: Controller,
    readonly hub: CounterHub,
    readonly health: HealthState,
    private readonly log: Logger,
    private ready: { value: boolean },
  ) {}

  static async start(opts: DaemonOptions): Promise<Daemon> {
    const log = opts.log ?? silentLogger;
    const httpListen = opts.httpListen ?? [];
    const exposedGrpc = exposedPlaintext(opts.listen, opts.tls !== undefined);
    const exposedHttp = exposedPlaintext(httpListen, opts.tls !== undefined);
    const exposed = [...exposedGrpc, ...exposedHttp];
    const exposedText = [
      ...(exposedGrpc.length ? [`gRPC on ${exposedGrpc.join(', ')}`] : []),
      ...(exposedHttp.length ? [`HTTP/JSON on ${exposedHttp.join(', ')}`] : []),
    ].join(' and ');
    if (exposed.length && !opts.insecure) {
      throw new Error(
        `refusing to serve plaintext ${exposedText}: anyone who can reach it could read and change ` +
          "this host's forwarding. Give --tls-cert and --tls-key (and --tls-client-ca), listen on loopback, " +
          'or pass --insecure to accept the risk',
      );
    }
    const userDb = readUserDb();
    const socketGid = opts.socketGroup === undefined ? undefined : resolveGroup(opts.socketGroup, userDb);
    const policy = opts.auth
      ? new Policy(opts.auth, userDb)
      : new Policy(defaultAuthConfig({ selfUid: process.geteuid?.() ?? 0, socketGid }), userDb, true);
    usePeerCredentials(peerCred, tcpSocketUid);
    const access = accessMiddleware({
      policy,
      audit: opts.audit ?? log.child({ audit: true }),
      maxWatchStreams: opts.maxWatchStreams ?? DEFAULT_MAX_WATCH_STREAMS,
    });
    // Every configuration input is checked before the kernel is touched: a start refused for its
    // configuration (an expired or unreadable certificate, a missing file, an address it cannot listen
    // on) leaves no pin, program or tracepoint link behind.
    // One TLS set (files, checks, rotation) for every TCP listener, gRPC and HTTP/JSON.
    const tlsSet = opts.tls && reloadingServerCredentials(opts.tls, log);
    if (!existsSync(opts.descriptorPath)) {
      throw new Error(`descriptor set ${opts.descriptorPath} is missing (run npm run generate)`);
    }
    if (!existsSync(opts.objectPath)) {
      throw new Error(`open ${opts.objectPath}: no such file (run npm run build:bpf)`);
    }
    const listeners = [
      ...opts.listen.map((a) => ['--listen', a] as const),
      ...httpListen.map((a) => ['--http-listen', a] as const),
    ];
    // Directories this start makes (socket and state directories, the pin root and their parents): a
    // refused start removes them again, leaving nothing it created.
    const created: string[] = [];
    // The state database files that were there before this start: the others are this start's, and a
    // refused start removes them again (an existing directory keeps what it had).
    const stateBefore = opts.stateDir ? existingStateFiles(opts.stateDir) : [];
    const undoCreated = () => {
      // A state directory of this start: its files are ours alone (the store is closed by then).
      if (opts.stateDir && created.includes(opts.stateDir)) removeNewState(opts.stateDir);
      else if (opts.stateDir) removeNewState(opts.stateDir, stateBefore);
    };
    try {
      await probeListeners(
        listeners.filter(([, a]) => a.startsWith('unix:')), // their directories
        created,
      );
      assertOnBpffs(opts.pinRoot); // before anything is locked or loaded
    } catch (e) {
      removeCreatedDirs(created);
      throw e;
    }
    // What a refused start must put back: a pin root that was absent or empty is removed or emptied again.
    const pinRootBefore = pinRootState(opts.pinRoot);
    // One daemon per datapath: before anything is read or written, lock the
    // pin root, the state directory and every socket path (a second daemon
    // stops here, naming the first).
    let lock: InstanceLock;
    try {
      lock = lockInstance(
        {
          pinRoot: opts.pinRoot,
          stateDir: opts.stateDir,
          sockets: [...opts.listen, ...httpListen].filter((a) => a.startsWith('unix:')).map((a) => a.slice(5)),
          listen: [...opts.listen, ...httpListen],
        },
        created,
      );
    } catch (e) {
      restorePinRoot(opts.pinRoot, pinRootBefore); // created by preparePinRoot before a later lock failed
      removeCreatedDirs(created);
      throw e;
    }
    let datapath: XdpDatapath;
    let store: StateStore | undefined;
    let stored: StoredState | undefined;
    /** Why the pinned entries are cleared (--reset-datapath over state this daemon does not have). */
    let resetWhy: string | undefined;
    /** The store generation the pins record, read before anything is changed (undefined: none). */
    let pinGeneration: number | undefined;
    /** Why it cannot be read (the pins hold one that is not readable). */
    let pinGenerationUnreadable: string | undefined;
    try {
      // Each TCP address is bound once and closed (after the lock: a second daemon is named by it first).
      await probeListeners(listeners.filter(([, a]) => !a.startsWith('unix:')));
      // A lock file can be removed by hand: a socket path that a live process serves on is refused
      // here too, before anything is loaded (and checked again just before its listener is made).
      for (const a of [...opts.listen, ...httpListen]) if (a.startsWith('unix:')) await assertSocketNotLive(a.slice(5));
      // One daemon per datapath by its kernel objects, not by path: the maps and programs pinned here,
      // by id, must not be held by another live xdpctld (a pin root renamed under it, pins moved or
      // pinned again elsewhere). Refused before anything is read or changed, --reset-datapath or not.
      const ids = XdpDatapath.pinnedObjectIds(opts.pinRoot);
      const owners = liveDatapathOwners(ids.maps, ids.progs);
      if (owners.length) throw new DatapathInUseError(opts.pinRoot, owners);
      // Refuse to wipe a datapath that forwards with state this daemon does not have, before anything
      // in the kernel is opened or changed: what the pins in use hold (of any capacity or layout: a
      // --max-rules change migrates from them, and would otherwise start on new, empty maps).
      const pinned = XdpDatapath.pinnedForwarding(opts.pinRoot);
      resetWhy = checkMissingStore(opts, pinned);
      if (opts.stateDir && !resetWhy) {
        store = StateStore.open(opts.stateDir); // a corrupt or newer store stops the start, untouched
        stored = store.load();
        // A smaller --max-rules than the stored rules need would migrate to maps that cannot hold them
        // all and drop the rest from a datapath that forwards them: refused, before the kernel is touched.
        checkStoreFits(store.path, stored, { ...DEFAULT_CAPACITY, ...opts.capacity });
        resetWhy = checkStoreOwner(opts, pinned, store, stored);
        // A store of this pin root that is older than what the pins were last written from: refused too.
        if (!resetWhy) resetWhy = checkStoreBehind(opts, pinned, store, stored, log)?.reset;
      }
      const pins = readPinnedGeneration(opts.pinRoot);
      if (pins.kind === 'generation') pinGeneration = pins.generation;
      else if (pins.kind === 'unreadable') pinGenerationUnreadable = pins.why;
      datapath = XdpDatapath.open({
        objectPath: opts.objectPath,
        pinRoot: opts.pinRoot,
        capacity: opts.capacity,
        log,
        deferTrace: true, // pins and tracepoint links replaced once the start commits (below)
      });
    } catch (e) {
      await store?.close();
      restorePinRoot(opts.pinRoot, pinRootBefore);
      undoCreated();
      lock.release();
      removeCreatedDirs(created);
      throw e;
    }
    // Device settings we change (GRO on veth peers, offloads turned off for XDP) are recorded beside the
    // state, for --cleanup-on-exit.
    const dp = new KernelDataplane(datapath, opts.stateDir && join(opts.stateDir, 'host-changes.json'), log);
    // Records of devices gone for good (deleted, or made again: another device) are said once and dropped.
    await dp.dropGoneRecords();
    try {
      if (resetWhy) resetDatapath(opts, dp, log, resetWhy);
      if (opts.stateDir && !store) {
        store = StateStore.open(opts.stateDir);
        stored = store.load();
      }
      // What restore says of a rule the pins hold and the store lacks comes from these (a reset, a store older than
      // the pins, a change not committed), read before the store's generation moves below.
      if (stored && store) {
        stored.reset = resetWhy;
        stored.pins = { generation: pinGeneration, unreadable: pinGenerationUnreadable, store: store.generation };
      }
      // A store taken as the truth over pins of a later generation (--reset-datapath, or a store and pins that
      // both held nothing) continues above them: the store they were written from is behind from now on.
      if (store && pinGeneration !== undefined && pinGeneration > store.generation) {
        if (!store.setGeneration(pinGeneration + 1)) {
          log.warn({ path: store.path }, 'the state store cannot record its generation (it cannot persist)');
        }
      }
      if (store) {
        const pinRoot = resolve(opts.pinRoot);
        if (store.meta('pin_root') !== pinRoot && !store.setMeta('pin_root', pinRoot)) {
          log.warn(
            { path: store.path },
            `the state store cannot record that it belongs to ${pinRoot} (it cannot persist)`,
          );
        }
        if (store.problem) {
          log.error(
            { err: store.problem, path: store.path },
            `the state store cannot persist: ${store.problem.message}. Serving reads and the adopted datapath; ` +
              'every change is refused until the disk accepts writes again',
          );
        }
      }
    } catch (e) {
      await store?.close();
      datapath.close();
      restorePinRoot(opts.pinRoot, pinRootBefore);
      undoCreated();
      lock.release();
      removeCreatedDirs(created);
      throw e;
    }
    const controller = new Controller(dp, {
      mode: opts.mode,
      fixVethPeers: opts.fixVethPeers,
      log,
      store,
    });
    // Every counter read in slices (a scrape, GetCounters, each WatchCounters tick), shared while it runs.
    const hub = controllerHub(controller);
    // Datapath counters as metrics, fed by the hub's shared reads (after the SDK started).
    const unregisterDatapath = registerDatapathMetrics(metrics.getMeter('xdpctld', VERSION), hub, {
      name: 'xdpctld',
      version: VERSION,
    });
    const unregisterLoop = registerEventLoopMetrics(metrics.getMeter('xdpctld', VERSION));
    const unregisterLog = opts.logSink
      ? registerLogMetrics(metrics.getMeter('xdpctld', VERSION), opts.logSink)
      : () => undefined;
    const unregisterState = registerStateMetrics(metrics.getMeter('xdpctld', VERSION), controller);
    const unregisterStore = registerGauges(storeMetrics, () => controller.stateStore(), {
      name: 'xdpctld',
      version: VERSION,
    });
    /** Config-file mode's watcher, once made (the status, its health service and its metrics report it). */
    let config: ConfigWatcher | undefined;
    const unregisterConfig = registerConfigMetrics(() => config?.report(), { name: 'xdpctld', version: VERSION });
    const unregisterTls = configMetrics.attachTls(() => tlsSet?.provider.status());
    const unregisterMetrics = () => {
      unregisterTls();
      unregisterConfig();
      unregisterStore();
      unregisterState();
      unregisterDatapath();
      unregisterLoop();
      unregisterLog();
    };
    const ready = { value: false };
    const startedAt = monotonicMs(); // uptime is an age: a wall-clock step is not time up

    // Until the datapath is reconciled, only health and reflection answer.
    const gate: ServerMiddleware = async function* (call, context) {
      if (!ready.value && call.method.path.startsWith('/xdpctl.')) {
        throw new ServerError(Status.UNAVAILABLE, 'xdpctld is starting: the datapath is not reconciled yet');
      }
      return yield* call.next(call.request, context);
    };
    // Ends health Watch streams at shutdown (UNAVAILABLE) instead of letting them hold it up.
    const terminator = createTerminator();
    const health = HealthState();
    health.setStatus('unhealthy');
    const descriptorPath = opts.descriptorPath;
    const reflection = lazyReflection(() => readFileSync(descriptorPath), SERVICE_NAMES);
    // WatchCounters responses are encoded once per message, shared by identical streams.
    const counterDefinition = sharedEncoding(CounterServiceDefinition);
    // ApplyRules decoded and encoded a chunk at a time (10 000 rules: no long turn of the event loop).
    const ruleDefinition = ruleWireDefinition(RuleServiceDefinition);
    const services = {
      rules: ruleService(controller),
      links: linkService(controller),
      interfaces: interfaceService(controller),
      counters: counterService(hub, (name) => controller.hasRule(name)),
      daemon: daemonService(controller, dp, {
        version: VERSION,
        startedAt,
        serving: () => ready.value,
        configFile: () => config?.report(),
        tls: tlsSet ? () => tlsSet.provider.status() : undefined,
        telemetryExports: () => opts.telemetry?.exports?.() ?? [],
        logWriteProblem: () => opts.logSink?.writeProblem?.(),
      }),
      health: HealthServiceImpl(health),
    };
    // nice-grpc binds one address per server: one server per listener, same services.
    const makeServer = () => {
      // Telemetry first: the RPC span covers everything else the call does.
      // Then access: it sees every call's identity and, around errorMiddleware, its final code.
      const server = createServer(serverOptions(opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES))
        .use(telemetryMiddleware())
        .use(access)
        .use(errorMiddleware(log))
        .use(gate)
        .use(terminator.middleware);
      server.add(HealthDefinition, services.health);
      server.add(reflection.v1.definition, reflection.v1.implementation);
      server.add(reflection.v1alpha.definition, reflection.v1alpha.implementation);
      server.add(ruleDefinition, services.rules);
      server.add(LinkServiceDefinition, services.links);
      server.add(InterfaceServiceDefinition, services.interfaces);
      server.add(counterDefinition, services.counters);
      server.add(DaemonServiceDefinition, services.daemon);
      return server;
    };
    const daemon = new Daemon(opts, datapath, controller, hub, health, log, ready);
    daemon.store = store;
    daemon.terminator = terminator;
    daemon.access = access;
    daemon.unregisterMetrics = unregisterMetrics;
    daemon.lock = lock;
    daemon.kernel = dp;
    // Each commit of the store writes its generation into the pins (a later start compares the two).
    daemon.generationPin = new GenerationPin(opts.pinRoot);
    if (store) daemon.watchGeneration(store);
    // The state directory's disk, probed each pass off the event loop (a frozen disk said before a change hits it).
    if (opts.stateDir) daemon.diskProbe = new DiskProbe(opts.stateDir, log);
    if (store) store.disk = daemon.diskProbe;
    daemon.tlsProvider = tlsSet ? tlsSet.provider : undefined;
    daemon.policy = policy;

    guardConnections(opts.connectionLimits ?? DEFAULT_CONNECTION_LIMITS, log);
    // grpc-js misreads a grpc-timeout past 2^31-1 ms (~24.8 days) as already passed: grpc-timeout.ts.
    carryLongDeadlines();
    const tlsOf = () => tlsSet;
    // Refused handshakes on every TLS listener (gRPC and HTTP/JSON) are logged at a bounded rate.
    // A reason names what the daemon knows: its own certificate's validity, whether client certificates are asked.
    if (tlsSet) logRefusedHandshakes(log, () => tlsSet.provider.status());
    try {
      for (const addr of opts.listen) {
        if (addr.startsWith('unix:')) {
          const path = addr.slice(5);
          const listenUnix = async () => {
            const server = makeServer();
            daemon.servers.push(server);
            mkdirSync(dirname(path), { recursive: true });
            // We hold its lock; still, a live listener (its lock file removed by hand, or not an xdpctld)
            // is refused, never unlinked: only a stale file goes.
            await assertSocketNotLive(path);
            rmSync(path, { force: true });
            const umask = process.umask(0o177); // no window in which others may connect
            try {
              await server.listen(addr, listenerCredentials('unix', ServerCredentials.createInsecure()));
            } finally {
              process.umask(umask);
            }
            if (socketGid !== undefined) chownSync(path, process.geteuid?.() ?? 0, socketGid);
            chmodSync(path, opts.socketMode ?? DEFAULT_SOCKET_MODE);
            daemon.socketInodes.set(path, socketIdentity(path));
          };
          await listenUnix();
          daemon.relisten.set(path, listenUnix);
          daemon.addresses.push(addr);
        } else {
          const server = makeServer();
          daemon.servers.push(server);
          const creds = tlsOf()?.credentials ?? ServerCredentials.createInsecure();
          const port = await server.listen(addr, listenerCredentials('tcp', creds));
          daemon.addresses.push(addr.replace(/:\d+$/, `:${port}`));
        }
      }
      if (httpListen.length) {
        // Loaded only when asked for: a daemon without --http-listen pays nothing for it.
        const { startHttpJson, unaryMethods } = await import('./http-json.js');
        const methods = unaryMethods(
          [
            { definition: RuleServiceDefinition, implementation: services.rules },
            { definition: LinkServiceDefinition, implementation: services.links },
            { definition: InterfaceServiceDefinition, implementation: services.interfaces },
            { definition: CounterServiceDefinition, implementation: services.counters },
            { definition: DaemonServiceDefinition, implementation: services.daemon },
          ],
          [telemetryMiddleware(), access, errorMiddleware(log), gate].reduce((a, b) => composeServerMiddleware(a, b)),
        );
        const descriptor = readFileSync(descriptorPath);
        for (const addr of httpListen) {
          const listen = async () => {
            const l = await startHttpJson({
              listen: addr,
              descriptor,
              methods,
              tls: addr.startsWith('unix:') ? undefined : tlsOf()?.material,
              maxMessageBytes: opts.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
              socketMode: opts.socketMode ?? DEFAULT_SOCKET_MODE,
              socketGid,
              log,
            });
            daemon.http.push(l);
            if (l.unixSocket) daemon.socketInodes.set(l.unixSocket.path, l.unixSocket.ino);
            return l;
          };
          const l = await listen();
          if (l.unixSocket) daemon.relisten.set(l.unixSocket.path, listen);
          daemon.httpAddresses.push(l.address);
        }
      }
      if (stored) await controller.restore(stored);
      else controller.reconcile();
      if (opts.configPath) {
        daemon.config = config = new ConfigWatcher(opts.configPath, controller, log, (r) =>
          health.setStatus(r.inForce ? 'healthy' : 'unhealthy', CONFIG_HEALTH),
        );
        await daemon.config.start();
      }
      // Pinned maps of another capacity or layout: the new maps now hold the
      // rules and links; switch every interface to the new program.
      if (datapath.migrating) datapath.finishMigration();
      // The pins say which store generation they hold (a start that committed nothing writes it here); a
      // datapath run with --no-state is described by no store: its generation goes.
      if (store) daemon.writeGeneration(store.generation);
      else {
        try {
          removeGenerationPin(opts.pinRoot);
        } catch (err) {
          log.warn({ err, pinRoot: opts.pinRoot }, 'the pinned store generation could not be removed');
        }
      }
    } catch (e) {
      daemon.generationPin?.close();
      daemon.config?.close();
      await Promise.all(daemon.servers.map((x) => x.shutdown()));
      await Promise.all(daemon.http.map((x) => x.close()));
      unregisterMetrics();
      if (pinRootBefore !== 'in use') {
        // A fresh pin root: nothing of this start may stay (attachments, GRO it switched on, pins).
        const r = await dp.cleanupHost().catch((err: Error) => ({ failed: [err.message], detached: [] }));
        if (r.failed.length) log.error({ failed: r.failed }, 'refused start: host not fully restored');
      } else if (datapath.migrating) {
        // The old maps in maps/ still serve; the next start migrates again from them.
        XdpDatapath.removeNextMaps(opts.pinRoot);
      }
      await store?.close();
      datapath.close();
      restorePinRoot(opts.pinRoot, pinRootBefore);
      for (const [path, ino] of daemon.socketInodes) removeOwnSocket(path, ino);
      undoCreated();
      lock.release();
      removeCreatedDirs(created);
      throw e;
    }
    // Committed: the program's pins and the tracepoint programs replace the previous daemon's.
    datapath.commit();
    ready.value = true;
    daemon.health.setStatus('healthy');
    // The datapath's health from what the restore found (a rule waiting for its interfaces, a rule that
    // failed), never assumed: it was SERVING until the first pass, up to a second later. That pass runs at once.
    daemon.health.setStatus(controller.problems().length ? 'unhealthy' : 'healthy', DATAPATH_HEALTH);
    daemon.startResync();
    log.info(
      {
        addresses: daemon.addresses,
        httpAddresses: daemon.httpAddresses,
        progId: datapath.progId,
        adopted: datapath.adopted,
      },
      'serving',
    );
    if (exposed.length) {
      log.warn(
        { insecure: true, addresses: exposed },
        `INSECURE: plaintext ${exposedText} (--insecure): anyone on the network can reach this ` +
          'daemon; callers there are anonymous and get only the roles the auth config grants "anonymous"',
      );
    }
    return daemon;
  }

  /** The state store (undefined with --no-state). */
  store?: StateStore;
  /** Whether the state directory's disk completes a write (dataplane/disk-probe.ts); undefined with --no-state. */
  diskProbe?: DiskProbe;
  private resyncTimer?: NodeJS.Timeout;
  private terminator?: Terminator;
  /** Its audit records wait a turn of the event loop (access.ts): written at once at stop. */
  private access?: AccessMiddleware;
  private unregisterMetrics?: () => void;
  /** The instance lock (pin root, state directory, sockets), released last at stop. */
  private lock?: InstanceLock;
  /** Each gRPC Unix socket this daemon created, with the inode it had (removed at stop only if unchanged). */
  readonly socketInodes = new Map<string, string | undefined>();
  /** For each Unix socket we listen on (gRPC and HTTP/JSON): listen on its path again (a new listener). */
  readonly relisten = new Map<string, () => Promise<unknown>>();
  private kernel?: KernelDataplane;

  /**
   * The reconciler's passes (core/resync.ts): every second, and at once when
   * rtnetlink reports a link or neighbour change. The xdpctl.datapath health
   * service is SERVING only while a pass finds nothing wrong; what it finds
   * is logged when it changes, not every second.
   */
  private startResync(): void {
    let busy = false;
    let again = false;
    /** The problems last logged (undefined: none logged yet). */
    let reported: readonly string[] | undefined;
    const damper = new LogDamper();
    /** When an overdue pass was said (undefined: none said), to say when it ends. */
    let overdueSaid: number | undefined;
    /** The cause of the failed passes said last (a pass that completes again is said, and clears it). */
    let failedSaid: string | undefined;
    // 10 s by default (twice a child's deadline when that is longer); XDPCTL_PASS_OVERDUE_MS sets it (tests).
    const setMs = Number(process.env.XDPCTL_PASS_OVERDUE_MS);
    const overdueMs = Number.isFinite(setMs) && setMs > 0 ? setMs : Math.max(10_000, 2 * childDeadlineMs());
    // A pass that does not end (every child it starts is bounded, children.ts; but a pass may start many, and a
    // read may wedge) is said at once, by every read of the daemon: GetStatus warnings, xdpctl.datapath
    // NOT_SERVING, the problems gauge and xdpctl.reconciler.last_pass_age; logged once per pass.
    const watchdog = () => {
      const overdue = this.controller.passOverdue(overdueMs);
      if (!overdue) return;
      this.health.setStatus('unhealthy', DATAPATH_HEALTH);
      if (overdueSaid === undefined) {
        overdueSaid = monotonicMs();
        this.log.warn({ overdueMs }, overdue);
      }
    };
    const pass = () => {
      if (!this.ready.value) return;
      if (busy) {
        again = true;
        watchdog();
        return;
      }
      busy = true;
      this.passInFlight = this.controller
        .resync()
        .then(async (missing) => {
          if (failedSaid !== undefined) {
            this.log.info({ failed: failedSaid }, 'resync: a pass completed again');
            failedSaid = undefined;
          }
          if (overdueSaid !== undefined) {
            this.log.info(
              { overdueSinceMs: monotonicMs() - overdueSaid },
              `the reconciler's overdue pass ended: statuses are current again`,
            );
            overdueSaid = undefined;
          }
          this.missingInterfaces = missing;
          const pinProblems = this.checkPins();
          const fileProblems = await this.checkOwnFiles();
          this.controller.setOwnFileProblems([...pinProblems, ...fileProblems]);
          // Built and compared in slices (one line per rule not ACTIVE: 10 000 of them took one long turn).
          const pace = pacer();
          const problems = await this.controller.problemsPaced(pace);
          this.health.setStatus(problems.length ? 'unhealthy' : 'healthy', DATAPATH_HEALTH);
          if (!(await sameLines(problems, reported, pace))) {
            // Said at each change; summarised while the problems flap (log-damper.ts).
            const t = monotonicMs();
            if (problems.length) {
              // At most LOGGED_PROBLEMS of them in the line, with their count: 10 000 rules not ACTIVE made one
              // line of ~2 MB, serialized and written in one turn (each log line is written at once while stdout is read).
              const listed = loggedProblems(problems);
              damper.line(
                'datapath',
                t,
                () => this.log.warn({ missing, ...listed }, 'datapath not as desired'),
                (n, ms) =>
                  this.log.warn(
                    { missing, ...listed, notLogged: n, ms },
                    `datapath not as desired: ${n} more changes of what is wrong in ${Math.round(ms / 1000)} s not ` +
                      'logged one by one (flapping); the last of them is this one',
                  ),
              );
            } else if (reported !== undefined && reported.length > 0) {
              damper.line(
                'datapath',
                t,
                () => this.log.info({}, 'datapath as desired again'),
                (n, ms) =>
                  this.log.info(
                    { notLogged: n, ms },
                    `datapath as desired again: ${n} changes of what is wrong in ${Math.round(ms / 1000)} s not ` +
                      'logged one by one (flapping); the last of them is this one',
                  ),
              );
            }
            reported = problems;
          }
          damper.flush(monotonicMs());
        })
        .catch((err) => {
          overdueSaid = undefined;
          // Said once per cause while passes keep failing (damped while it flaps), not a line per pass.
          const why = (err as Error)?.message ?? String(err);
          if (why === failedSaid) return;
          failedSaid = why;
          damper.line(
            'resync-failed',
            monotonicMs(),
            () => this.log.error({ err }, 'resync failed'),
            (n, ms) =>
              this.log.error(
                { err, notLogged: n, ms },
                `resync failed: ${n} more changes of cause in ${Math.round(ms / 1000)} s not logged one by one; the last of them is this one`,
              ),
          );
        })
        .finally(() => {
          busy = false;
          if (again) {
            again = false;
            setImmediate(pass);
          }
        });
    };
    const every = this.opts.resyncMs ?? 1000;
    if (every <= 0) return;
    this.resyncTimer = setInterval(pass, every);
    this.monitor = new LinkMonitor(pass, this.log, 50, () => this.kernel?.routesChanged());
    // A MAC that answered an ARP request of ours (one not answered before): acted on at once.
    if (this.kernel) this.kernel.onNeighbourAnswer = pass;
    // The pin root removed or replaced (rm -rf PINROOT): a pass at once, not up to a period later, so that
    // its lock is taken again before a second daemon could take it. bpffs reports its changes to inotify.
    const root = basename(this.opts.pinRoot);
    try {
      this.pinRootWatch = watch(dirname(this.opts.pinRoot), (_e, name) => {
        if (name === root) pass();
      });
      this.pinRootWatch.on('error', () => this.pinRootWatch?.close()); // its directory gone: the passes remain
    } catch {
      // no inotify here: the periodic passes remain
    }
    // The same for the state directory (rm -rf STATE_DIR): made again, locked again, a fresh store at once.
    if (this.opts.stateDir) {
      const dir = basename(this.opts.stateDir);
      try {
        this.stateDirWatch = watch(dirname(this.opts.stateDir), (_e, name) => {
          if (name === dir) pass();
        });
        this.stateDirWatch.on('error', () => this.stateDirWatch?.close());
      } catch {
        // no inotify here: the periodic passes remain
      }
    }
    setImmediate(pass); // the first look at the host, and its report, now rather than a period later
  }

  private monitor?: LinkMonitor;
  /** The TLS files' provider (reload on SIGHUP), when TCP listeners serve TLS. */
  private tlsProvider?: { reload(): { state: string; rotations: number } };

  /**
   * SIGHUP (signals.ts): read again what can be read again while running, each now rather than at its next
   * look: the `--config` file (applied, or refused keeping the last good configuration, as a change seen by
   * its watches would be), the TLS certificate, key and client CA (taken if they are a valid set, as the
   * periodic re-read would) and the --auth-config file ({@link reloadAuth}). What each gave, and what is read
   * at start only, for the log line.
   */
  async reload(signal: string): Promise<object> {
    if (this.stopping) return { nothing: 'the daemon is stopping' };
    const config = this.config
      ? await this.config.reload(signal)
      : 'no --config file (rules and links come from the API)';
    const tls = this.tlsProvider ? this.tlsProvider.reload() : 'no TLS (no --tls-cert)';
    const auth = this.reloadAuth();
    return { config, tls, auth, readAtStartOnly: 'the command line' };
  }

  /** The roles policy, whose allow-lists SIGHUP replaces when --auth-config was given. */
  private policy?: Policy;

  /**
   * SIGHUP: --auth-config read again (and /etc/passwd and /etc/group, which its user and group names resolve
   * through). A valid file replaces the allow-lists for every call from then on (streams already open keep
   * the role they were admitted with); an invalid or unreadable one is refused, logged as an error naming
   * each problem, and the roles in force stay. What it gave, for the reload line.
   */
  private reloadAuth(): string | { file: string; roles: string } | { file: string; refused: string[]; kept: string } {
    const file = this.opts.authConfigPath;
    if (!file || !this.policy) return 'no --auth-config (the default roles)';
    const grants = (c: AuthConfig) => `${c.admin.length} admin, ${c.readOnly.length} read-only grant(s)`;
    try {
      const db = readUserDb();
      const next = loadAuthConfig(file, db);
      this.policy.replace(next, db);
      return { file, roles: `in force: ${grants(next)}` };
    } catch (e) {
      const problems = e instanceof AuthConfigError ? e.problems : [(e as Error).message];
      const kept = `the roles in force stay (${grants(this.policy.config)})`;
      this.log.error(
        { authConfig: file, problems },
        `--auth-config ${file} refused on reload: ${problems.join('; ')}; ${kept}`,
      );
      return { file, refused: problems, kept };
    }
  }
  private pinRootWatch?: FSWatcher;
  /**
   * The reconciler pass running now (it never rejects): stop() waits for it before --cleanup-on-exit and
   * closing the datapath, or a pass suspended at an await (an ethtool check) would re-attach what the
   * cleanup just detached.
   */
  private passInFlight?: Promise<void>;
  private stateDirWatch?: FSWatcher;
  /** The last problem with the state directory or a socket's lock file ('' when none), logged once. */
  private fileProblem = '';
  /** The state store could not be written again after its directory was removed: retried each pass. */
  private storeLost = false;

  /**
   * The state directory and each socket's lock file, as {@link checkPins} does for the pin root. A state
   * directory removed under the running daemon (`rm -rf STATE_DIR`) is made again (0700) and locked again
   * (a second daemon on it is refused throughout: the lock held on the removed file names this one), and
   * the whole desired state is written into a fresh store at once (with the record of the device settings
   * changed, for --cleanup-on-exit), logged as an error: what was on disk was lost, and whatever else was
   * kept there (TLS files, a config) is not put back. A lock file removed or replaced by hand is taken
   * again. What cannot be done is a problem of the datapath (reported with the rest, logged once).
   */
  private async checkOwnFiles(): Promise<string[]> {
    if (!this.ready.value || !this.lock) return []; // stopping
    const problems: string[] = [];
    const dir = this.opts.stateDir;
    if (dir) {
      let fileChanged: string | undefined;
      try {
        const r = this.lock.checkStateDir();
        // The database file itself removed or replaced (rm state.db*, the directory left): its connection
        // writes to a file no directory holds; changes are refused (StateStore.begin) until this renewal.
        fileChanged = r === 'created' || r === 'relocked' ? undefined : this.store?.fileChanged();
        if (r === 'created' || r === 'relocked') await this.renewStore(dir, r);
        else if (fileChanged) await this.renewStore(dir, 'file', fileChanged);
        else if (this.storeLost) await this.renewStore(dir, 'held');
      } catch (e) {
        problems.push(
          fileChanged
            ? `state store ${this.store?.path} ${fileChanged} under the running daemon and could not be written ` +
                `again: ${(e as Error).message}. Changes are refused until it is`
            : `state directory ${dir} was removed or replaced under the running daemon and could not be taken ` +
                `again: ${(e as Error).message}. Changes are not persisted`,
        );
      }
      // Device settings changed while the disk refused writes: recorded once it takes them (--cleanup-on-exit).
      this.kernel?.saveHostChangesPending();
    }
    const s = this.lock.checkSocketLocks();
    if (s.relocked.length) {
      this.log.warn(
        { locks: s.relocked },
        'socket lock files removed or replaced under the running daemon: locked again',
      );
    }
    for (const f of s.failed) problems.push(`socket lock ${f.path} could not be taken again: ${f.error.message}`);
    problems.push(...(await this.checkSockets()));
    const now = problems.join('; ');
    if (now && now !== this.fileProblem) this.log.error({ problems }, now);
    this.fileProblem = now;
    // A store that refuses writes: logged once by checkStoreWrites (with the disk's error).
    if (dir) await this.checkLateCommits();
    // Another writer's changes to the store (rows removed, changed, added): written back, said once each.
    // Not awaited: it waits its turn behind a client's change, which the pass does not wait for.
    if (dir && this.store && !this.storeCheck) {
      this.storeCheck = this.controller
        .checkStore()
        .catch((err: unknown) => this.log.warn({ err }, 'the state store could not be compared with the desired state'))
        .finally(() => (this.storeCheck = undefined));
    }
    return dir ? [...problems, ...(await this.checkStoreWrites())] : problems;
  }

  /**
   * Each Unix socket we listen on, still at its path: one removed under the running daemon (clients can no
   * longer connect by its path, though connections made before go on) is listened on again, logged; a path
   * that now holds another file (not ours) is left alone and is a problem of the daemon until it is gone.
   */
  private async checkSockets(): Promise<string[]> {
    const problems: string[] = [];
    for (const [path, ino] of this.socketInodes) {
      if (socketIdentity(path) === ino) continue;
      if (pathTaken(path)) {
        problems.push(`Unix socket ${path} was replaced by another file (not ours): this daemon does not listen there`);
        continue;
      }
      const listen = this.relisten.get(path);
      if (!listen || !this.ready.value) continue;
      try {
        await listen();
        this.log.warn(
          { socket: path },
          `Unix socket ${path} was removed under the running daemon: listening on it again`,
        );
      } catch (e) {
        problems.push(`Unix socket ${path} was removed and could not be listened on again: ${(e as Error).message}`);
      }
    }
    return problems;
  }

  /** The last "state store refuses writes" problem ('' when it takes them), logged once. */
  private storeRefusal = '';

  /**
   * Whether the state store takes writes (a write probe while it refuses, or while its file system is
   * read-only or full: StateStore.probe): a store that refuses them is a problem of the datapath (health
   * xdpctl.datapath NOT_SERVING naming it; GetStatus state_store; the xdpctl.state_store.writable metric),
   * logged once, and its end is logged too.
   */
  private async checkStoreWrites(): Promise<string[]> {
    const store = this.store;
    if (!store) return [];
    this.diskProbe?.probe(); // never waits: its answer (or its wait past the bound) is what later passes see
    await store.probe();
    const r = store.refusal();
    const problem = r
      ? `state store ${store.path} refuses writes: ${storeReason(r.error)}; every change is refused until it takes them`
      : '';
    // Logged once per transition: a refusal whose message says what changes (the bytes a full disk has free) has a key.
    const key = r ? (r.key ?? problem) : '';
    if (key && key !== this.storeRefusal) this.log.error({ err: r!.error, path: store.path }, problem);
    else if (!key && this.storeRefusal) {
      this.log.info({ path: store.path }, `state store ${store.path} takes writes again: changes are accepted`);
    }
    this.storeRefusal = key;
    return problem ? [problem] : [];
  }

  /** The comparison of the state store with the desired state under way (Controller.checkStore), if any. */
  private storeCheck?: Promise<unknown>;

  /** Generations committed after their change was refused (the disk answered late), not yet written over. */
  private lateCommits: number[] = [];

  /**
   * Changes refused because their commit did not complete in time (a disk not answering) that the disk
   * committed once it answered: the store holds what the daemon did not accept (and the kernel does not
   * hold), so the whole desired state is written back over it, logged once; retried at the next pass
   * while the store refuses it.
   */
  private async checkLateCommits(): Promise<void> {
    const store = this.store;
    if (!store) return;
    this.lateCommits.push(...store.takeLateCommits());
    if (!this.lateCommits.length || store.refusal()) return;
    try {
      await this.controller.rewriteStore();
    } catch (e) {
      this.log.warn(
        { err: e, path: store.path, generations: this.lateCommits },
        `state store ${store.path}: a refused change committed late could not be written over yet: retried at the next pass`,
      );
      return;
    }
    this.log.warn(
      { path: store.path, generations: this.lateCommits },
      `state store ${store.path}: the disk answered and completed the commit of ${this.lateCommits.length} ` +
        'change(s) already refused (their commit had not completed in time; not applied in the kernel): the ' +
        'desired state was written back over them in the store',
    );
    this.lateCommits = [];
  }

  /** A fresh state store in the state directory made again, with the whole desired state; throws if not. */
  private async renewStore(
    dir: string,
    how: 'created' | 'relocked' | 'held' | 'file',
    fileChanged?: string,
  ): Promise<void> {
    let fresh: StateStore | undefined;
    try {
      const old = await this.controller.replaceStore(async (state) => {
        fresh = StateStore.open(dir);
        if (fresh.problem) throw fresh.problem;
        // Its changes count on from the store it replaces, and each is written into the pins.
        fresh.continueFrom(this.store?.generation ?? 0);
        this.watchGeneration(fresh);
        fresh.disk = this.diskProbe;
        await fresh.replaceAll(state);
        return fresh;
      });
      // Not awaited: its file is gone or replaced, and a pass is not held for a disk that does not answer.
      void (old as StateStore | undefined)?.close();
    } catch (e) {
      void fresh?.close();
      this.store?.noteNotRenewed(e as Error); // GetStatus, health and the metric say why no store holds the state
      this.storeLost = true;
      throw new Error(`a fresh state store could not be written: ${(e as Error).message}`, { cause: e });
    }
    this.store = fresh;
    this.storeLost = false;
    this.kernel?.rewriteHostChanges();
    // Counted from the fresh store, read back: what is on disk now, not what was handed to it.
    let state: { rules: unknown[]; links: unknown[] } | undefined;
    try {
      state = fresh!.load();
    } catch {
      state = undefined;
    }
    const held = state ? `${state.rules.length} rule(s), ${state.links.length} link(s)` : 'not readable back';
    if (how === 'file') {
      this.log.error(
        { stateDir: dir, rules: state?.rules.length, links: state?.links.length, path: fresh!.path },
        `STATE STORE ${fresh!.path} ${fileChanged?.toUpperCase() ?? 'WAS REMOVED'} UNDER THE RUNNING DAEMON: ` +
          `the desired state this daemon holds (${held}) written into a fresh store there` +
          `${state ? ' (counted from the store read back)' : ''}; changes refused meanwhile were not made`,
      );
      return;
    }
    this.log.error(
      { stateDir: dir, rules: state?.rules.length, links: state?.links.length, path: fresh!.path },
      `STATE DIRECTORY ${dir} WAS REMOVED OR REPLACED UNDER THE RUNNING DAEMON: ` +
        (how === 'created' ? 'created again (0700)' : 'the directory now there used') +
        `, locked again (a second daemon on it is refused), and the desired state this daemon holds ` +
        `(${held}) written into a fresh store at ` +
        `${fresh!.path}${state ? ' (counted from the store read back)' : ''}; anything else that was kept there is gone`,
    );
  }
  /** The last pin-root problem logged ('' when none), so that each is logged once. */
  private pinRootProblem = '';

  /**
   * The pins of what runs now, put back when removed or replaced under the running daemon (a repair,
   * logged each time it happens); what could not be put back is a problem of the datapath (logged once
   * per change, with the rest, as "datapath not as desired").
   */
  private checkPins(): string[] {
    if (!this.ready.value) return []; // stopping: --cleanup-on-exit removes the pins, none come back
    const pinRoot = this.opts.pinRoot;
    try {
      const r = this.lock?.checkPinRoot();
      if (r === 'covered') {
        this.log.warn(
          { pinRoot, mount: this.lock?.pinRootCover() },
          `another filesystem (${this.lock?.pinRootCover()}) was mounted over pin root ${pinRoot} under the ` +
            "running daemon: the directory with this daemon's pins is hidden under it, not removed (its maps and " +
            'program run on, and it stays locked by this daemon until it exits); the pin root now is that ' +
            'filesystem: checked (0700, ours), locked, and the pins made again there' +
            (this.opts.cleanupOnExit ? ' (--cleanup-on-exit removes the hidden ones too)' : ''),
        );
      }
      if (r === 'created' || r === 'relocked') {
        this.log.warn(
          { pinRoot },
          `pin root ${pinRoot} was removed or replaced under the running daemon: ` +
            (r === 'created' ? 'created again (0700)' : 'the directory now there checked (0700, ours)') +
            ' and locked again (a second daemon on it is refused)',
        );
      }
      for (const to of this.lock?.renamedPinRoots() ?? []) {
        this.log.warn(
          { pinRoot, renamedTo: to },
          `pin root ${pinRoot} was renamed to ${to} under the running daemon: the pins there still name this ` +
            `daemon's live maps and program, so ${to} stays locked by this daemon until it exits (a second ` +
            'daemon on it is refused, --reset-datapath or not); its pins are left as they are',
        );
      }
      // Made writable by others (chmod 777) or given to another user under the running daemon: what a
      // start refuses is reported (logged once, NOT_SERVING naming it) until it is ours alone again.
      let unsafe: string | undefined;
      try {
        unsafe = pinRootOwnership(pinRoot);
      } catch {
        unsafe = undefined; // gone again since: the next pass takes it again
      }
      if (unsafe) {
        const problem = `${unsafe.replace(/: others could/, ' under the running daemon: others could')}`;
        if (problem !== this.pinRootProblem) this.log.error({ pinRoot }, problem);
        this.pinRootProblem = problem;
        return [problem];
      }
      if (this.pinRootProblem) this.log.info({ pinRoot }, `pin root ${pinRoot} is ours alone again (0700)`);
      this.pinRootProblem = ''; // taken again: the relock line above says so
    } catch (e) {
      // Another daemon took the pin root in between (it started after the removal and before this pass):
      // its pins are not ours to overwrite. Reported until that changes, logged once.
      const covered = this.lock?.pinRootCover();
      const problem = covered
        ? `another filesystem (${covered}) was mounted over pin root ${pinRoot} under the running daemon and ` +
          `cannot be used as the pin root: ${(e as Error).message}. This daemon's maps and program are pinned ` +
          'only in the directory hidden under it'
        : `pin root ${pinRoot} was removed under the running daemon and could not be taken again: ` +
          `${(e as Error).message}. This daemon's maps and program are no longer pinned`;
      if (problem !== this.pinRootProblem) this.log.error({ pinRoot }, problem);
      this.pinRootProblem = problem;
      return [problem];
    }
    let r: { repinned: string[]; failed: string[]; unverified: string[] };
    try {
      r = this.datapath.repairPins();
    } catch (e) {
      r = { repinned: [], failed: [(e as Error).message], unverified: [] };
    }
    try {
      if (this.generationPin?.repair()) r.repinned.push(this.generationPin.path);
    } catch (e) {
      const m = (e as Error).message;
      (/^open pin /.test(m) ? r.unverified : r.failed).push(`${this.generationPin?.path}: ${m}`);
    }
    if (r.repinned.length) {
      this.log.warn(
        { repinned: r.repinned },
        `pins removed or replaced under the running daemon: re-pinned ${r.repinned.length} (maps, program and tracepoint links in use)`,
      );
    }
    // A pin that cannot be opened (EMFILE...) is neither ours nor missing: not re-pinned, said as not verified.
    return [
      ...r.failed.map((f) => `pin not restored: ${f}`),
      ...r.unverified.map((f) => `pin cannot be verified: ${f} (left as it is)`),
    ];
  }

  /** Interfaces the desired state names that do not exist now. */
  missingInterfaces: string[] = [];

  /** The state store's generation as the pins hold it (dataplane/store-generation.ts). */
  generationPin?: GenerationPin;
  /** Why the last write of the generation into the pins failed ('' once one works). */
  private generationProblem = '';

  /** Write each generation `store` commits into the pins. */
  watchGeneration(store: StateStore): void {
    store.onCommitted = (g) => this.writeGeneration(g);
  }

  /** Write `generation` into the pins; a failure is logged once (a later start cannot compare then). */
  writeGeneration(generation: number): void {
    const pin = this.generationPin;
    if (!pin) return;
    try {
      pin.write(generation);
      if (this.generationProblem) this.log.info({ path: pin.path }, `store generation written into ${pin.path} again`);
      this.generationProblem = '';
    } catch (err) {
      const problem = (err as Error).message;
      if (problem !== this.generationProblem) {
        this.log.error(
          { err, path: pin.path, generation },
          `the state store's generation ${generation} could not be written into ${pin.path}: ${problem}. A later ` +
            'start cannot tell whether a state store is older than this datapath',
        );
      }
      this.generationProblem = problem;
    }
  }

  get serving(): boolean {
    return this.ready.value;
  }

  /**
   * Stop: NOT_SERVING, end watch streams, drain calls, then close handles.
   * The datapath keeps forwarding unless cleanupOnExit.
   */
  stop(): Promise<void> {
    // The stop holds the process until it is done: its listeners closed, a step that waits on a handle that
    // does not keep the event loop alive would otherwise let Node exit 0 half-way, the cleanup not done
    // (every step is bounded: the grace period, the store's bounds, the telemetry flush's).
    let hold: NodeJS.Timeout | undefined;
    this.stopping ??= (async () => {
      hold = setInterval(() => undefined, 60_000);
      this.ready.value = false;
      clearInterval(this.resyncTimer);
      this.monitor?.close();
      this.kernel?.closeSockets();
      this.pinRootWatch?.close();
      this.stateDirWatch?.close();
      this.health.setStatus('unhealthy');
      this.health.setStatus('unhealthy', DATAPATH_HEALTH);
      if (this.config) this.health.setStatus('unhealthy', CONFIG_HEALTH);
      this.config?.close();
      this.hub.close(); // WatchCounters streams end with UNAVAILABLE
      this.terminator?.terminate(); // health Watch streams too, after their NOT_SERVING
      // Calls get SHUTDOWN_GRACE_MS to finish; then every connection is closed, whatever its client does
      // (one that stopped reading would otherwise hold its session, and the exit, open indefinitely).
      const drained = Promise.all([...this.servers.map((x) => x.shutdown()), ...this.http.map((x) => x.close())]);
      let forced: NodeJS.Timeout | undefined;
      const force = new Promise<void>((resolve) => {
        forced = setTimeout(() => {
          this.servers.forEach((x) => x.forceShutdown());
          const closed = destroyConnections();
          this.log.warn(
            { connections: closed, graceMs: SHUTDOWN_GRACE_MS },
            'shutdown: calls still open after the grace period; connections closed',
          );
          resolve();
        }, SHUTDOWN_GRACE_MS);
      });
      await Promise.race([drained, force.then(() => Promise.race([drained, delay(1000)]))]);
      clearTimeout(forced);
      this.access?.flush(); // the audit records of the calls just drained
      await this.passInFlight; // no pass starts any more (not ready): the last one ends before the cleanup
      // Every write to the state directory from here on shares one bound (STOP_DISK_MS); none at all when the
      // disk is known not to answer (the disk probe's write, or the store's, pending past its bound).
      const diskStart = monotonicMs();
      const knownFrozen = this.store?.refusal()?.error.message.includes('not answering') ?? false;
      const diskLeft = () => (knownFrozen ? 0 : Math.max(0, STOP_DISK_MS - (monotonicMs() - diskStart)));
      // A write-back of the store a pass started (bounded by StateStore's 5 s): waited for within the bound only.
      if (this.storeCheck) {
        const done = await Promise.race([this.storeCheck.then(() => true), delay(diskLeft()).then(() => false)]);
        if (!done) {
          this.log.warn(
            { path: this.store?.path, boundMs: STOP_DISK_MS },
            `stop: the state store's write-back under way did not complete within ${STOP_DISK_MS / 1000} s ` +
              '(the disk is not answering): not waited for; the next start reads what the disk holds',
          );
        }
      }
      if (this.opts.cleanupOnExit) {
        const detached = this.controller.detachAll();
        // Whatever the state lost track of too: every interface with our program, every setting we changed.
        const r = await this.kernel!.cleanupHost(diskLeft());
        // Settings sorted: the same host gives the same line, whatever order the devices were visited in
        // (interfaces in the order they were detached: a bridge before its ports).
        const sorted = (xs: readonly string[]) => [...xs].sort();
        const done = {
          detached: [...detached, ...r.detached],
          restored: sorted(r.restored),
          // Recorded devices not touched: gone, or another device (namespace, veth peer) at that ifindex since.
          ...(r.leftAlone.length ? { leftAlone: sorted(r.leftAlone) } : {}),
        };
        // "Restored" only when it was: a failure is the one line, with what was done and what was not.
        if (r.failed.length) this.log.error({ ...done, failed: sorted(r.failed) }, 'cleanup incomplete');
        else this.log.info(done, 'cleanup: host restored');
      }
      this.datapath.close();
      this.generationPin?.close();
      // The last connection closed: the WAL checkpointed into state.db, unless the state directory's disk did not
      // complete a write in time (frozen): that checkpoint would hold the stop. The record as this daemon holds it,
      // then the disk probe: both answered within the bound, or the store's close is not tried on this disk.
      const recordOk =
        !knownFrozen && (this.store ? await (this.kernel?.recordAnswers(diskLeft(), STOP_DISK_MS) ?? true) : true);
      const diskAnswers = recordOk && (await (this.diskProbe?.answers(diskLeft()) ?? true));
      if (recordOk && !diskAnswers) {
        const record = join(this.opts.stateDir!, 'host-changes.json');
        this.log.error(
          { path: this.store?.path, record, boundMs: STOP_DISK_MS },
          `stop: host-changes record ${record} (as this daemon holds it: nothing to write) and state store ` +
            `${this.store?.path}: the disk did not complete a write within the stop's ${STOP_DISK_MS / 1000} s ` +
            "(not answering): the store's checkpoint and the lock file's removal are left to the next start",
        );
      }
      if (knownFrozen) {
        const record = join(this.opts.stateDir!, 'host-changes.json');
        this.log.error(
          { path: this.store?.path, record, err: this.store?.refusal()?.error },
          `stop: host-changes record ${record} and state store ${this.store?.path}: the disk has not completed a ` +
            'write sent to it for more than 5 s (not answering): nothing written there (the record holds what it ' +
            "held before; the store's checkpoint and the lock file's removal are left to the next start)",
        );
      }
      // A disk that answered: the thread's close as before (answered in milliseconds); else within what is left.
      await this.store?.close({ diskAnswers, boundMs: diskAnswers ? undefined : diskLeft() });
      if (this.opts.cleanupOnExit) {
        // Ours only: a pin root that is a bpffs mount's root keeps the kernel's own entries and the mount
        // point; pin root directories hidden by a mount are reached through the lock's descriptor.
        const left = [this.opts.pinRoot, ...(this.lock?.hiddenPinRoots() ?? [])].flatMap((p) =>
          XdpDatapath.unpinAll(p),
        );
        if (left.length) this.log.error({ left }, `cleanup: ${left.length} pin(s) could not be removed`);
      }
      // Only the socket files we created: one that someone else has put there since is left alone.
      for (const [path, ino] of this.socketInodes) removeOwnSocket(path, ino);
      this.lock?.release({ stateDirAnswers: diskAnswers }); // after the socket files: only the holder removes them
      // Its process told to end, not waited for (one held in a write on a frozen disk ends once the disk lets it go).
      this.diskProbe?.close();
      this.unregisterMetrics?.();
      // 'stopped' only once it is: a worker thread of the store held in a write its disk has not completed (frozen)
      // cannot be ended (the kernel does not interrupt that write), and the process cannot exit before it ends.
      const held = this.store?.heldAtClose();
      if (held && !(await Promise.race([held.exited.then(() => true), delay(200).then(() => false)]))) {
        const at = new Date(held.at).toISOString();
        this.log.warn(
          { path: this.store?.path, op: held.op, since: at },
          `stop: all done but one thing: the state store's worker thread is held in its ${held.op} of ` +
            `${this.store?.path}, sent at ${at}, which the disk has not completed (not answering; the kernel does ` +
            'not interrupt a write to a file system that does not complete it, not even for SIGKILL): the process ' +
            "cannot exit before the disk completes it, and exits then ('stopped'). What it writes then is what the " +
            'next start reads',
        );
        await held.exited;
      }
      this.log.info({ cleanup: this.opts.cleanupOnExit }, 'stopped');
      // Last: flush the spans of the calls just drained.
      // Bounded: an OTLP collector that never answers would hold the exit for the exporters' timeout (10 s).
      const flushed = this.opts.telemetry?.shutdown().then(
        () => true,
        (err) => (this.log.warn({ err }, 'telemetry shutdown failed'), true),
      );
      if (flushed && !(await Promise.race([flushed, delay(TELEMETRY_FLUSH_MS).then(() => false)]))) {
        this.log.warn(
          { timeoutMs: TELEMETRY_FLUSH_MS },
          `telemetry not flushed within ${TELEMETRY_FLUSH_MS} ms: exiting`,
        );
      }
    })().finally(() => clearInterval(hold));
    return this.stopping;
  }
}

/**
 * The files a refused start made in a state directory that the same start created (so nothing else is
 * in it): the database and its WAL files, the host-changes record. The lock file goes with the lock.
 */
function removeNewState(stateDir: string, keep?: readonly string[]): void {
  // In a directory the start did not make: only the database files it made (host-changes.json may
  // record what an earlier daemon changed; it is rewritten, never removed, there).
  const files = keep ? STATE_DB_FILES : [...STATE_DB_FILES, 'host-changes.json'];
  for (const f of files) if (!keep?.includes(f)) rmSync(join(stateDir, f), { force: true });
}

/** The state database and the files SQLite keeps beside it. */
const STATE_DB_FILES = ['state.db', 'state.db-wal', 'state.db-shm', 'state.db-journal'];

/** Which of {@link STATE_DB_FILES} exist in `stateDir` now. */
function existingStateFiles(stateDir: string): string[] {
  return STATE_DB_FILES.filter((f) => existsSync(join(stateDir, f)));
}

/** A pin root before a start: absent, an empty directory, or holding pins (a previous daemon's). */
type PinRootState = 'absent' | 'empty' | 'in use';

function pinRootState(pinRoot: string): PinRootState {
  try {
    return readdirSync(pinRoot).length === 0 ? 'empty' : 'in use';
  } catch {
    return 'absent';
  }
}

/**
 * Put a pin root back as a refused start found it: absent or empty again (every pin this start made
 * goes, and with the last reference to them the kernel frees the maps, the program and the tracepoint
 * links). A pin root that held pins is left to them.
 */
function restorePinRoot(pinRoot: string, before: PinRootState): void {
  if (before === 'in use' || !existsSync(pinRoot)) return;
  XdpDatapath.unpinAll(pinRoot);
  if (before === 'empty') mkdirSync(pinRoot, { mode: 0o700 });
}

/**
 * Bind each listen address once and close it again, before the kernel is touched: an address that is
 * not this host's, a name that does not resolve, a port in use or a socket directory that cannot be
 * made is refused here, naming the flag and the address.
 */
async function probeListeners(list: readonly (readonly [string, string])[], created?: string[]): Promise<void> {
  for (const [flag, addr] of list) {
    try {
      if (addr.startsWith('unix:')) {
        const dir = dirname(addr.slice(5));
        makeDirs(dir, 0o777, created); // the umask decides, as before
        accessSync(dir, fsConstants.W_OK);
        continue;
      }
      const host = listenHost(addr);
      const port = Number(addr.slice(addr.lastIndexOf(':') + 1));
      const server = createNetServer();
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host, port, exclusive: true }, () => resolve());
      });
      await new Promise<void>((resolve) => server.close(() => resolve()));
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new Error(`${flag} ${addr}: cannot listen there (${err.code ?? err.message})`);
    }
  }
}

/** What the pinned maps forward (see {@link XdpDatapath.pinnedForwarding}). */
type PinnedForwarding = { matches: number; links: number };

/**
 * A state store that is missing while the pinned datapath still holds rules
 * or links (deleted by hand, or a wrong --state-dir), or --no-state over such
 * pins, is not a reason to wipe the datapath silently: refuse, unless
 * --reset-datapath says to clear it (returns why: see {@link resetDatapath}).
 * Checked before the datapath is opened: nothing in the kernel changes.
 */
function checkMissingStore(opts: DaemonOptions, pinned: PinnedForwarding): string | undefined {
  if (opts.stateDir && StateStore.exists(opts.stateDir)) return undefined;
  return refuseOverPinnedEntries(
    opts,
    pinned,
    opts.stateDir
      ? `the state store ${stateDbPath(opts.stateDir)} does not exist`
      : '--no-state: this daemon starts with no rule and no link',
    opts.stateDir
      ? 'Put the state store back (or pass the right --state-dir)'
      : 'Start with the --state-dir this datapath belongs to (or use another --pin-root)',
  );
}

/**
 * The stored rules must fit the capacity this start asks for (--max-rules): a start never drops a rule
 * from a datapath that forwards it. Throws, naming what the store holds, what this capacity holds and the
 * smallest --max-rules that holds it all, when a table (rule slots and counters, match entries, backends,
 * source prefixes; see {@link capacityForRules}) is too small. Checked before the datapath is opened.
 */
export function checkStoreFits(path: string, stored: StoredState, cap: Capacity): void {
  let matches = 0;
  let backends = 0;
  let prefixes = 0;
  for (const r of stored.rules) {
    matches += r.ingressInterfaces.length;
    backends += r.backends.length;
    prefixes += r.sourcePrefixes.length;
  }
  const rules = stored.rules.length;
  const short: string[] = [];
  // Id 0 of rule slots, rule counters and backends is reserved (IdPool from 1).
  if (rules > Math.min(cap.statsIds, cap.ruleSlots) - 1) {
    short.push(`${rules} rules (room for ${Math.max(0, Math.min(cap.statsIds, cap.ruleSlots) - 1)})`);
  }
  if (matches > cap.matches) short.push(`${matches} match entries (room for ${cap.matches})`);
  if (backends > cap.backends - 1) short.push(`${backends} backends (room for ${cap.backends - 1})`);
  if (prefixes > cap.srcPrefixes) short.push(`${prefixes} source prefixes (room for ${cap.srcPrefixes})`);
  if (short.length === 0) return;
  // The smallest --max-rules whose tables hold all of it (capacityForRules).
  const need = Math.max(rules, Math.ceil(matches / 4), Math.ceil(backends / 16), Math.ceil(prefixes / 16), 1);
  const asked = cap.statsIds - 1;
  throw new Error(
    `the state store ${path} holds ${short.join(', ')}: --max-rules ${asked} is too small for them. ` +
      'Refusing to start: nothing was changed and the pinned datapath keeps forwarding every stored rule. ' +
      `Start with --max-rules ${need} or more (then delete rules before lowering it)`,
  );
}

/**
 * The store records the pin root of the datapath it describes (meta `pin_root`, written at every start).
 * A store that belongs to another pin root (another daemon's --state-dir), or one that records none and
 * holds no rule and no link, while the pins here hold rules or links, is refused as a missing one is:
 * starting would wipe what forwards. The start marks it as this pin root's once it goes on.
 */
function checkStoreOwner(
  opts: DaemonOptions,
  pinned: PinnedForwarding,
  store: StateStore,
  stored: StoredState,
): string | undefined {
  const pinRoot = resolve(opts.pinRoot);
  const owner = store.meta('pin_root');
  const empty = stored.rules.length === 0 && stored.links.length === 0;
  if (owner === pinRoot || (owner === undefined && !empty)) return undefined;
  return refuseOverPinnedEntries(
    opts,
    pinned,
    owner !== undefined
      ? `the state store ${store.path} belongs to the datapath under ${owner}, not ${pinRoot}`
      : `the state store ${store.path} holds no rule and no link and names no datapath`,
    'Pass the --state-dir of this datapath (or the --pin-root of this store)',
  );
}

/**
 * Refuse the start (throw) while the pins hold rule match entries or link directions; with
 * --reset-datapath, return what {@link resetDatapath} logs. undefined when the pins hold none.
 */
function refuseOverPinnedEntries(
  opts: DaemonOptions,
  pinned: PinnedForwarding,
  why: string,
  fix: string,
): string | undefined {
  const { matches, links } = pinned;
  if (matches === 0 && links === 0) return undefined;
  const what =
    `${why}, but the pinned datapath under ` +
    `${opts.pinRoot} still forwards ${matches} rule match entr${matches === 1 ? 'y' : 'ies'} and ${links} ` +
    `link direction${links === 1 ? '' : 's'}`;
  if (!opts.resetDatapath) {
    throw new Error(
      `${what}: refusing to start and wipe them. ${fix}, ` +
        'or start once with --reset-datapath to clear the datapath and detach the program',
    );
  }
  return what;
}

/**
 * --reset-datapath over entries this daemon has no state for: they are cleared (the start writes the
 * empty desired state), and this datapath's program is detached from every interface it is attached to
 * here, the one before a migration included (nothing stays attached that ListInterfaces does not show).
 */
function resetDatapath(opts: DaemonOptions, dp: KernelDataplane, log: Logger, what: string): void {
  log.warn({ pinRoot: opts.pinRoot }, `${what}: --reset-datapath: clearing them`);
  let names: string[] = [];
  try {
    names = linkNames(); // rtnetlink, this namespace's (never /sys: another namespace's under nsenter --net)
  } catch (err) {
    log.warn({ err }, '--reset-datapath: cannot list the network devices: nothing detached');
  }
  for (const name of names) {
    try {
      // Only this datapath's programs (by id and map ids): other xdpctld instances run the same code on
      // other pin roots.
      if (dp.xdpStatus(name)?.ours) {
        dp.detach(name);
        log.warn({ ifname: name }, '--reset-datapath: detached');
      }
    } catch (err) {
      log.warn({ err, ifname: name }, '--reset-datapath: detach failed');
    }
  }
}

/** Whether two lists of lines are equal, awaiting `pace` every 1 024 lines. */
async function sameLines(a: readonly string[], b: readonly string[] | undefined, pace: () => Promise<void>) {
  if (a === b) return true; // (the controller gives the same array while nothing in it changed)
  if (!b || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    if ((i + 1) % 1024 === 0) await pace();
    if (a[i] !== b[i]) return false;
  }
  return true;
}
