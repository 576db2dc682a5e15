/**
 * Whether the state directory's disk completes a write, observed, not assumed: a tiny write and fsync of a file
 * there (`.write-probe`: one byte rewritten and fsynced), run in a short child process (children.ts, guarded),
 * one at a time, each time the reconciler asks (every pass, ~1 s). What it tells is when the disk last answered
 * one (completed it, or refused it: a full or read-only disk is an answer, said by the store's own probe), and
 * since when one has waited for it. A disk that stops completing writes (a frozen file system, a hung NFS or iSCSI
 * volume) holds that child only: never the event loop (the daemon never writes there itself for this), never a
 * thread of the daemon (the kernel does not end a thread inside a write to a frozen file system, so one stuck
 * there holds the process's exit until the thaw), never the exit (the child dies by its pdeathsig).
 *
 * It must not: write on the event loop or a thread of the daemon; run two probes at once; be awaited.
 */
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';

import { monotonicMs } from '../core/clock.js';
import type { DiskAnswers } from '../core/store.js';
import { spawnGuarded } from './children.js';

/** The probe's file in the state directory (one byte, kept: created by the first probe, 0600). */
export const PROBE_FILE = '.write-probe';

/**
 * The child: one byte written at offset 0 of the probe file and fsynced (GNU dd: conv=fsync), the file created
 * (0600) only when it is missing. It is kept, not removed: a file made and removed each second raced an
 * operator's `rm -rf` of the state directory (ENOTEMPTY when it was made between the unlinks and the rmdir).
 */
const SCRIPT = 'umask 077; exec dd if=/dev/zero of="$1" bs=1 count=1 conv=notrunc,fsync status=none';

export class DiskProbe implements DiskAnswers {
  readonly file: string;
  /** The probe waiting for the disk: since when (wall clock, said; monotonic, its age). */
  private pending?: { at: number; mono: number };
  private answered?: { at: number; mono: number };

  constructor(readonly dir: string) {
    this.file = join(dir, PROBE_FILE);
  }

  /** Told each answer (the stop's {@link answers} waits for one). */
  private readonly listeners = new Set<() => void>();

  /**
   * Whether the disk answers a probe within `boundMs` (one sent now, or the one already waiting): for a stop,
   * before it writes there on the event loop (the store's last close checkpoints the WAL).
   */
  answers(boundMs: number): Promise<boolean> {
    this.probe();
    // No probe could be started (EMFILE): nothing observed, and nothing to wait for (as before there was a probe).
    if (!this.pending) return Promise.resolve(true);
    return new Promise((resolve) => {
      const heard = () => {
        clearTimeout(timer);
        this.listeners.delete(heard);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.listeners.delete(heard);
        resolve(false);
      }, boundMs);
      this.listeners.add(heard);
    });
  }

  /** Send a probe unless one is waiting for the disk (never waits). */
  probe(): void {
    if (this.pending) return;
    const started = { at: Date.now(), mono: monotonicMs() };
    let child: ChildProcess;
    try {
      child = spawnGuarded('/bin/sh', ['-c', SCRIPT, 'probe', this.file], {
        stdio: 'ignore',
      });
    } catch {
      return; // no child could be started (EMFILE, EAGAIN): nothing observed
    }
    this.pending = started;
    const done = () => {
      if (this.pending !== started) return;
      this.pending = undefined;
      this.answered = { at: Date.now(), mono: monotonicMs() };
      for (const l of [...this.listeners]) l();
    };
    child.once('error', () => {
      if (this.pending === started) this.pending = undefined; // not started: nothing observed
    });
    child.once('exit', done);
    // What keeps the process alive is never a probe.
    child.unref();
  }

  waitingSince(): { at: number; ageMs: number } | undefined {
    const p = this.pending;
    return p && { at: p.at, ageMs: monotonicMs() - p.mono };
  }

  lastAnswer(): { at: number; ageMs: number } | undefined {
    const a = this.answered;
    return a && { at: a.at, ageMs: monotonicMs() - a.mono };
  }
}
