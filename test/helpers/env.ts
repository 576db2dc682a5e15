/**
 * Test environment helpers: root/kernel gating (a skip under CI=true is a
 * failure), unique names, and running commands.
 */
import assert from 'node:assert/strict';
import { execFileSync, type ExecFileSyncOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import type { TestContext } from 'node:test';

export const ROOT = new URL('../..', import.meta.url).pathname;
/** The compiled daemon and CLI (tsc -b tsconfig.build.json; scripts/run-tests.mjs builds them first). */
export const DAEMON = `${ROOT}dist/server/main.js`;
export const CLI = `${ROOT}dist/client/cli.js`;
/** The Node flags the daemon runs with everywhere: those of its shebang (`#!/usr/bin/env -S node FLAGS`). */
export const DAEMON_NODE_FLAGS = readFileSync(`${ROOT}src/server/main.ts`, 'utf8')
  .split('\n')[0]
  .split(/\s+/)
  .filter((w) => w.startsWith('--'));
export const OBJECT = `${ROOT}build/bpf/xdpctl.bpf.o`;
export const OBJECT_NEXT = `${ROOT}build/bpf/xdpctl-next.bpf.o`;

/** Integration tests need root; under CI a missing precondition fails instead of skipping. */
export function kernelTestsAvailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'integration tests need root (real XDP, namespaces)';
  return undefined;
}

/** Options for describe()/it(): skip with a reason, except under CI where it throws. */
export function kernelOnly(): { skip?: string } {
  const why = kernelTestsAvailable();
  if (why && process.env.CI === 'true') throw new Error(`CI=true and ${why}: refusing to skip`);
  return why ? { skip: why } : {};
}

/** A short random id for names of this run (namespaces, veths, pins). */
export function runId(): string {
  return randomBytes(2).toString('hex');
}

/** Run a command and return its stdout; throws with stderr on failure. */
export function sh(cmd: string, args: string[], opts: ExecFileSyncOptions = {}): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...opts }) as string;
  } catch (e) {
    const err = e as { stderr?: Buffer | string; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${String(err.stderr ?? '').trim() || err.message}`);
  }
}

/** Same, but never throws (for cleanup). */
export function shQuiet(cmd: string, args: string[]): void {
  try {
    execFileSync(cmd, args, { stdio: 'ignore' });
  } catch {
    /* cleanup: best effort */
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Whether a process with this pid exists (signal 0: a zombie not yet reaped counts). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * `p`, or `late` if it has not settled within `ms`. The timer is cleared once `p` settles: a pending one
 * would keep the test file's process alive (the runner waits for it to exit) for the rest of `ms`.
 */
export async function within<T>(p: Promise<T>, ms: number, late: string): Promise<T | string> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<string>((r) => (timer = setTimeout(() => r(late), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Poll `ok` every 50 ms until it holds; fail naming `what` if it does not within `ms`. `what` may be a
 * function, called at the failure, to say what was last seen instead.
 */
export async function until(
  what: string | (() => string | Promise<string>),
  ok: () => Promise<boolean> | boolean,
  ms = 3000,
): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await ok()) return;
    await sleep(50);
  }
  throw new Error(`not within ${ms} ms: ${typeof what === 'string' ? what : await what()}`);
}

/**
 * The number of the descriptor process `pid` holds open on a network namespace (its /proc/PID/fd link reads
 * "net:[…]"), once it holds one: waits up to 15 s (a process just spawned may not have opened it yet; a fixed
 * 300 ms wait raced a loaded machine).
 */
export async function netnsFdOf(pid: number): Promise<string> {
  let fd = '';
  await until(
    `process ${pid} holding a network namespace open`,
    () => {
      try {
        fd =
          readdirSync(`/proc/${pid}/fd`).find((f) => {
            try {
              return readlinkSync(`/proc/${pid}/fd/${f}`).startsWith('net:');
            } catch {
              return false;
            }
          }) ?? '';
      } catch {
        fd = '';
      }
      return fd !== '';
    },
    15_000,
  );
  return fd;
}

/** Poll `cond` every 20 ms until it holds; throws `what` after `timeoutMs`. */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** Fill the file system of `dir` (a small tmpfs) with files fill-N of 64 KiB until it answers ENOSPC. */
export function fillDisk(dir: string): void {
  for (let i = 0; ; i++) {
    try {
      writeFileSync(`${dir}/fill-${i}`, Buffer.alloc(64 * 1024, 1));
    } catch (e) {
      assert.equal((e as NodeJS.ErrnoException).code, 'ENOSPC');
      return;
    }
  }
}

/** Remove what fillDisk(dir) wrote. */
export function emptyDisk(dir: string): void {
  for (const f of readdirSync(dir)) if (f.startsWith('fill-')) rmSync(`${dir}/${f}`);
}

/** Register cleanup that runs even when the test fails. */
export function onCleanup(t: TestContext, fn: () => void | Promise<void>): void {
  t.after(fn);
}

/**
 * iproute2 makes /sys/fs/bpf/{tc,ip,xdp} when it first loads an object; remove them when nothing is
 * pinned in them (tests that run at the same time may have made them: "did we make it" races).
 */
export function removeIproute2BpffsDirs(): void {
  const globals = '/sys/fs/bpf/tc/globals';
  if (existsSync(globals) && readdirSync(globals).length > 0) return;
  for (const d of ['ip', 'xdp', 'tc']) rmSync(`/sys/fs/bpf/${d}`, { recursive: true, force: true });
}
