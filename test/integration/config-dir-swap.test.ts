/**
 * Config-file mode when a directory on the way to the file changes, not the file's own directory: a release
 * directory swapped under the path (`current -> rel1` replaced by `current -> rel2` with a rename, as
 * deployment tools do), a directory renamed away and another renamed in its place, and a directory that does
 * not exist when the daemon starts. What the daemon says it applies (links, GetStatus's sha256 and "in force")
 * must be what the path names now; pings prove the datapath.
 */
import assert from 'node:assert/strict';
import { mkdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { linkPair as pair, stopDaemon, untilApplied } from '../helpers/config-file.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, runId, sleep } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';

describe('config-file mode: a directory on the way to the file changes', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const dir = `/tmp/xdpctl-test-${id}-cfg`;
  let d: DaemonProcess | undefined;
  let h1: Host, h2: Host, h3: Host;

  before(() => {
    h1 = topo.addHost('h1', '198.18.0.1/24');
    h2 = topo.addHost('h2', '198.18.0.2/24');
    h3 = topo.addHost('h3', '198.18.0.3/24');
    mkdirSync(dir, { recursive: true });
  });
  const stop = async () => {
    await stopDaemon(d, id);
    d = undefined;
  };
  after(async () => {
    await stop();
    topo.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  const linksOf = (a: Host, b: Host) => `links:\n  ${a.hostIf}: ${b.hostIf}\n`;
  /** Until the daemon's links are `want` and it says the text `text` is in force (at most `ms`). */
  const applied = (want: string[], text: string, ms = 8000) =>
    untilApplied(d!, want, text, { ms, message: 'what the path names now is applied, and said to be' });

  it('a release directory swapped under the path (a symlink renamed over), then the new file edited', async () => {
    const base = `${dir}/swap`;
    mkdirSync(`${base}/rel1`, { recursive: true });
    mkdirSync(`${base}/rel2`, { recursive: true });
    writeFileSync(`${base}/rel1/links.yaml`, linksOf(h1, h2));
    writeFileSync(`${base}/rel2/links.yaml`, linksOf(h1, h2));
    symlinkSync('rel1', `${base}/current`);
    d = await DaemonProcess.start(id, ['--config', `${base}/current/links.yaml`, '--cleanup-on-exit']);
    try {
      await applied([pair(h1, h2)], linksOf(h1, h2));
      symlinkSync('rel2', `${base}/current.new`);
      renameSync(`${base}/current.new`, `${base}/current`);
      await sleep(500);
      // Only the new release's file changes: no event names anything the daemon watched at start.
      writeFileSync(`${base}/rel2/links.yaml`, linksOf(h1, h3));
      await applied([pair(h1, h3)], linksOf(h1, h3));
      assert.equal(topo.ping('h1', h3.ip!), true, 'h1 -> h3 forwards');
      // The old release edited: not what the path names any more, not applied.
      writeFileSync(`${base}/rel1/links.yaml`, linksOf(h2, h3));
      await sleep(3000);
      await applied([pair(h1, h3)], linksOf(h1, h3), 100);
    } finally {
      await stop();
    }
  });

  it('a directory renamed away and another renamed in its place', async () => {
    const base = `${dir}/mv`;
    mkdirSync(`${base}/conf`, { recursive: true });
    mkdirSync(`${base}/conf2`, { recursive: true });
    writeFileSync(`${base}/conf/links.yaml`, linksOf(h1, h2));
    writeFileSync(`${base}/conf2/links.yaml`, linksOf(h2, h3));
    d = await DaemonProcess.start(id, ['--config', `${base}/conf/links.yaml`, '--cleanup-on-exit']);
    try {
      await applied([pair(h1, h2)], linksOf(h1, h2));
      renameSync(`${base}/conf`, `${base}/conf.old`);
      renameSync(`${base}/conf2`, `${base}/conf`);
      await applied([pair(h2, h3)], linksOf(h2, h3));
      assert.equal(topo.ping('h2', h3.ip!), true, 'h2 -> h3 forwards');
    } finally {
      await stop();
    }
  });

  it('a directory missing at start, created later with a valid file', async () => {
    const base = `${dir}/later`;
    d = await DaemonProcess.start(id, ['--config', `${base}/sub/links.yaml`, '--cleanup-on-exit']);
    try {
      const s = (await d.clients().daemon.getStatus({})).configFile;
      assert.equal(s?.inForce, false, 'nothing readable: not in force');
      await sleep(1000);
      mkdirSync(`${base}/sub`, { recursive: true });
      writeFileSync(`${base}/sub/links.yaml`, linksOf(h1, h2));
      await applied([pair(h1, h2)], linksOf(h1, h2));
      assert.equal(topo.ping('h1', h2.ip!), true, 'h1 -> h2 forwards');
    } finally {
      await stop();
    }
  });
});
