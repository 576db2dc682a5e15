/**
 * Config-file mode (--config) in end-to-end tests: waiting until what a daemon says it applies (its links, and
 * GetStatus's config file in force with the text's sha256) is the text a test wrote, and stopping a daemon so
 * that the next one a test file starts finds the interfaces as they were. It starts nothing itself.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { rmSync } from 'node:fs';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import type { DaemonProcess } from './daemon.js';
import { sleep } from './env.js';
import type { Host } from './topology.js';

/** The sha256 of a text in hex, as GetStatus names a config file's text. */
export const sha = (text: string): string => createHash('sha256').update(text).digest('hex');

/** The link between two hosts' veths as untilApplied() takes it: both names, sorted, joined by "-". */
export const linkPair = (a: Host, b: Host): string => [a.hostIf, b.hostIf].sort().join('-');

/**
 * Until `d`'s links are `want` (linkPair form, any order) and it says `text` is in force (GetStatus: inForce,
 * appliedSha256), looked at every `every` ms for at most `ms`; then asserts exactly that, with `message`.
 * Returns the ms it took.
 */
export async function untilApplied(
  d: DaemonProcess,
  want: string[],
  text: string,
  { ms = 8000, every = 100, message = 'the text on disk is applied, and said to be' } = {},
): Promise<number> {
  const t0 = Date.now();
  const c = d.clients();
  const look = async () => {
    const links = (await c.links.listLinks({})).links.map((l) => [l.a, l.b].sort().join('-')).sort();
    const s = (await c.daemon.getStatus({})).configFile;
    return { links, inForce: s?.inForce, sha256: s?.appliedSha256 };
  };
  const wanted = { links: [...want].sort(), inForce: true, sha256: sha(text) };
  let now = await look();
  for (const end = t0 + ms; Date.now() < end && JSON.stringify(now) !== JSON.stringify(wanted);) {
    await sleep(every);
    now = await look();
  }
  assert.deepEqual(now, wanted, message);
  return Date.now() - t0;
}

/**
 * Stop `d` with SIGTERM (with --cleanup-on-exit it detaches its program: the next daemon, with pins of its own,
 * would find it attached and rightly leave the interfaces alone), destroy() it if that fails, and remove run
 * `id`'s pins and state dir (those of DaemonProcess.start; also when `d` is undefined, a start that failed).
 */
export async function stopDaemon(d: DaemonProcess | undefined, id: string): Promise<void> {
  if (d && (await d.stop()) !== 0) await d.destroy();
  await d?.destroy();
  XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
  rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
}
