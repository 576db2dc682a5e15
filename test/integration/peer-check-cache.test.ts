/**
 * KernelDataplane.redirectTarget trusts a passed veth-peer check for a while
 * (it runs `ip` and `ethtool`, and used to run for every backend of every
 * rule change), keyed by interface name and ifindex: a failed check is never
 * cached, a recreated interface is checked again, and a TTL of 0 turns the
 * cache off. Real veths, peers in a namespace.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { KernelDataplane } from '../../src/server/dataplane/adapter.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { kernelOnly, runId } from '../helpers/env.js';
import { openDatapath } from '../helpers/fixture.js';
import { Topology } from '../helpers/topology.js';

describe('veth peer check cache', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  let dp: XdpDatapath;
  const groOff = () => topo.exec('c', 'ethtool', ['-K', 'eth0', 'gro', 'off']);

  before(() => {
    topo.addHost('c');
    dp = openDatapath(pinRoot);
  });
  after(() => {
    dp?.close();
    topo.destroy();
    XdpDatapath.unpinAll(pinRoot);
  });

  it('caches only passed checks, per ifindex, for the TTL', async () => {
    const kd = new KernelDataplane(dp);
    const ifname = topo.host('c').hostIf;
    groOff();
    assert.equal((await kd.redirectTarget(ifname, false)).ok, false, 'a failed check');
    assert.equal((await kd.redirectTarget(ifname, false)).ok, false, 'is not cached');
    assert.equal((await kd.redirectTarget(ifname, true)).ok, true, 'fixed: GRO on');
    groOff();
    const cached = await kd.redirectTarget(ifname, false);
    assert.deepEqual(cached, { ok: true, detail: 'checked recently' }, 'trusted within the TTL');
    const uncached = new KernelDataplane(dp, 0);
    assert.equal((await uncached.redirectTarget(ifname, false)).ok, false, 'TTL 0 checks every time');
    // Same name, new device (new ifindex, GRO off): checked again.
    topo.unplug('c');
    topo.replug('c');
    groOff();
    assert.equal((await kd.redirectTarget(ifname, false)).ok, false, 'a recreated interface is checked again');
  });
});
