/**
 * A pin root and bpffs mounts, as the kernel shows them (tenth review, findings 5 and 13):
 * - a pin root that is itself the root of a bpffs mount (mounted on a bpffs directory) is cleaned by
 *   --cleanup-on-exit down to what the kernel put there (maps.debug, progs.debug) and stays a mount point:
 *   exit 0, no "shutdown failed" (before: unlinking maps.debug failed EPERM, the daemon exited 1 and left
 *   progs/ behind);
 * - a bpffs mounted over a running daemon's pin root is said as such: "another filesystem (bpf mounted at
 *   P, mount id N) was mounted over pin root P", first "cannot be used as the pin root" while the new mount
 *   is 1777, then re-pinned there once it is 0700; never "removed", never "renamed to P" (before: "was
 *   removed ... could not be taken again", then "was renamed to P"). With --cleanup-on-exit, the pins
 *   hidden under the mount are removed too (through the lock's descriptor): after umount the old
 *   directory holds no maps/ or progs/.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { after, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, runId, sh, shQuiet, until } from '../helpers/env.js';

describe('pin roots and bpffs mounts', kernelOnly(), () => {
  const ids: string[] = [];
  const daemons: DaemonProcess[] = [];
  const start = async (id: string, extra: string[]) => {
    const d = await DaemonProcess.start(id, ['--log-level', 'info', ...extra]);
    daemons.push(d);
    return d;
  };
  /** The records the daemon logged whose msg matches `re`. */
  const lines = (d: DaemonProcess, re: RegExp) =>
    d.output
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { msg: string; level: number })
      .filter((r) => re.test(r.msg));

  after(async () => {
    // Each step on its own: one that fails (a daemon of a failed case) must not leave the mounts behind.
    for (const d of daemons) await d.destroy().catch(() => undefined);
    for (const id of ids) {
      const root = `/sys/fs/bpf/xdpctl-test-${id}`;
      for (let i = 0; i < 3; i++) shQuiet('umount', [root]);
      XdpDatapath.unpinAll(root);
      rmSync(root, { recursive: true, force: true });
      rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    }
  });

  it('a pin root that is a bpffs mount root: --cleanup-on-exit leaves the kernel entries and the mount, exit 0', async () => {
    const id = runId() + 'm';
    ids.push(id);
    const root = `/sys/fs/bpf/xdpctl-test-${id}`;
    mkdirSync(root, { mode: 0o700 });
    sh('mount', ['-t', 'bpf', '-o', 'mode=0700', 'bpf', root]);
    const kernelEntries = readdirSync(root).sort();
    const d = await start(id, ['--cleanup-on-exit']);
    assert.ok(readdirSync(`${root}/maps`).length > 0, 'maps pinned in the mount');
    const code = await d.stop();
    assert.equal(code, 0, `exit code (output: ${d.output.slice(-2000)})`);
    assert.deepEqual(lines(d, /shutdown failed|could not be removed/), [], 'no failed removal');
    assert.deepEqual(readdirSync(root).sort(), kernelEntries, "only the kernel's own entries are left");
    assert.match(sh('findmnt', ['-n', '-o', 'FSTYPE', root]), /bpf/, 'still a mount point');
  });

  it('a bpffs mounted over the pin root: said as a mount, re-pinned once usable, hidden pins cleaned up', async () => {
    const id = runId() + 'o';
    ids.push(id);
    const root = `/sys/fs/bpf/xdpctl-test-${id}`;
    const d = await start(id, ['--cleanup-on-exit']);
    assert.ok(readdirSync(`${root}/maps`).length > 0);
    // A fresh bpffs (mode 1777 by default) over it: not usable as a pin root (writable by others).
    sh('mount', ['-t', 'bpf', 'bpf', root]);
    const mountId = sh('findmnt', ['-n', '-o', 'ID', '--mountpoint', root]).trim().split('\n').at(-1)!.trim();
    await until('the refusal logged', () => lines(d, /cannot be used as the pin root/).length > 0, 10_000);
    const [refusal] = lines(d, /cannot be used as the pin root/);
    assert.match(refusal.msg, new RegExp(`another filesystem \\(bpf mounted at ${root}, mount id ${mountId}\\)`));
    assert.match(refusal.msg, /pinned only in the directory hidden under it/);
    // Made ours: the daemon takes it and pins there again.
    sh('chmod', ['0700', root]);
    await until('the cover said', () => lines(d, /was mounted over pin root/).some((r) => r.level === 40), 10_000);
    await until('re-pinned', () => existsSync(`${root}/maps`) && readdirSync(`${root}/maps`).length > 0, 10_000);
    assert.deepEqual(lines(d, /was renamed to|was removed/), [], 'no rename or removal claimed');
    const code = await d.stop();
    assert.equal(code, 0, `exit code (output: ${d.output.slice(-2000)})`);
    assert.deepEqual(lines(d, /shutdown failed|could not be removed/), [], 'no failed removal');
    assert.ok(!existsSync(`${root}/maps`) && !existsSync(`${root}/progs`), 'the mount cleaned');
    sh('umount', [root]);
    assert.ok(!existsSync(`${root}/maps`) && !existsSync(`${root}/progs`), 'the hidden directory cleaned too');
  });
});
