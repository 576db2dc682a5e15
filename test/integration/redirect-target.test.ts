/**
 * KernelDataplane.redirectTarget, the "able to receive native redirects"
 * check of every backend egress and link target, against real devices: the
 * kernel's xdp-features (NDO_XMIT) decide for a device other than a veth, so a
 * bridge is refused; for a veth both the peer's own state (up, with a native
 * program or GRO) and NDO_XMIT must say yes, because GRO changed while the
 * peer is down leaves one of them wrong (veth-napi-truth.test.ts measures it). A veth whose peer
 * lost GRO is refused at once (a passed check is not trusted for a while, as
 * it was), a generic-mode program on the peer does not count (it gives the
 * peer no NAPI), a peer in an unnamed namespace is inspected and repaired there
 * when xdpctld has a file to enter it by (a process in it, an open file or a bind
 * mount of it, also one only in another process's private mount namespace), and one in a namespace it cannot enter is accepted when the
 * kernel says it can receive. Real veths and a bridge.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { KernelDataplane } from '../../src/server/dataplane/adapter.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { ifindexOf } from '../../src/server/dataplane/netdev.js';
import { forgetNetns } from '../../src/server/dataplane/netns-find.js';
import { XDP_ACT, xdpFeatures } from '../../src/server/dataplane/xdp-features.js';
import { kernelOnly, netnsFdOf, ROOT, runId, sh, shQuiet, until } from '../helpers/env.js';
import { openDatapath } from '../helpers/fixture.js';
import { esc, sealedNetns, unsharedProcess } from '../helpers/lab.js';
import { Topology } from '../helpers/topology.js';

describe('redirect target check (xdp-features NDO_XMIT)', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  const bridge = `x${id}br`;
  const lone = `x${id}u`;
  let dp: XdpDatapath;
  let kd: KernelDataplane;
  const peer = (args: string[]) => topo.exec('c', 'sh', ['-c', args.join(' ')]);
  const ndoXmit = (ifname: string) => ((xdpFeatures(ifindexOf(ifname)) ?? 0n) & XDP_ACT['ndo-xmit']) !== 0n;

  before(() => {
    topo.addHost('c');
    dp = openDatapath(pinRoot);
    kd = new KernelDataplane(dp);
  });
  after(() => {
    dp?.close();
    shQuiet('ip', ['link', 'del', bridge]);
    shQuiet('ip', ['link', 'del', lone]);
    topo.destroy();
    XdpDatapath.unpinAll(pinRoot);
  });

  it('a veth: its peer GRO or native program decides, checked every time', async () => {
    const ifname = topo.host('c').hostIf;
    peer(['ethtool -K eth0 gro off']);
    assert.equal(ndoXmit(ifname), false, 'the kernel: no ndo-xmit while the peer has no NAPI');
    assert.equal((await kd.redirectTarget(ifname, false)).ok, false, 'a failed check');
    assert.equal((await kd.redirectTarget(ifname, true)).ok, true, 'fixed: GRO on');
    assert.equal(ndoXmit(ifname), true, 'the kernel agrees');
    peer(['ethtool -K eth0 gro off']);
    const r = await kd.redirectTarget(ifname, false);
    assert.equal(r.ok, false, 'GRO off again: refused at once, not trusted from the last pass');
    assert.match(r.detail!, /has neither an XDP program nor GRO/);

    // A generic-mode program gives the peer no NAPI: still refused, and fixed by GRO.
    peer([`ip link set eth0 xdpgeneric obj ${ROOT}build/bpf/baseline.bpf.o sec xdp`]);
    assert.equal(ndoXmit(ifname), false);
    assert.equal((await kd.redirectTarget(ifname, false)).ok, false, 'a generic-mode program on the peer');
    assert.equal((await kd.redirectTarget(ifname, true)).ok, true, 'fixed with GRO');
    peer(['ip link set eth0 xdpgeneric off', '&&', 'ethtool -K eth0 gro off']);
    // A native-mode program does.
    peer([`ip link set eth0 xdpdrv obj ${ROOT}build/bpf/baseline.bpf.o sec xdp`]);
    assert.equal((await kd.redirectTarget(ifname, false)).ok, true, 'a native-mode program on the peer');
    peer(['ip link set eth0 xdpdrv off']);
    assert.equal((await kd.redirectTarget(ifname, false)).ok, false, 'and not once it is gone');
  });

  it("the peer's state and the kernel's ndo-xmit must both say yes (GRO switched while the peer was down)", async () => {
    const ifname = topo.host('c').hostIf;
    peer(['ethtool -K eth0 gro on']);
    assert.equal((await kd.redirectTarget(ifname, false)).ok, true, 'GRO on, up: verified');
    // veth_set_features does not re-announce the other end's xdp-features for a peer that is down.
    peer(['ip link set eth0 down', '&&', 'ethtool -K eth0 gro off', '&&', 'ip link set eth0 up']);
    assert.equal(ndoXmit(ifname), true, 'the kernel still claims ndo-xmit: the premise of this test');
    let r = await kd.redirectTarget(ifname, false);
    assert.equal(
      r.ok,
      false,
      'refused: the peer has no NAPI, whatever the stale flag says (and the check is not cached)',
    );
    assert.match(r.detail!, /has neither an XDP program nor GRO/);

    peer(['ethtool -K eth0 gro on', '&&', 'ethtool -K eth0 gro off']); // while up: announced (no ndo-xmit)
    assert.equal(ndoXmit(ifname), false);
    peer(['ip link set eth0 down', '&&', 'ethtool -K eth0 gro on', '&&', 'ip link set eth0 up']);
    assert.equal(ndoXmit(ifname), false, 'nor announces ndo-xmit for GRO switched on while down: the premise');
    r = await kd.redirectTarget(ifname, false);
    assert.equal(r.ok, false, 'GRO "on" but switched on while down: no NAPI (veth-napi-truth: 0 delivered)');
    assert.match(r.detail!, /has GRO but no NAPI/);
    r = await kd.redirectTarget(ifname, true);
    assert.equal(r.ok, true, 'fixed');
    assert.equal(ndoXmit(ifname), true, 'with fix, the peer GRO was switched off and on: NAPI, and the kernel says so');

    peer(['ip link set eth0 down']);
    r = await kd.redirectTarget(ifname, true);
    assert.equal(r.ok, false, 'a peer that is down has no NAPI');
    assert.match(r.detail!, /is down/);
    peer(['ip link set eth0 up']);
    assert.equal((await kd.redirectTarget(ifname, false)).ok, true, 'up again');
  });

  it('a bridge never can, fixed or not', async () => {
    sh('ip', ['link', 'add', bridge, 'type', 'bridge']);
    sh('ip', ['link', 'set', bridge, 'up']);
    for (const fix of [false, true]) {
      const r = await kd.redirectTarget(bridge, fix);
      assert.equal(r.ok, false);
      assert.match(r.detail!, new RegExp(`${bridge} \\(bridge\\) cannot transmit native XDP redirects`));
      assert.match(r.detail!, /no ndo_xdp_xmit/);
    }
  });

  it('a veth whose peer is in a namespace xdpctld cannot enter: the kernel still knows', async () => {
    // Unnamed, and only a socket keeps it: no file to enter it by (one it can enter: the next test).
    const ns = await sealedNetns();
    try {
      ns.addVeth(lone, 'eth9');
      ns.sh('ip link set eth9 up');
      forgetNetns();
      const no = await kd.redirectTarget(lone, true);
      assert.equal(no.ok, false, 'no NAPI on the peer');
      assert.match(no.detail!, /unnamed network namespace/);
      assert.match(no.detail!, /no process in it and no open namespace file of any process .*no file to enter it by/);
      assert.match(ns.sh('ethtool -k eth9'), /^generic-receive-offload: off/m, 'not changed');
      ns.sh('ethtool -K eth9 gro on');
      assert.equal((await kd.redirectTarget(lone, false)).ok, true, 'GRO on there: the kernel says it can receive');
    } finally {
      shQuiet('ip', ['link', 'del', lone]);
      ns.kill();
    }
  });

  it("a veth whose peer is in an unnamed namespace it can enter (a process in it, an open file or a bind mount of it, in its mount namespace or only in another process's): inspected and repaired there", async () => {
    const bind = `/tmp/xdpctl-test-${id}-nsbind`;
    const held: ChildProcess[] = [];
    try {
      for (const how of ['process', 'file', 'mount', 'private mount'] as const) {
        const { proc, ready } = unsharedProcess(60);
        held.push(proc);
        await ready;
        const nsOf = `/proc/${proc.pid}/ns/net`;
        sh('ip', ['link', 'add', lone, 'type', 'veth', 'peer', 'name', 'eth9', 'netns', String(proc.pid)]);
        sh('ip', ['link', 'set', lone, 'up']);
        sh('nsenter', [`--net=${nsOf}`, 'ip', 'link', 'set', 'eth9', 'up']);
        let path = nsOf;
        let via = `process ${proc.pid} (sleep)`;
        if (how === 'file') {
          const f = spawn('python3', ['-c', 'import os,sys,time; os.open(sys.argv[1], 0); time.sleep(60)', nsOf], {
            stdio: 'ignore',
          });
          held.push(f);
          const fd = await netnsFdOf(f.pid!);
          path = `/proc/${f.pid}/fd/${fd}`;
          via = `an open file of process ${f.pid} (python3)`;
        } else if (how === 'mount') {
          writeFileSync(bind, '');
          sh('mount', ['--bind', nsOf, bind]);
          path = bind;
          via = `a bind mount at ${bind}`;
        } else if (how === 'private mount') {
          // Mounted only in the private mount namespace of another process (`unshare -m`): not in xdpctld's.
          writeFileSync(bind, '');
          const m = spawn(
            'unshare',
            ['-m', '--propagation', 'private', 'sh', '-c', 'mount --bind "$0" "$1" && exec sleep 60', nsOf, bind],
            { stdio: 'ignore' },
          );
          held.push(m);
          const mounted = () => {
            try {
              return (
                readFileSync(`/proc/${m.pid}/comm`, 'utf8').trim() === 'sleep' &&
                readFileSync(`/proc/${m.pid}/mountinfo`, 'utf8').includes(` ${bind} `)
              );
            } catch {
              return false;
            }
          };
          await until(`${bind} mounted in the mount namespace of process ${m.pid}`, mounted, 10_000);
          assert.doesNotMatch(readFileSync('/proc/self/mountinfo', 'utf8'), new RegExp(` ${esc(bind)} `), 'premise');
          path = `/proc/${m.pid}/root${bind}`;
          via = `a bind mount at ${bind} in the mount namespace of process ${m.pid} (sleep)`;
        }
        if (how !== 'process') {
          proc.kill();
          await new Promise((r) => proc.once('exit', r));
        }
        const nsid = (JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', lone]))[0] as { link_netnsid: number })
          .link_netnsid;
        const gro = () =>
          /^generic-receive-offload: (\w+)/m.exec(sh('nsenter', [`--net=${path}`, 'ethtool', '-k', 'eth9']))![1];
        forgetNetns();
        assert.equal(gro(), 'off', `${how}: premise`);
        const where = `eth9 in the unnamed network namespace with nsid ${nsid} (entered through ${path}: ${via})`;
        const no = await kd.redirectTarget(lone, false);
        assert.equal(no.ok, false, how);
        assert.equal(no.fixable, true, `${how}: ${no.detail}`);
        assert.match(
          no.detail!,
          new RegExp(
            `its peer ${esc(where)} has neither an XDP program nor GRO .*; nsenter --net=${esc(path)} ethtool -K eth9 gro on\\)`,
          ),
          how,
        );
        const yes = await kd.redirectTarget(lone, true);
        assert.equal(yes.ok, true, `${how}: ${yes.detail}`);
        assert.equal(gro(), 'on', `${how}: GRO switched on there`);
        assert.equal(ndoXmit(lone), true, `${how}: the kernel agrees`);
        sh('ip', ['link', 'del', lone]);
        if (how === 'mount') sh('umount', [bind]);
      }
    } finally {
      shQuiet('ip', ['link', 'del', lone]);
      shQuiet('umount', [bind]);
      rmSync(bind, { force: true });
      held.forEach((p) => p.kill());
    }
  });
});
