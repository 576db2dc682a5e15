/**
 * Child processes that never outlive the daemon, however it ends (SIGKILL, a crash, an OOM kill included).
 *
 * Every process xdpctld starts (`ip monitor label link neigh route`, which runs as long as the daemon, and the short
 * `ip`, `ethtool`, `nsenter` commands) goes through {@link guardedArgv}: `setpriv --pdeathsig KILL` (util-linux,
 * an essential package on Debian) sets PR_SET_PDEATHSIG, so the kernel sends the child SIGKILL when the
 * daemon's thread that started it (Node's main thread) ends; then a POSIX shell checks that its parent is
 * still the daemon (a daemon that died between the fork and the prctl gave the child to PID 1 or a subreaper
 * before it asked) and execs the command. Neither forks: the command runs under the same pid, with the same
 * arguments, environment, PATH lookup and file descriptors. Before: the `ip monitor` child of a daemon killed
 * with SIGKILL (or by any signal it did not handle) was left running under PID 1 until its next write.
 *
 * The kernel clears the setting when the command itself is set-user-ID or carries file capabilities
 * (prctl(2)): an `ethtool` given CAP_NET_ADMIN that way (the container image) runs unguarded, for the
 * moment it takes. Without setpriv or /bin/sh ({@link childGuard}) commands run as they are, and the daemon
 * says so at start.
 */
import {
  execFile,
  execFileSync,
  spawn,
  type ChildProcess,
  type ExecFileOptions,
  type ExecFileSyncOptionsWithStringEncoding,
  type SpawnOptions,
} from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

/** The shell's part: its parent must be the daemon (`$0`), else the daemon is gone: do not run the command. */
const CHECK = '[ "$PPID" = "$0" ] || exit 125; exec "$@"';
const SH = '/bin/sh';

/** The first executable `name` in PATH (or `name` itself when it has a slash), or undefined. */
export function which(name: string): string | undefined {
  const candidates = name.includes('/')
    ? [name]
    : (process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')
        .split(delimiter)
        .filter((d) => d !== '')
        .map((d) => join(d, name));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      return c;
    } catch {
      // not here
    }
  }
  return undefined;
}

let guard: { setpriv: string } | { why: string } | undefined;

/**
 * Whether children are guarded (setpriv and /bin/sh found, once), and if not why: the daemon logs it at
 * start.
 */
export function childGuard(): { guarded: true } | { guarded: false; why: string } {
  if (guard === undefined) {
    const setpriv = which('setpriv');
    if (!setpriv) guard = { why: 'setpriv (util-linux) is not in PATH' };
    else if (!which(SH)) guard = { why: `${SH} is missing` };
    else guard = { setpriv };
  }
  return 'setpriv' in guard ? { guarded: true } : { guarded: false, why: guard.why };
}

/**
 * The file and arguments that run `cmd args` as a guarded child of this process. `cmd` as it is when
 * there is no guard, or when `cmd` is not found (so that the caller's error is the one it always was:
 * spawn CMD ENOENT).
 */
export function guardedArgv(cmd: string, args: readonly string[]): [string, string[]] {
  childGuard();
  if (!guard || !('setpriv' in guard) || !which(cmd)) return [cmd, [...args]];
  return [guard.setpriv, ['--pdeathsig', 'KILL', '--', SH, '-c', CHECK, String(process.pid), cmd, ...args]];
}

/** An error of a guarded command, told as the command's own (its message and `cmd` name it, not setpriv). */
function asCommand(e: unknown, file: string, argv: string[], cmd: string, args: readonly string[]): unknown {
  if (file === cmd || !(e instanceof Error)) return e;
  const wrapped = [file, ...argv].join(' ');
  const own = [cmd, ...args].join(' ');
  e.message = e.message.split(wrapped).join(own);
  const x = e as Error & { cmd?: string; path?: string; spawnargs?: string[] };
  if (x.cmd !== undefined) x.cmd = own;
  return e;
}

/** child_process.spawn, guarded ({@link guardedArgv}). */
export function spawnGuarded(cmd: string, args: readonly string[], opts: SpawnOptions): ChildProcess {
  const [file, argv] = guardedArgv(cmd, args);
  return spawn(file, argv, opts);
}

/**
 * How long a short child may take (ms) before it is killed (SIGKILL) and its call fails with
 * {@link ChildTimedOut}: an `ip` or `ethtool` that does not return (stopped, or in D state on a wedged driver
 * or a held rtnl lock) never holds the reconciler. `XDPCTL_CHILD_DEADLINE_MS` sets it (tests); 5 s otherwise.
 */
