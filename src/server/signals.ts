/**
 * What xdpctld does on each signal. No signal an operator or the system sends ends it silently or skips
 * its stop: before, only SIGTERM and SIGINT were handled; SIGHUP (even under nohup: Node resets an
 * inherited "ignore" to the default at start), SIGQUIT, SIGUSR2, SIGALRM... ended it by the default action,
 * with no log line, no `--cleanup-on-exit`, its socket and lock left, and SIGUSR1 opened Node's inspector
 * on 127.0.0.1:9229 (code execution as the daemon's user for any local process).
 *
 * - stop: logged, then the orderly stop of SIGTERM (NOT_SERVING, streams ended, calls drained,
 *   `--cleanup-on-exit`, pins and sockets as documented), exit 0. Another stop signal during the stop is
 *   logged and the stop goes on (SIGKILL ends the process at once, without any cleanup).
 * - reload: SIGHUP, the daemon convention: logged, the `--config` file, the TLS files and the
 *   `--auth-config` file read again at once, each result logged; the daemon keeps serving.
 * - ignore: logged, nothing else; the daemon keeps serving. (SIGUSR1 is not even logged as the daemon
 *   normally runs: with --disable-sigusr1 Node drops it before any listener.)
 *
 * {@link UNHANDLED} says why every other signal Node knows is left as it is; a unit test keeps the two
 * lists covering them all. README ("Signals"), `xdpctld --help` and docs/deployment.md say the same.
 */
export type SignalAction = 'stop' | 'reload' | 'ignore';

export const SIGNAL_ACTIONS: Readonly<Record<string, { action: SignalAction; why: string }>> = {
  SIGTERM: { action: 'stop', why: 'the stop signal of systemd, docker stop and Kubernetes' },
  SIGINT: { action: 'stop', why: 'Ctrl-C' },
  SIGQUIT: { action: 'stop', why: 'Ctrl-\\; a graceful stop for many daemons (nginx)' },
  SIGHUP: {
    action: 'reload',
    why: 'the daemon convention: read the configuration again (a hung-up terminal too, or nohup)',
  },
  SIGUSR1: {
    action: 'ignore',
    // Node opens its inspector on SIGUSR1 (code execution as the daemon's user for any local process):
    // the daemon runs with --disable-sigusr1 (its shebang, the image), under which Node ignores it before
    // any listener; this handler is for a start without that flag (`node dist/server/main.js`).
    why: 'no meaning for xdpctld (and no inspector: Node would open one on 127.0.0.1:9229)',
  },
  SIGUSR2: { action: 'ignore', why: 'no meaning for xdpctld' },
  SIGALRM: { action: 'stop', why: 'terminates by default' },
  SIGVTALRM: { action: 'stop', why: 'terminates by default' },
  SIGXCPU: { action: 'stop', why: 'the CPU time soft limit (RLIMIT_CPU) was reached: SIGKILL follows at the hard one' },
  SIGPWR: { action: 'stop', why: 'power failure (init, UPS daemons)' },
  SIGIO: { action: 'stop', why: 'terminates by default; xdpctld asks for no I/O signals' },
  SIGPOLL: { action: 'stop', why: 'SIGIO' },
  SIGSTKFLT: { action: 'stop', why: 'terminates by default' },
};

