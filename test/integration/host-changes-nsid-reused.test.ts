/**
 * A namespace id the kernel gives again: a veth peer moved into a namespace that only a socket keeps (nothing the
 * daemon can enter by: a miss, which netns-find.ts keeps for 30 s), that namespace deleted (its id freed), and
 * another backend's peer moved into a new unnamed namespace (`unshare --net sleep`) that gets the same id. The
 * daemon looks for that id afresh once the kernel reported it taken back and given again (RTM_DELNSID,
 * RTM_NEWNSID): its line names the new namespace and the process in it within seconds (was: for up to 30 s the
 * peer was said to be in a namespace with "no name in /run/netns, no bind mount, no process in it", the
 * deleted one's miss). Moves as in host-changes-moved-peer.test.ts (`ip -n X link set eth0 netns ...`), with
 * real namespaces and veths. Both namespaces are given the id explicitly (`ip netns set`, through a name taken
 * away again at once), a high one: the kernel gives a freed id again by itself when it is the lowest free one,
 * but other tests running beside this one take and free low ids meanwhile.
 */
import assert from 'node:assert/strict';
import { type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, shQuiet, until } from '../helpers/env.js';
import { backendOf, esc, Lab, sealedNetns, type SealedNetns, unsharedProcess } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const PORT = 7988;
/** The nsid our namespace gives the namespace of `veth`'s peer. */
const peerNsid = (veth: string) =>
  (JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', veth]))[0] as { link_netnsid?: number }).link_netnsid;

describe('host changes: an nsid given again to another namespace is looked for afresh', kernelOnly(), () => {
  const lab = new Lab();
  const { id, count } = lab;
  const named = `xdpt-${id}-nsid`;
  /**
   * The id both namespaces get, one after the other: one the kernel gives no namespace by itself while this runs (it
   * gives the lowest free id, and other tests beside this one take and free low ids the whole time).
   */
  const nsid = 20_000 + (parseInt(id, 16) % 10_000);
  /** The namespace just attached as `named` given `nsid` in ours (`ip netns set`), and the name taken away again. */
  const giveNsid = () => {
    try {
      sh('ip', ['netns', 'set', named, String(nsid)]);
    } finally {
      sh('ip', ['netns', 'del', named]);
    }
  };
  let d: DaemonProcess;
  let b1: Host, b2: Host;
  let sealed: SealedNetns | undefined;
  let unnamed: ChildProcess | undefined;

  before(async () => {
    ({ b1, b2 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', b2: '198.18.2.2/24' }));
    lab.onDestroy(() => {
      sealed?.kill();
      unnamed?.kill();
      shQuiet('ip', ['netns', 'del', named]);
    });
    ({ d } = await lab.start(['--log-level', 'info', '--xdp-mode', 'native']));
    await lab.c.rules.createRule({ rule: lab.rule('web', PORT, [backendOf(b1), backendOf(b2)]) });
    await lab.untilActive('web');
  });
  after(() => lab.destroy());

  it('a peer moved into the new namespace with the freed id is inspected there at once', async (t) => {
    // b1's peer into a namespace only a socket keeps, with id `nsid`: the daemon finds no file to enter it by (a
    // miss, kept).
    sealed = await sealedNetns();
    sealed.sh(`ip netns attach ${named} $$`);
    giveNsid();
    sealed.moveIn('eth0', b1.netns);
    sealed.sh('ip link set eth0 up');
    assert.equal(peerNsid(b1.hostIf), nsid, `premise: ${b1.hostIf}'s peer is in the namespace with id ${nsid}`);
    const noWay = `the network namespace with nsid ${nsid} has no name in /run/netns, no bind mount, no process in it`;
    const said = async (h: Host) => (await lab.status('web')).backendStatus.find((b) => b.ip === h.ip)?.message ?? '';
    await until(
      async () => `b1's status says the daemon cannot enter nsid ${nsid}; last: ${await said(b1)}`,
      async () => (await said(b1)).includes(noWay),
      15_000,
    );
    const missed = Date.now();

    // That namespace deleted (with b1's veth pair): its id is freed.
    sealed.kill();
    await until(`${b1.hostIf} deleted with its namespace`, () => !existsSync(`/sys/class/net/${b1.hostIf}`), 15_000);

    // A new unnamed namespace, a process in it, given the freed id; b2's peer moved there, GRO off, then up.
    const u = unsharedProcess();
    unnamed = u.proc;
    await u.ready;
    const pid = unnamed.pid!;
    const nsPath = `/proc/${pid}/ns/net`;
    sh('ip', ['netns', 'attach', named, String(pid)]);
    giveNsid();
    sh('ip', ['-n', b2.netns, 'link', 'set', 'eth0', 'netns', String(pid)]);
    assert.equal(peerNsid(b2.hostIf), nsid, `premise: ${b2.hostIf}'s peer is in the namespace with the freed id`);
    sh('nsenter', ['-t', String(pid), '-n', 'sh', '-c', 'ethtool -K eth0 gro off && ip link set eth0 up']);
    const up = Date.now();
    t.diagnostic(`b2's peer up in the new namespace ${up - missed} ms after the miss was said`);

    // The daemon enters the new namespace through its process and repairs the peer there, saying where it is.
    const line = new RegExp(
      esc(
        `"msg":"GRO switched on on eth0 in the unnamed network namespace with nsid ${nsid} (entered through ` +
          `${nsPath}: process ${pid} (sleep)), the veth peer of ${b2.hostIf}: `,
      ),
    );
    await until(
      async () => `the GRO line; b2 last: ${await said(b2)}`,
      () => count(line) === 1,
      8000,
    );
    t.diagnostic(`said ${Date.now() - up} ms after the peer was up`);
    assert.ok(Date.now() - missed < 30_000, 'premise: within the 30 s a miss is kept');
    assert.ok(!(await said(b2)).includes(noWay), await said(b2));
    assert.equal(
      sh('nsenter', ['-t', String(pid), '-n', 'ethtool', '-k', 'eth0']).match(/^generic-receive-offload: (\w+)/m)?.[1],
      'on',
      "GRO on again on b2's peer in the new namespace",
    );
    assert.equal(d.child.exitCode, null);
  });
});
