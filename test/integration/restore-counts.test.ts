/**
 * Restart, restore and migration log lines count what was observed in the kernel, never what was stored or
 * intended (a review's findings): "restored … links: 2" counted a link whose interface was
 * missing (nothing written to the kernel for it), and a `--max-rules` migration logged "kernel entries that
 * differed from the stored state were rewritten" for maps that were new and empty. Here a real daemon
 * restarts with one link's interface deleted, then migrates to a larger --max-rules; each line's counts are
 * compared with what bpftool reads from the pinned maps.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, runId, sh, shQuiet } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';

const PORT = 7415;

describe('restore and migration log lines count what the kernel holds', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess | undefined;
  let vm: Host, b1: Host, x: Host, y: Host, p: Host, q: Host;

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    x = topo.addHost('x', '198.18.7.1/24');
    y = topo.addHost('y', '198.18.7.2/24');
    p = topo.addHost('p', '198.18.8.1/24');
    q = topo.addHost('q', '198.18.8.2/24');
  });
  after(async () => {
    await d?.destroy();
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
  });

  /** The daemon's JSON log records whose msg starts with `prefix`. */
  const records = (prefix: string) =>
    d!.output
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown> & { msg: string })
      .filter((r) => r.msg.startsWith(prefix));
  /** Entries of a pinned map, as bpftool reads them. */
  const entries = (map: string) =>
    (JSON.parse(sh('bpftool', ['-j', 'map', 'dump', 'pinned', `${d!.pinRoot}/maps/${map}`])) as unknown[]).length;

  it('a link whose interface is missing is not counted as restored', async () => {
    d = await DaemonProcess.start(id, ['--log-level', 'info']);
    const c = d.clients();
    await c.rules.createRule({
      rule: {
        name: 'web',
        match: { port: PORT, destination: '', sourcePrefixes: [] },
        ingressInterfaces: [vm.hostIf],
        backends: [{ ip: b1.ip!, mac: b1.mac!, interface: b1.hostIf, weight: 1 }],
        udpChecksum: 0,
        labels: {},
      },
    });
    await c.links.connect({ link: { a: x.hostIf, b: y.hostIf, direction: 1 } });
    await c.links.connect({ link: { a: p.hostIf, b: q.hostIf, direction: 1 } });
    assert.equal(await d.stop(), 0);
    // q's host side goes away while no daemon runs: the kernel drops the devmap entries into it.
    shQuiet('ip', ['link', 'del', q.hostIf]);
    d = await DaemonProcess.start(id, ['--log-level', 'info']);
    const [restored] = records('restored');
    assert.ok(restored, d.output);
    const linkDirs = entries('xc_links');
    assert.equal(linkDirs, 2, 'the kernel forwards x <-> y only');
    assert.deepEqual(restored.links, { stored: 2, inKernel: 1, waiting: 1, failed: 0 }, JSON.stringify(restored));
    assert.deepEqual(
      restored.rules,
      { stored: 1, inKernel: 1, waiting: 0, failed: 0, partial: 0 },
      JSON.stringify(restored),
    );
    assert.match(
      restored.msg,
      /^restored: 1 of 1 rule and 1 of 2 links in the kernel \(read back\); 1 link waits for its interfaces$/,
    );
  });

  it('a --max-rules migration says what it wrote into the new maps, counted from them', async () => {
    assert.equal(await d!.stop(), 0);
    d = await DaemonProcess.start(id, ['--log-level', 'info', '--max-rules', '32']);
    const lines = d.output.split('\n').filter((l) => /"msg":"(adopted|rules adopted|restored|migrat)/.test(l));
    assert.equal(
      records('adopted rules: kernel entries that differed').length,
      0,
      `nothing is said to have differed in maps that were new: ${lines.join('\n')}`,
    );
    const [written] = records('adopted rules written into empty tables');
    assert.ok(written, `the new maps are said to be written, not found to differ: ${lines.join('\n')}`);
    const [adopted] = records('rules adopted');
    assert.ok(adopted, lines.join('\n'));
    assert.equal(adopted.written, written.count);
    assert.equal(adopted.adopted, 1);
    assert.equal(adopted.inKernel, entries('rule_match'), 'match entries counted from the kernel');
    const [restored] = records('restored');
    assert.deepEqual(restored.rules, { stored: 1, inKernel: 1, waiting: 0, failed: 0, partial: 0 });
  });
});
