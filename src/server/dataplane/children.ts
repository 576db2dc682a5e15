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
function which(name: string): string | undefined {
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

/** promisify(execFile), guarded: resolves with stdout and stderr, rejects with the command's error. */
export function runGuarded(
  cmd: string,
  args: readonly string[],
  opts: ExecFileOptions = {},
): Promise<{ stdout: string; stderr: string }> {
  const [file, argv] = guardedArgv(cmd, args);
  return new Promise((resolve, reject) => {
    execFile(file, argv, { encoding: 'utf8', ...opts }, (err, stdout, stderr) => {
      if (err) {
        Object.assign(err, { stdout: String(stdout), stderr: String(stderr) });
        reject(asCommand(err, file, argv, cmd, args));
      } else resolve({ stdout: String(stdout), stderr: String(stderr) });
    });
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
    return execFileSync(file, argv, opts);
  } catch (e) {
    throw asCommand(e, file, argv, cmd, args);
  }
}