/** Signals left to the kernel's or Node's handling, and why. */
export const UNHANDLED: Readonly<Record<string, string>> = {
  SIGKILL:
    'cannot be caught: the process ends at once, without its stop; its child processes end with it ' +
    '(children.ts), the datapath keeps forwarding',
  SIGSTOP: 'cannot be caught: the process stops until SIGCONT',
  SIGPIPE:
    'ignored by Node: a write to a closed pipe or socket fails with EPIPE instead (handling it would log ' +
    'every client that went away); the daemon keeps serving',
  SIGXFSZ:
    'ignored by Node: a write past the file size limit (RLIMIT_FSIZE: a log file) fails with EFBIG instead; ' +
    'the daemon keeps serving',
  SIGSEGV: 'a fault of the process itself: no JavaScript can run safely after it (Node)',
  SIGBUS: 'a fault of the process itself: no JavaScript can run safely after it (Node)',
  SIGFPE: 'a fault of the process itself: no JavaScript can run safely after it (Node)',
  SIGILL: 'a fault of the process itself: no JavaScript can run safely after it (Node)',
  SIGABRT: "abort(3): Node's and native code's fatal errors, which must end the process with a core dump",
  SIGIOT: 'SIGABRT',
  SIGSYS: "a seccomp filter's answer to a forbidden system call",
  SIGUNUSED: 'SIGSYS',
  SIGTRAP: 'debuggers',
  SIGPROF: "V8's CPU profiler (--cpu-prof) uses it",
  SIGCHLD: 'ignored by default; Node uses it for its child processes',
  SIGCONT: 'continues a stopped process',
  SIGURG: 'ignored by default',
  SIGWINCH: 'ignored by default',
  SIGTSTP: 'stops the process (Ctrl-Z) until SIGCONT',
  SIGTTIN: 'stops the process until SIGCONT',
  SIGTTOU: 'stops the process until SIGCONT',
  SIGBREAK: 'Windows only',
  SIGINFO: 'not a Linux signal',
  SIGLOST: 'not a Linux signal',
};

export interface SignalHandlers {
  /** Start the orderly stop (called once). */
  stop(signal: string): void;
  /** Read again what can be read again; returns what was done, for the log line. */
  reload(signal: string): Promise<object>;
  /** Whether the daemon has started (before: a stop waits for the start; a reload has nothing to do). */
  started(): boolean;
  log: {
    info(obj: object, msg: string): void;
    warn(obj: object, msg: string): void;
    error(obj: object, msg: string): void;
  };
}

/**
 * Install a handler for every signal in {@link SIGNAL_ACTIONS} that this platform has. Returns the
 * signals handled.
 */
export function installSignalHandlers(h: SignalHandlers, known: object): string[] {
  let stopping: string | undefined;
  let reloading = false;
  let again = false;
  const installed: string[] = [];
  for (const [signal, { action, why }] of Object.entries(SIGNAL_ACTIONS)) {
    if (!(signal in known)) continue;
    // SIGPOLL is SIGIO's other name: one handler each would run twice.
    if (signal === 'SIGPOLL' && 'SIGIO' in known) continue;
    installed.push(signal);
    process.on(signal as NodeJS.Signals, () => {
      if (action === 'stop') {
        if (stopping !== undefined) {
          h.log.warn(
            { signal, stopping },
            `${signal} while stopping (${stopping}): the stop goes on (SIGKILL ends the process at once, ` +
              'without the stop and without --cleanup-on-exit)',
          );
          return;
        }
        stopping = signal;
        h.stop(signal);
        return;
      }
      if (action === 'ignore') {
        h.log.warn({ signal }, `${signal} received: ${why}; ignored, still serving`);
        return;
      }
      if (stopping !== undefined) {
        h.log.info({ signal, stopping }, `${signal} while stopping (${stopping}): nothing read again`);
        return;
      }
      if (!h.started()) {
        h.log.info({ signal }, `${signal} during start: nothing read again (the start reads every file)`);
        return;
      }
      if (reloading) {
        // Read once more after the one under way: a file written after it read it is read too.
        again = true;
        h.log.info({ signal }, `${signal} while a reload runs: the files are read again after it`);
        return;
      }
      const reload = () => {
        reloading = true;
        h.log.info({ signal }, `${signal} received: reading the configuration again; still serving`);
        h.reload(signal)
          .then(
            (done) => h.log.info({ signal, ...done }, `${signal}: reload done; still serving`),
            (err: unknown) =>
              h.log.error({ signal, err }, `${signal}: reload failed; still serving with what was in force`),
          )
          .finally(() => {
            reloading = false;
            if (again && stopping === undefined) {
              again = false;
              reload();
            }
          });
      };
      reload();
    });
  }
  return installed;
}
