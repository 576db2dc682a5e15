/**
 * A --config path (or --auth-config, a TLS file) that is a symbolic link leading nowhere, or to what is not a
 * file, says what the link leads to (twenty-fourth review, LOW-6): a dangling link was "read X: ENOENT: no such
 * file or directory, stat 'X'", as if nothing were at the path, and a link to a directory "X is a directory".
 * Now: "X is a symbolic link to T, which does not exist", a loop "...: a loop of symbolic links (ELOOP)", a
 * directory "X is a symbolic link to D, which is a directory, not a regular file"; the config watcher refuses it
 * (Unreadable) and the last good configuration stays in force. Real files in a temporary directory; the
 * controller on the model dataplane.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { ConfigWatcher } from '../../src/server/config-watcher.js';
import { Controller } from '../../src/server/core/controller.js';
import type { Logger } from '../../src/server/log.js';
import {
  BrokenSymlink,
  MAX_CONFIG_BYTES,
  NotARegularFile,
  openRegular,
  readRegularFileSync,
} from '../../src/server/regular-file.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';

const dir = mkdtempSync(join(tmpdir(), 'xdpctl-symlink-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
/** A fresh sub-directory for one case. */
const fresh = () => {
  const d = join(dir, `c${n++}`);
  mkdirSync(d);
  return d;
};

/** What both readers throw for `path`: the async one (--config) and the sync one (--auth-config, TLS). */
async function thrown(path: string): Promise<Error[]> {
  const out: Error[] = [];
  await openRegular(path, MAX_CONFIG_BYTES).then(
    async (fh) => {
      await fh.close();
      assert.fail(`${path} opened`);
    },
    (e: Error) => out.push(e),
  );
  try {
    readRegularFileSync(path);
    assert.fail(`${path} read`);
  } catch (e) {
    out.push(e as Error);
  }
  return out;
}

describe('a path that is a symbolic link leading nowhere says so', () => {
  it('a dangling link: "X is a symbolic link to T, which does not exist" (ENOENT)', async () => {
    const d = fresh();
    const link = join(d, 'x.yaml');
    symlinkSync(join(d, 'missing', 'target.yaml'), link);
    for (const e of await thrown(link)) {
      assert.ok(e instanceof BrokenSymlink, String(e));
      assert.equal(e.code, 'ENOENT');
      assert.equal(
        e.message,
        `${link} is a symbolic link to ${join(d, 'missing', 'target.yaml')}, which does not exist`,
      );
    }
  });

  it('a relative target, through a second link: each named, with the path it names', async () => {
    const d = fresh();
    const link = join(d, 'x.yaml');
    symlinkSync('y.yaml', link);
    symlinkSync('/nonexistent-xdpctl/z.yaml', join(d, 'y.yaml'));
    for (const e of await thrown(link)) {
      assert.ok(e instanceof BrokenSymlink, String(e));
      assert.equal(
        e.message,
        `${link} is a symbolic link to y.yaml (${join(d, 'y.yaml')}), which is a symbolic link to ` +
          '/nonexistent-xdpctl/z.yaml, which does not exist',
      );
    }
  });

  it('a loop of links (and a link to itself): ELOOP, said', async () => {
    const d = fresh();
    const a = join(d, 'a.yaml');
    const b = join(d, 'b.yaml');
    symlinkSync(b, a);
    symlinkSync(a, b);
    for (const e of await thrown(a)) {
      assert.ok(e instanceof BrokenSymlink, String(e));
      assert.equal(e.code, 'ELOOP');
      assert.equal(
        e.message,
        `${a} is a symbolic link to ${b}, which is a symbolic link to ${a}: a loop of symbolic links (ELOOP)`,
      );
    }
    const self = join(d, 'self.yaml');
    symlinkSync('self.yaml', self);
    for (const e of await thrown(self)) {
      assert.equal(e.message, `${self} is a symbolic link to self.yaml (${self}): a loop of symbolic links (ELOOP)`);
    }
  });

  it('a link to a directory: "X is a symbolic link to D, which is a directory, not a regular file"', async () => {
    const d = fresh();
    const link = join(d, 'x.yaml');
    mkdirSync(join(d, 'conf'));
    symlinkSync(join(d, 'conf'), link);
    for (const e of await thrown(link)) {
      assert.ok(e instanceof NotARegularFile, String(e));
      assert.equal(
        e.message,
        `${link} is a symbolic link to ${join(d, 'conf')}, which is a directory, not a regular file; refused without opening it`,
      );
    }
  });

  it('no link: a missing path and a directory are said as before', async () => {
    const d = fresh();
    for (const e of await thrown(join(d, 'none.yaml'))) {
      assert.ok(!(e instanceof BrokenSymlink));
      assert.equal((e as NodeJS.ErrnoException).code, 'ENOENT');
    }
    for (const e of await thrown(d)) {
      assert.equal(e.message, `${d} is a directory, not a regular file; refused without opening it`);
    }
  });
});

describe('config-file mode: a dangling link at the path', () => {
  it('is refused (Unreadable) saying what the link leads to; the last good configuration stays', async () => {
    const d = fresh();
    const good = join(d, 'good.yaml');
    const link = join(d, 'x.yaml');
    writeFileSync(good, 'rules: []\nlinks:\n  in0: in1\n');
    symlinkSync(good, link);
    const lines: string[] = [];
    const log: Logger = {
      debug() {},
      info(_o, m) {
        lines.push(`info ${m}`);
      },
      warn(_o, m) {
        lines.push(`warn ${m}`);
      },
      error(_o, m) {
        lines.push(`error ${m}`);
      },
      child() {
        return log;
      },
    };
    const ctl = new Controller(new ModelDataplane(), { mode: 'generic', fixVethPeers: false });
    const w = new ConfigWatcher(link, ctl, log);
    try {
      assert.equal((await w.reload('test')).inForce, true);
      const want = (target: string, end: string) => `config ${link} is a symbolic link to ${target}${end}`;
      rmSync(good);
      const r1 = await w.reload('test');
      assert.equal(r1.inForce, false);
      assert.equal(r1.reason, 'Unreadable');
      assert.equal(r1.message, want(good, ', which does not exist'));
      rmSync(link);
      symlinkSync(link, link);
      assert.equal((await w.reload('test')).message, want(link, ': a loop of symbolic links (ELOOP)'));
      rmSync(link);
      mkdirSync(good);
      symlinkSync(good, link);
      assert.equal(
        (await w.reload('test')).message,
        want(good, ', which is a directory, not a regular file; refused without opening it'),
      );
      assert.deepEqual(
        ctl.desiredState().links.map((l) => [l.a, l.b]),
        [['in0', 'in1']],
        'the last good configuration is kept',
      );
      assert.ok(
        lines.some((l) =>
          l.startsWith(`error ${want(good, ', which does not exist')}; the last good configuration keeps running`),
        ),
        lines.join('\n'),
      );
      // The target written: applied again.
      rmSync(good, { recursive: true });
      writeFileSync(good, 'rules: []\nlinks: {}\n');
      assert.equal((await w.reload('test')).inForce, true);
      assert.deepEqual(ctl.desiredState().links, []);
    } finally {
      w.close();
    }
  });
});
