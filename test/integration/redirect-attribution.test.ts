/**
 * A redirect the kernel drops is charged to a rule only when the tracepoints
 * can tell it is that rule's frame; otherwise it is counted as unattributed
 * (GlobalCounters.errors "xmit_unattributed"), never charged to a guessed
 * rule. Two rules, small (7001) and big (7002), redirect to one backend whose
 * veth peer has MTU 1000: 1200-byte datagrams to big are all dropped at the
 * flush, small's 200-byte ones all arrive. Each case first leaves the
 * per-CPU redirect mirror (redir_track) holding redirects of small that the
 * kernel never queued, as the review found it:
 *  - (c) test runs of the program (BPF_PROG_TEST_RUN queues nothing), 5 on
 *    each CPU, with and without a datapath restart in between;
 *  - (b) a second datapath (its own pin root and program) in another network
 *    namespace, whose egress has our egress's ifindex number, drops frames
 *    at the flush (its peer's MTU too);
 *  - (a) another tool flips the ingress to generic mode with our pinned
 *    program (frames redirected at once, nothing queued), then back to native.
 * Before the fix small was charged with big's drops (a: +100 errors, big
 * +100 redirected; c: with every batch), and with the foreign drops (b).
 * (d) checks that a cross-connect's drops (at the flush, and refused at once
 * through our devmap) still go to the link, none unattributed.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';

import { GlobalStat } from '../../src/server/dataplane/codec.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { ensureVethPeerNapi, ifindexOf } from '../../src/server/dataplane/netdev.js';
import {
  backendCounters,
  connectDirection,
  globalCounters,
  linkCounters,
  ruleCounters,
} from '../../src/server/dataplane/tables.js';
import { kernelOnly, ROOT, runId, sh, shQuiet, sleep } from '../helpers/env.js';
import { installRule, openDatapath } from '../helpers/fixture.js';
import { udpFrame } from '../helpers/packets.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const SMALL = 7001;
const BIG = 7002;
const XDP_REDIRECT = 4;

describe('redirect errors are charged only to the rule whose frame it provably was', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  const foreignPin = `/sys/fs/bpf/xdpctl-test-${id}f`;
  const fns = `xdpt-${id}-fns`; // the foreign datapath's namespace
  const fsender = `xdpt-${id}-fsnd`; // its sender
  let dp: XdpDatapath;
  let vm: Host;
  let be: Host;
  let affinity = '';

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    topo.routeToXdp('vm');
    be = topo.addHost('be', '198.18.2.1/24');
    topo.exec('be', 'ip', ['link', 'set', 'eth0', 'mtu', '1000']);
    dp = openDatapath(pinRoot);
    assert.equal(dp.traceWarning, undefined, 'tracepoint programs attached');
    assert.equal(dp.attach(vm.hostIf, 'native').mode, 'native');
    assert.ok((await ensureVethPeerNapi(be.hostIf, true)).ok);
    for (const [slot, port] of [
      [1, SMALL],
      [2, BIG],
    ]) {
      installRule(dp, {
        slot,
        statsId: slot,
        ingress: [vm.hostIf],
        port,
        backends: [{ id: slot, ip: '198.18.2.1', mac: be.mac, iface: be.hostIf }],
      });
    }
    affinity = sh('taskset', ['-p', String(process.pid)])
      .trim()
      .split(' ')
      .pop()!;
  });
  after(() => {
    if (affinity) shQuiet('taskset', ['-p', affinity, String(process.pid)]);
    dp?.close();
    topo.destroy();
    shQuiet('ip', ['netns', 'del', fns]);
    shQuiet('ip', ['netns', 'del', fsender]);
    XdpDatapath.unpinAll(pinRoot);
    XdpDatapath.unpinAll(foreignPin);
  });

  const snap = () => {
    const g = globalCounters(dp.maps);
    const r = (s: number) => ruleCounters(dp.maps, s);
    const b = (s: number) => backendCounters(dp.maps, s);
    return {
      small: { redirected: r(1).redirected, errors: r(1).redirectErrors, beErrors: b(1).redirectErrors },
      big: { redirected: r(2).redirected, errors: r(2).redirectErrors, beErrors: b(2).redirectErrors },
      xmit: g[GlobalStat.ERR_XMIT],
      unattributed: g[GlobalStat.ERR_XMIT_UNATTRIBUTED],
      delivered: BigInt(topo.snmp('be', 'Udp', 'NoPorts')), // nothing listens: each arrival counts here
    };
  };
  type Snap = ReturnType<typeof snap>;
  const delta = (a: Snap, b: Snap) => ({
    small: {
      redirected: b.small.redirected - a.small.redirected,
      errors: b.small.errors - a.small.errors,
      beErrors: b.small.beErrors - a.small.beErrors,
    },
    big: {
      redirected: b.big.redirected - a.big.redirected,
      errors: b.big.errors - a.big.errors,
      beErrors: b.big.beErrors - a.big.beErrors,
    },
    xmit: b.xmit - a.xmit,
    unattributed: b.unattributed - a.unattributed,
    delivered: b.delivered - a.delivered,
  });

  /** Datagrams from the VM, a few per NAPI poll (the review's pace). */
  const send = async (port: number, count: number, size: number) => {
    const { sent } = await sendUdp(vm.netns, NOWHERE, port, count, { size, perTick: 1, tickMs: 5 }).done;
    assert.equal(sent, count);
    await sleep(300);
  };

  /** Test runs of small's datagram on each CPU: redirects recorded, nothing queued. */
  const staleMirror = () => {
    const frame = udpFrame({
      dmac: vm.hostMac,
      smac: vm.mac,
      sip: '198.18.1.1',
      dip: NOWHERE,
      sport: 40000,
      dport: SMALL,
      payload: Buffer.alloc(200),
    });
    for (const cpu of ['0', '1']) {
      sh('taskset', ['-p', '-c', cpu, String(process.pid)]);
      // Five runs of one, not one of five: a repeat runs on the frame the previous one rewrote, addressed to the
      // backend's MAC by then, which the datapath passes (not_for_us) instead of redirecting it again.
      for (let i = 0; i < 5; i++) assert.equal(dp.testRun(frame, ifindexOf(vm.hostIf), 1).action, XDP_REDIRECT);
    }
    sh('taskset', ['-p', affinity, String(process.pid)]);
  };

  /** big's datagrams all dropped by the kernel: charged to big (and its backend), or to nobody. */
  const assertBigDropped = (d: ReturnType<typeof delta>, n: number, exact: boolean) => {
    assert.equal(d.delivered, 0n, 'none of big arrived (peer MTU 1000)');
    assert.equal(d.xmit, BigInt(n), 'every drop counted (xmit)');
    assert.deepEqual(d.small, { redirected: 0n, errors: 0n, beErrors: 0n }, 'nothing charged to small');
    assert.equal(d.big.errors + d.unattributed, BigInt(n), 'each drop charged to big or unattributed');
    assert.equal(d.big.beErrors, d.big.errors, "big's backend charged as big");
    assert.equal(d.big.redirected, BigInt(n) - d.big.errors, "big's redirected keeps only what was not charged");
    if (exact) {
      assert.equal(d.big.errors, BigInt(n), 'all charged to big');
      assert.equal(d.unattributed, 0n, 'none unattributed');
    }
  };

  it('(a) another tool flips the ingress to generic with our pinned program, then the datapath re-attaches native', async () => {
    const s0 = snap();
    await send(SMALL, 20, 200);
    sh('ip', ['link', 'set', 'dev', vm.hostIf, 'xdp', 'off']);
    sh('ip', ['link', 'set', 'dev', vm.hostIf, 'xdpgeneric', 'pinned', XdpDatapath.progPinPath(pinRoot)]);
    // From each CPU in turn (the sender inherits the test's affinity; its frames are received on its CPU), so
    // that both CPUs' mirrors hold redirects the generic runs recorded and never queued.
    for (const cpu of ['0', '1']) {
      sh('taskset', ['-p', '-c', cpu, String(process.pid)]);
      await send(SMALL, 5, 200);
    }
    sh('taskset', ['-p', affinity, String(process.pid)]);
    sh('ip', ['link', 'set', 'dev', vm.hostIf, 'xdpgeneric', 'off']);
    assert.equal(dp.attach(vm.hostIf, 'native').mode, 'native');
    const d0 = delta(s0, snap());
    assert.equal(d0.delivered, 30n, 'small arrives in both modes');
    assert.deepEqual(d0.small, { redirected: 30n, errors: 0n, beErrors: 0n });

    const s1 = snap();
    await send(BIG, 100, 1200);
    const d1 = delta(s1, snap());
    console.log('(a) 100 x 1200 B to big after the flip:', d1);
    assertBigDropped(d1, 100, true);
  });

  it('(c) a mirror left with 5 redirects the kernel never queued: resynced, then restarted', async () => {
    const s0 = snap();
    await send(SMALL, 20, 200);
    const d0 = delta(s0, snap());
    assert.equal(d0.delivered, 20n, 'small arrives');
    assert.deepEqual(d0.small, { redirected: 20n, errors: 0n, beErrors: 0n });

    // The mirror of a CPU that ran no NAPI poll since the test runs is out of step at its first flush: that
    // flush's drops are unattributed, and the mirror starts over. Never charged to small.
    staleMirror();
    const s1 = snap();
    await send(BIG, 50, 1200);
    const d1 = delta(s1, snap());
    console.log('(c) first 50 after the stale mirror:', d1);
    assertBigDropped(d1, 50, false);
    const s2 = snap();
    await send(BIG, 50, 1200);
    const d2 = delta(s2, snap());
    console.log('(c) next 50:', d2);
    assertBigDropped(d2, 50, false);
    assert.ok(d1.unattributed + d2.unattributed <= 32n, 'at most one flush (16 frames) per CPU unattributed');

    // A restart (the pinned mirror survives it) adopts the datapath and starts the mirror over.
    staleMirror();
    dp.close();
    dp = openDatapath(pinRoot);
    assert.equal(dp.traceWarning, undefined);
    const s3 = snap();
    await send(BIG, 50, 1200);
    const d3 = delta(s3, snap());
    console.log('(c) 50 after a restart:', d3);
    assertBigDropped(d3, 50, true);
  });

  const ifindexOfIn = (netns: string, dev: string): number =>
    JSON.parse(sh('ip', ['-n', netns, '-j', 'link', 'show', dev]))[0].ifindex as number;

  it("(d) a cross-connect's drops, at the flush and refused at once: charged to the link (through our devmap)", async () => {
    const l1 = topo.addHost('l1', '198.18.5.1/24');
    const l2 = topo.addHost('l2', '198.18.5.2/24');
    topo.exec('l2', 'ip', ['link', 'set', 'eth0', 'mtu', '1000']);
    assert.ok((await ensureVethPeerNapi(l2.hostIf, true)).ok);
    assert.equal(dp.attach(l1.hostIf, 'native').mode, 'native');
    const from = ifindexOf(l1.hostIf);
    connectDirection(dp.maps, from, ifindexOf(l2.hostIf));
    // Only the test's datagrams cross the link: a static neighbour, no IPv6 chatter from the sender.
    topo.exec('l1', 'ip', ['neigh', 'replace', '198.18.5.2', 'lladdr', l2.mac, 'dev', 'eth0', 'nud', 'permanent']);
    topo.exec('l1', 'sysctl', ['-qw', 'net.ipv6.conf.eth0.disable_ipv6=1']);
    const link = () => linkCounters(dp.maps, from)!;
    for (const [what, breakIt] of [
      ['peer MTU 1000: dropped at the flush', () => {}],
      ['egress down: refused at once', () => sh('ip', ['link', 'set', l2.hostIf, 'down'])],
    ] as const) {
      breakIt();
      const s0 = snap();
      const before = link();
      const { sent } = await sendUdp(l1.netns, '198.18.5.2', 7009, 50, { size: 1200, perTick: 1, tickMs: 5 }).done;
      await sleep(300);
      const d = delta(s0, snap());
      const errors = link().redirectErrors - before.redirectErrors;
      console.log(`(d) ${what}: link errors +${errors}, packets +${link().packets - before.packets}`, d);
      assert.equal(errors, BigInt(sent), `${what}: every frame a redirect error of the link`);
      assert.equal(link().packets, before.packets, `${what}: none counted as forwarded`);
      assert.equal(d.xmit, BigInt(sent));
      assert.equal(d.unattributed, 0n, `${what}: none unattributed`);
    }
  });

  /** The other datapath's own global "xmit" errors (its pinned global_stats, summed over CPUs). */
  const foreignXmitErrors = (): bigint => {
    const dump = JSON.parse(
      sh('bpftool', [
        '-j',
        'map',
        'lookup',
        'pinned',
        `${foreignPin}/maps/global_stats`,
        'key',
        String(GlobalStat.ERR_XMIT),
        '0',
        '0',
        '0',
      ]),
    ) as { formatted?: { values: { value: number }[] } };
    return (dump.formatted?.values ?? []).reduce((n, v) => n + BigInt(v.value), 0n);
  };

  it("(b) another datapath's drops on an egress with our egress's ifindex number: not ours", async () => {
    const egress = ifindexOf(be.hostIf);
    sh('ip', ['netns', 'add', fns]);
    sh('ip', ['netns', 'add', fsender]);
    const ipf = (...a: string[]) => sh('ip', ['-n', fns, ...a]);
    ipf('link', 'set', 'lo', 'up');
    ipf('link', 'add', 'fin', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', fsender);
    // The same ifindex number as our backend's egress; its peer takes native redirects (NAPI through GRO)
    // but has MTU 1000: the 1200-byte frames are queued, then dropped at the flush (xdp:xdp_devmap_xmit).
    ipf('link', 'add', 'fout', 'index', String(egress), 'type', 'veth', 'peer', 'name', 'foutp');
    ipf('link', 'set', 'foutp', 'mtu', '1000');
    for (const dev of ['fin', 'fout', 'foutp']) ipf('link', 'set', dev, 'up');
    sh('nsenter', [`--net=/run/netns/${fns}`, 'ethtool', '-K', 'foutp', 'gro', 'on']);
    assert.equal(ifindexOfIn(fns, 'fout'), egress);
    const finMac = JSON.parse(ipf('-j', 'link', 'show', 'fin'))[0].address as string;
    const ips = (...a: string[]) => sh('ip', ['-n', fsender, ...a]);
    ips('link', 'set', 'lo', 'up');
    ips('link', 'set', 'eth0', 'up');
    ips('addr', 'add', '198.18.1.1/24', 'dev', 'eth0');
    ips('neigh', 'replace', '198.18.1.254', 'lladdr', finMac, 'dev', 'eth0', 'nud', 'permanent');
    ips('route', 'replace', 'default', 'via', '198.18.1.254', 'dev', 'eth0', 'onlink');
    const spec = {
      pinRoot: foreignPin,
      attach: [['fin', 'native']],
      rule: {
        slot: 1,
        statsId: 1,
        ingress: ['fin'],
        port: SMALL,
        backends: [{ id: 1, ip: '198.18.2.1', mac: '02:00:00:00:00:99', iface: 'fout' }],
      },
    };
    execFileSync(
      'nsenter',
      [
        `--net=/run/netns/${fns}`,
        process.execPath,
        '--import',
        'tsx',
        `${ROOT}test/helpers/dp-child.ts`,
        JSON.stringify(spec),
      ],
      { encoding: 'utf8', cwd: ROOT },
    );

    staleMirror();
    const s0 = snap();
    const { sent } = await sendUdp(fsender, NOWHERE, SMALL, 50, { size: 1200, perTick: 1, tickMs: 5 }).done;
    assert.equal(sent, 50);
    await sleep(300);
    const d = delta(s0, snap());
    const foreign = foreignXmitErrors();
    console.log(`(b) the other datapath counted ${foreign} xmit errors; ours moved by:`, d);
    assert.equal(foreign, 50n, 'the other datapath dropped (and counted) all 50');
    assert.deepEqual(d.small, { redirected: 0n, errors: 0n, beErrors: 0n }, 'nothing charged to small');
    assert.deepEqual(d.big, { redirected: 0n, errors: 0n, beErrors: 0n }, 'nothing charged to big');
    assert.equal(d.xmit, 0n, 'not our drops: not in our xmit errors');
    assert.equal(d.unattributed, 0n, 'nor unattributed');
  });
});
