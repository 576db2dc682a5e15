/**
 * A small disk that can be made to stop completing writes: a 64 MB ext4 in a file, loop-mounted on `dir`,
 * frozen with `fsfreeze -f` (a hung NFS or iSCSI volume behaves alike: reads answered, writes held until the thaw).
 * One copy for every frozen-disk test (store-frozen, store-frozen-stop, host-changes-frozen, log-frozen,
 * state-disk-frozen), with what they time their calls with ({@link soon}, {@link timed}) and a lab's state directory
 * on it ({@link stateOnFrozenDisk}).
 *
 * `remove()` thaws, unmounts (lazily: a process may still hold a file there) and removes the image, whatever
 * happened before: call it in an `after` that runs before anything that could wait for the disk (a frozen file
 * system left behind hangs tools). `dir` itself is left (the caller's cleanup removes it).
 */
import { chmodSync, mkdirSync, rmSync } from 'node:fs';

import Database from 'better-sqlite3';
import type { Status } from 'nice-grpc';

import { metric, type DaemonProcess } from './daemon.js';
import { sh, shQuiet, until } from './env.js';

export class FrozenDisk {
  private mounted = false;
  /** Frozen now (fsfreeze -f done, -u not yet). */
  frozen = false;

  /**
   * @param dir the mount point (made), mode `mode` once mounted (the state directory's 0700 by default)
   * @param img the image file
   */
  constructor(
    readonly dir: string,
    readonly img: string,
    private readonly mode: number | undefined = 0o700,
  ) {}

  /** Make the file system and mount it on `dir`. */
  mount(): this {
    mkdirSync(this.dir, { recursive: true });
    sh('truncate', ['-s', '64M', this.img]);
    sh('mkfs.ext4', ['-q', '-F', this.img]);
    sh('mount', ['-o', 'loop', this.img, this.dir]);
    this.mounted = true;
    if (this.mode !== undefined) chmodSync(this.dir, this.mode);
    return this;
  }

  /** Stop completing writes. */
  freeze(): void {
    sh('fsfreeze', ['-f', this.dir]);
    this.frozen = true;
  }

  /** Complete writes again (no-op when not frozen). */
  thaw(): void {
    if (!this.frozen) return;
    shQuiet('fsfreeze', ['-u', this.dir]);
    this.frozen = false;
  }

  /** Thawed, unmounted, the image removed (idempotent). */
  remove(): void {
    this.thaw();
    if (this.mounted) shQuiet('umount', ['-l', this.dir]);
    this.mounted = false;
    rmSync(this.img, { force: true });
  }
}

/**
 * The state directory of the daemon a test starts on run id `id` (DaemonProcess.start: /tmp/xdpctl-test-ID-state)
 * on a {@link FrozenDisk} (not mounted yet), its store's path, and the rule names that store holds on disk (read by
 * SQLite in this process).
 */
export function stateOnFrozenDisk(id: string): {
  stateDir: string;
  db: string;
  disk: FrozenDisk;
  onDisk: () => string[];
} {
  const stateDir = `/tmp/xdpctl-test-${id}-state`;
  const db = `${stateDir}/state.db`;
  const onDisk = () => {
    const raw = new Database(db, { readonly: true, timeout: 1000 });
    try {
      return (raw.prepare('SELECT name FROM rules ORDER BY name').all() as { name: string }[]).map((r) => r.name);
    } finally {
      raw.close();
    }
  };
  return { stateDir, db, disk: new FrozenDisk(stateDir, `/tmp/xdpctl-test-${id}-state.img`), onDisk };
}

/**
 * Wait until two reconciler passes of `d` (started with --prometheus) have ended since the call: each reads the
 * store on its worker thread, which takes its read mark in state.db-shm then, not at the next change's BEGIN
 * while frozen. That is not fixed yet (docs/state-store.md): a write into that mmapped file on a frozen disk
 * blocks the store's worker thread in a page fault, and a fork of the daemon meanwhile (an ethtool it runs)
 * waits for that mapping's lock, holding the event loop until the thaw (seen: MainThread in __vma_start_write
 * under dup_mmap, the WorkerThread in ext4_page_mkwrite). Call it after the last commit, before a freeze.
 */
export async function twoPassesSince(d: DaemonProcess): Promise<void> {
  const t0 = Date.now();
  const age = () => metric(d.prometheus!, 'xdpctl_reconciler_last_pass_age', {});
  await until(
    async () => String(await age()),
    async () => {
      const a = await age();
      return a !== undefined && (Date.now() - t0) / 1000 - a > 2.5;
    },
    15_000,
  );
}

/** A deadline for a call (a daemon whose event loop is held fails the test, not hangs it; cleanup thaws). */
export const soon = (ms = 3000) => ({ signal: AbortSignal.timeout(ms) });

/** How long `p` takes to settle, ms, and its outcome. */
export async function timed<T>(
  p: Promise<T>,
): Promise<
  { ms: number; value: T; error: undefined } | { ms: number; value: undefined; error: Error & { code?: Status } }
> {
  const t0 = Date.now();
  const r = await p.then(
    (value) => ({ value, error: undefined }),
    (error: Error & { code?: Status }) => ({ value: undefined, error }),
  );
  return { ms: Date.now() - t0, ...r };
}