export function childDeadlineMs(): number {
  const v = Number(process.env.XDPCTL_CHILD_DEADLINE_MS);
  return Number.isFinite(v) && v > 0 ? v : 5000;
}

/** A child that did not answer within its deadline: killed, and its call failed without waiting for it. */
export class ChildTimedOut extends Error {
  readonly code = 'ETIMEDOUT';
  constructor(
    readonly command: string,
    readonly ms: number,
  ) {
    super(`${command} did not answer within ${ms / 1000} s (killed)`);
  }
}

/**
 * Why a child could not be started, when the daemon's own limits refused it (fork/spawn: EAGAIN under a pids
 * cgroup limit or RLIMIT_NPROC, EMFILE/ENFILE under a descriptor limit, ENOMEM): words naming the likely
 * limit, appended to the error's message. Undefined for any other error.
 */
export function ownLimit(e: unknown): string | undefined {
  const code = (e as { code?: unknown } | undefined)?.code;
  if (code === 'EAGAIN') return 'a pids limit? (cgroup pids.max, TasksMax, RLIMIT_NPROC)';
  if (code === 'EMFILE') return 'the open-files limit? (RLIMIT_NOFILE)';
  if (code === 'ENFILE') return "the system's open-files limit? (fs.file-max)";
  if (code === 'ENOMEM') return 'out of memory?';
  return undefined;
}

/**
 * promisify(execFile), guarded: resolves with stdout and stderr, rejects with the command's error. Bounded:
 * a child that has not answered within `deadlineMs` ({@link childDeadlineMs} by default) is killed with
 * SIGKILL and the call rejects at once with {@link ChildTimedOut} (a child in D state dies only when it leaves
 * it: the call does not wait for that). A child the daemon could not start rejects with the spawn error, its
 * message naming the limit that refused it ({@link ownLimit}).
 */
export function runGuarded(
  cmd: string,
  args: readonly string[],
  opts: ExecFileOptions & { deadlineMs?: number } = {},
): Promise<{ stdout: string; stderr: string }> {
  const [file, argv] = guardedArgv(cmd, args);
  const { deadlineMs = childDeadlineMs(), ...rest } = opts;
  return new Promise((resolve, reject) => {
    let done = false;
    let child: ChildProcess | undefined;
    const timer = setTimeout(() => {
      if (done) return;
      done = true;
      child?.kill('SIGKILL');
      reject(new ChildTimedOut([cmd, ...args].join(' '), deadlineMs));
    }, deadlineMs);
    try {
      child = execFile(file, argv, { encoding: 'utf8', ...rest }, (err, stdout, stderr) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (err) {
          Object.assign(err, { stdout: String(stdout), stderr: String(stderr) });
          const limit = ownLimit(err);
          if (limit && !err.message.includes(limit)) err.message = `${err.message}: ${limit}`;
          reject(asCommand(err, file, argv, cmd, args));
        } else resolve({ stdout: String(stdout), stderr: String(stderr) });
      });
    } catch (e) {
      done = true;
      clearTimeout(timer);
      const limit = ownLimit(e);
      if (limit && e instanceof Error) e.message = `${e.message}: ${limit}`;
      reject(asCommand(e, file, argv, cmd, args));
    }
  });
}

/** execFileSync with a string encoding, guarded. */
export function runGuardedSync(
  cmd: string,
  args: readonly string[],
  opts: ExecFileSyncOptionsWithStringEncoding,
): string {
  const [file, argv] = guardedArgv(cmd, args);
  try {
    // Bounded as runGuarded is (a stopped child is killed at its deadline; one in D state holds this call
    // until it leaves that state: execFileSync waits for the exit).
    return execFileSync(file, argv, { timeout: childDeadlineMs(), killSignal: 'SIGKILL', ...opts });
  } catch (e) {
    const x = e as Error & { code?: string; signal?: string };
    if (x.code === 'ETIMEDOUT') throw new ChildTimedOut([cmd, ...args].join(' '), opts.timeout ?? childDeadlineMs());
    const limit = ownLimit(e);
    if (limit && e instanceof Error && !e.message.includes(limit)) e.message = `${e.message}: ${limit}`;
    throw asCommand(e, file, argv, cmd, args);
  }
}
