/**
 * Running this package's programs as another user (e.g. `nobody`, uid 65534) from a checkout that
 * user cannot read: a clone in a private directory (mode 0700, as /root is) makes `${ROOT}dist/client/cli.js`
 * unreachable for any other uid (exit 126). A test that needs another uid copies what it runs into a
 * fresh world-readable directory made with mkdtemp, and removes it afterwards.
 *
 * What is copied: the given paths of the checkout, package.json, and the production dependencies
 * from package-lock.json (the packages a user's `npm install` would bring; dev-only ones stay out,
 * which also proves the programs need none of them), plus the Node binary when the other user cannot
 * run the one this test runs on. Files are hard-linked when the destination is on the same file
 * system (cheap: no data copied; the link has the original's mode), copied otherwise.
 */
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import {
  chmodSync,
  cpSync,
  existsSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

import { ROOT } from './env.js';

/** Whether `uid`/`gid` can run (`-x`) or read (`-r`) `path`, asked of the kernel through setpriv. */
export function accessibleTo(uid: number, gid: number, path: string, test: '-x' | '-r' = '-r'): boolean {
  const r = spawnSync('setpriv', [
    '--reuid',
    String(uid),
    '--regid',
    String(gid),
    '--clear-groups',
    'test',
    test,
    path,
  ]);
  return r.status === 0;
}

/** Hard-link `src` (a file or a tree) to `dst`, falling back to a copy across file systems. */
function linkTree(src: string, dst: string): void {
  const st = statSync(src);
  if (st.isDirectory()) {
    mkdirSync(dst, { recursive: true, mode: st.mode & 0o7777 });
    chmodSync(dst, st.mode & 0o7777);
    for (const e of readdirSync(src)) linkTree(join(src, e), join(dst, e));
    return;
  }
  mkdirSync(dirname(dst), { recursive: true });
  try {
    linkSync(src, dst);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
    cpSync(src, dst, { preserveTimestamps: true });
    chmodSync(dst, st.mode & 0o7777);
  }
}

/** The production dependencies' top-level directories (node_modules/x, node_modules/@s/x) from the lockfile. */
function productionPackages(): string[] {
  const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as {
    packages: Record<string, { dev?: boolean; link?: boolean }>;
  };
  return Object.entries(lock.packages)
    .filter(([p, v]) => p.startsWith('node_modules/') && !v.dev && !v.link)
    .map(([p]) => p)
    .filter((p) => !p.slice('node_modules/'.length).includes('/node_modules/'))
    .filter((p) => existsSync(join(ROOT, p))); // optional ones for other platforms are absent
}

/** A copy of the package's runtime that another user can read and run; `remove()` deletes it. */
export class OtherUserRuntime {
  private constructor(
    /** The copy's root (ends in '/'), mode 0755. */
    readonly root: string,
    /** The Node binary that user can run. */
    readonly node: string,
  ) {}

  /**
   * Copy `paths` (relative to the checkout, e.g. ['bin', 'src']) with package.json and the production
   * dependencies, for `uid`/`gid`.
   */
  static create(paths: string[], uid = 65534, gid = 65534): OtherUserRuntime {
    const dir = mkdtempSync(join(tmpdir(), 'xdpctl-other-user-'));
    try {
      chmodSync(dir, 0o755);
      for (const p of ['package.json', ...paths, ...productionPackages()]) linkTree(join(ROOT, p), join(dir, p));
      let node = process.execPath;
      if (!accessibleTo(uid, gid, node, '-x')) {
        node = join(dir, '.node', 'bin', 'node');
        mkdirSync(dirname(node), { recursive: true, mode: 0o755 });
        linkTree(process.execPath, node); // a link shares the original's mode (0755): no chmod here
      }
      const rt = new OtherUserRuntime(`${dir}/`, node);
      if (!accessibleTo(uid, gid, join(dir, 'package.json'))) throw new Error(`uid ${uid} cannot read ${dir}`);
      return rt;
    } catch (e) {
      rmSync(dir, { recursive: true, force: true });
      throw e;
    }
  }

  /** Remove the copy (links only: the checkout's files stay). */
  remove(): void {
    rmSync(this.root, { recursive: true, force: true });
  }

  /**
   * Run `bin` of the copy (e.g. 'dist/client/cli.js') as `uid`:`gid` with no supplementary groups, in the
   * copy's directory, with this copy's Node first on PATH.
   */
  run(bin: string, args: string[], uid = 65534, gid: number | string = 65534): SpawnSyncReturns<string> {
    return spawnSync(
      'setpriv',
      ['--reuid', String(uid), '--regid', String(gid), '--clear-groups', join(this.root, bin), ...args],
      {
        encoding: 'utf8',
        cwd: this.root, // the test's working directory (the checkout) may be closed to that user
        env: { ...process.env, PATH: `${dirname(this.node)}:${process.env.PATH ?? ''}` },
      },
    );
  }
}
