/**
 * Where the daemon runs. Started with `nsenter --net=/run/netns/X` it must
 * see X's interfaces with X's own MACs, even when the root namespace has an
 * interface of the same name (whose MAC /sys, still the root namespace's
 * sysfs, would give). Started where the pin root is not on bpffs (a plain
 * directory; `ip netns exec`, which remounts /sys) it must exit at once with
 * a message that says so.
 */
import assert from 'node:assert/strict';
import { mkdirSync, rmSync } from 'node:fs';
import { after, describe, it } from 'node:test';

import { openPinnedMap } from '../../src/server/dataplane/bpf-map.js';
import { backendEntry, u32 } from '../../src/server/dataplane/codec.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, runId, sh, shQuiet } from '../helpers/env.js';

const macText = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(':');

describe('where the daemon runs', kernelOnly(), () => {
  const id = runId();
  const netns = `xdpt-${id}-ns`;
  const dev = `n${id}d`; // exists in the root namespace AND in netns, with different MACs
  const ingress = `n${id}i`;
  const rootMac = '02:aa:00:00:00:01';
  const nsMac = '02:bb:00:00:00:02';
  let d: DaemonProcess | undefined;

  after(async () => {
    await d?.destroy();
    shQuiet('ip', ['link', 'del', dev]);
    shQuiet('ip', ['netns', 'del', netns]);
    for (const x of [`ns${id}`, `bf${id}`, `ne${id}`]) {
      XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${x}`);
      rmSync(`/tmp/xdpctl-test-${x}-state`, { recursive: true, force: true });
    }
    rmSync(`/tmp/xdpctl-test-${id}-plain`, { recursive: true, force: true });
  });

  it('under nsenter --net it reads its own namespace: ifindex and MAC of a same-named interface', async () => {
    sh('ip', ['link', 'add', dev, 'address', rootMac, 'type', 'veth', 'peer', 'name', `${dev}p`]);
    sh('ip', ['netns', 'add', netns]);
    const ipn = (...args: string[]) => sh('ip', ['-n', netns, ...args]);
    ipn('link', 'set', 'lo', 'up');
    // The backend's static MAC is its veth peer's: a contradicting one would be taken out of the table by
    // the reconciler's static-MAC check (static-mac.ts) as soon as a pass runs.
    ipn(
      'link',
      'add',
      dev,
      'address',
      nsMac,
      'type',
      'veth',
      'peer',
      'name',
      `${dev}q`,
      'address',
      '02:cc:00:00:00:03',
    );
    ipn('link', 'add', ingress, 'type', 'veth', 'peer', 'name', `${ingress}q`);
    for (const i of [dev, `${dev}q`, ingress, `${ingress}q`]) ipn('link', 'set', i, 'up');
    const nsIndex = JSON.parse(ipn('-j', 'link', 'show', dev))[0].ifindex as number;
    const rootIndex = JSON.parse(sh('ip', ['-j', 'link', 'show', dev]))[0].ifindex as number;

    d = await DaemonProcess.start(`ns${id}`, [], {}, ['nsenter', `--net=/run/netns/${netns}`, '--']);
    const c = d.clients(d.unix);
    await c.rules.createRule({
      rule: {
        name: 'here',
        match: { port: 7999 },
        ingressInterfaces: [ingress],
        backends: [{ ip: '198.18.77.2', mac: '02:cc:00:00:00:03', interface: dev }],
      },
    });
    const rule = (await c.rules.getRule({ name: 'here' })).rule!;
    assert.equal(rule.status!.backendStatus[0].active, true, JSON.stringify(rule.status));
    const listed = (await c.interfaces.listInterfaces({})).interfaces.find((i) => i.name === ingress);
    assert.equal(listed?.ifindex, JSON.parse(ipn('-j', 'link', 'show', ingress))[0].ifindex);

    // The rewrite's source MAC is the namespace's interface, not the root namespace's namesake.
    const backends = openPinnedMap(`${d.pinRoot}/maps/backends`, u32, backendEntry);
    try {
      const entries = [...backends.entries()].map(([, e]) => e).filter((e) => e.ifindex !== 0);
      assert.equal(entries.length, 1);
      assert.equal(entries[0].ifindex, nsIndex, `ifindex ${nsIndex} in ${netns} (root's ${dev} is ${rootIndex})`);
      assert.equal(macText(entries[0].smac), nsMac, `not the root namespace's ${rootMac}`);
      assert.equal(macText(entries[0].dmac), '02:cc:00:00:00:03');
    } finally {
      backends.close();
    }
  });

  it('refuses a pin root that is not on bpffs, at once and saying so', async () => {
    const plain = `/tmp/xdpctl-test-${id}-plain`;
    mkdirSync(plain, { recursive: true });
    const started = Date.now();
    await assert.rejects(
      DaemonProcess.start(`bf${id}`, ['--pin-root', `${plain}/pins`]),
      /exited 1: .*is not a BPF filesystem .*mount -t bpf bpf \/sys\/fs\/bpf/s,
    );
    assert.ok(Date.now() - started < 15_000);
  });

  it('under ip netns exec (/sys remounted without bpffs) it exits with the same message', async () => {
    shQuiet('ip', ['netns', 'add', netns]); // made by the first test; again if it failed early
    await assert.rejects(
      DaemonProcess.start(`ne${id}`, [], {}, ['ip', 'netns', 'exec', netns]),
      /exited 1: .*\/sys\/fs\/bpf is not a BPF filesystem .*nsenter --net/s,
    );
  });
});
