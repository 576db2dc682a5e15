/**
 * Config-file mode bounds a read in time (the kind of a review's finding: a read that never returns — a FIFO
 * then, a filesystem that stopped answering here — wedged the watcher for good, the status still saying "in
 * force"). A read still under way after the bound is refused as Unreadable, saying so; no second read starts
 * while it hangs (each would hold one of libuv's four workers); when it returns, the file is read again and a
 * good text applied. The hanging read is modelled (no filesystem here hangs on demand); the real controller
 * runs on the model dataplane.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { ConfigWatcher, type ConfigReport } from '../../src/server/config-watcher.js';
import { Controller } from '../../src/server/core/controller.js';
import type { Logger } from '../../src/server/log.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';

describe('config-file mode: a read that does not return is bounded in time', () => {
  const dir = mkdtempSync(join(tmpdir(), 'xdpctl-read-bound-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('refuses it after the bound, starts no second read meanwhile, applies the file once it returns', async () => {
    const file = join(dir, 'links.yaml');
    writeFileSync(file, 'links: {}\n');
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
    const ctl = new Controller(new ModelDataplane(), { mode: 'auto', fixVethPeers: false });
    const reports: ConfigReport[] = [];
    const w = new ConfigWatcher(file, ctl, log, (r) => reports.push(r), 300);
    // The first read hangs until released; the ones after it read the file.
    type Read = { text: string; seen: { open: false; writers: []; how: 'none'; limits: string }; changed: false };
    let release!: (r: Read) => void;
    let reads = 0;
    const real = (w as unknown as { readOnce: () => Promise<Read> }).readOnce.bind(w);
    (w as unknown as { readOnce: () => Promise<Read> }).readOnce = () => {
      reads++;
      return reads === 1 ? new Promise<Read>((r) => (release = r)) : real();
    };

    const t0 = Date.now();
    const r1 = await w.reload('test');
    const took = Date.now() - t0;
    assert.ok(took >= 290 && took < 2000, `refused after the bound (${took} ms)`);
    assert.equal(r1.inForce, false);
    assert.equal(r1.reason, 'Unreadable');
    assert.match(r1.message ?? '', new RegExp(`reading ${file} took more than 0.3 s: the filesystem does not answer`));
    assert.equal(lines.filter((l) => /^error .*took more than 0\.3 s/.test(l)).length, 1, lines.join('\n'));

    // While it hangs: refused at once, and no other read started.
    const r2 = await w.reload('test');
    assert.equal(r2.reason, 'Unreadable');
    assert.match(r2.message ?? '', new RegExp(`a read of ${file} started at .* has not returned`));
    assert.equal(reads, 1, 'no second read while the first hangs');

    // It returns: the file is read again (a read of ours) and applied.
    release({
      text: 'ignored: the file is read again\n',
      seen: { open: false, writers: [], how: 'none', limits: '' },
      changed: false,
    });
    for (const end = Date.now() + 3000; !w.report().inForce && Date.now() < end;) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(w.report().inForce, true, JSON.stringify(w.report()));
    assert.equal(reads, 2);
    assert.ok(
      lines.some((l) => l === 'info config applied'),
      lines.join('\n'),
    );
    w.close();
  });
});
