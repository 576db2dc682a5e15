/**
 * Link counters live in a per-CPU array (xc_stats) at a small index that the
 * ingress's if_flags entry names (an inlined array lookup per frame where a
 * per-CPU hash keyed by ifindex cost ~30 ns). The counts must stay exact and
 * stay their link's: across a restart that adopts the pins, across a
 * migration to another capacity (the indexes go along), from pins of the
 * layout before (xc_stats a per-CPU hash keyed by ingress ifindex: each
 * ingress's counters carried over under an index), and for an ingress whose
 * ifindex is past if_flags (its flags in if_flags_big).
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';

import { openPinnedMap } from '../../src/server/dataplane/bpf-map.js';
import {
  IF_F_GENERIC,
  IF_F_LINK,
  IF_F_XCONNECT,
  IF_LINK_SHIFT,
  linkStats,
  u32,
} from '../../src/server/dataplane/codec.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { ifindexOf, macOf } from '../../src/server/dataplane/netdev.js';
import {
  connectDirection,
  disconnectDirection,
  ifFlagsOf,
  linkCounters,
  linkIndex,
  resetLinkStats,
  setGenericMode,
} from '../../src/server/dataplane/tables.js';
import { kernelOnly, OBJECT, runId, sh, shQuiet } from '../helpers/env.js';
import { udpFrame } from '../helpers/packets.js';

const XDP_REDIRECT = 4;

describe('link counters at an index in if_flags', kernelOnly(), () => {
  const id = runId();
  const a = `xk${id}a`;
  const b = `xk${id}b`;
  const big = `xk${id}g`;
  const bigPeer = `xk${id}h`;
  const roots: string[] = [];
  const opened: XdpDatapath[] = [];
  let ia: number;
  let ib: number;

  const open = (root: string, links = 16) => {
    const dp = XdpDatapath.open({
      objectPath: OBJECT,
      pinRoot: root,
      capacity: { ruleSlots: 8, statsIds: 8, backends: 16, links },
    });
    opened.push(dp);
    return dp;
  };
  const frame = (ifname: string, payload = 18) =>
    udpFrame({
      dmac: macOf(ifname),
      smac: '02:00:00:00:00:01',
      sip: '198.18.1.1',
      dip: '198.18.9.9',
      sport: 1000,
      dport: 9,
      payload: Buffer.alloc(payload, 7),
    });
  /** Send `n` frames in on `ifindex` (test runs: the program runs, counts and returns its verdict). */
  const send = (dp: XdpDatapath, ifname: string, ifindex: number, n: number, payload?: number) => {
    const f = frame(ifname, payload);
    for (let i = 0; i < n; i++) assert.equal(dp.testRun(f, ifindex).action, XDP_REDIRECT);
    return BigInt(f.length) * BigInt(n);
  };

  after(() => {
    opened.forEach((d) => d.close());
    roots.forEach((r) => XdpDatapath.unpinAll(r));
    shQuiet('ip', ['link', 'del', a]);
    shQuiet('ip', ['link', 'del', big]);
  });

  it('counts exactly, and the counts stay the link’s across a restart and a capacity migration', () => {
    sh('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', b]);
    ia = ifindexOf(a);
    ib = ifindexOf(b);
    const root = `/sys/fs/bpf/xdpctl-test-${id}`;
    roots.push(root);
    let dp = open(root);
    assert.equal(connectDirection(dp.maps, ia, ib), true, 'a new link gets an index');
    assert.equal(connectDirection(dp.maps, ib, ia), true);
    const xa = linkIndex(dp.maps, ia)!;
    const xb = linkIndex(dp.maps, ib)!;
    assert.notEqual(xa, xb, 'one index per direction');
    assert.equal(ifFlagsOf(dp.maps, ia), (IF_F_XCONNECT | IF_F_LINK | (xa << IF_LINK_SHIFT)) >>> 0);
    assert.equal(dp.maps.xcEgress.get(xa), ib, 'the egress the redirect tracking mirrors');
    let bytesA = send(dp, a, ia, 5);
    const bytesB = send(dp, b, ib, 2, 100);
    assert.deepEqual(linkCounters(dp.maps, ia), { packets: 5n, bytes: bytesA, redirectErrors: 0n });
    assert.deepEqual(linkCounters(dp.maps, ib), { packets: 2n, bytes: bytesB, redirectErrors: 0n });

    // A restart adopts the pins: same indexes, same counts, and a connect again (restore) keeps them.
    dp.close();
    dp = open(root);
    assert.equal(dp.adopted, true);
    assert.equal(connectDirection(dp.maps, ia, ib), false, 'the link had its index: nothing created');
    assert.equal(linkIndex(dp.maps, ia), xa);
    assert.deepEqual(linkCounters(dp.maps, ia), { packets: 5n, bytes: bytesA, redirectErrors: 0n });
    bytesA += send(dp, a, ia, 3);
    assert.deepEqual(linkCounters(dp.maps, ia), { packets: 8n, bytes: bytesA, redirectErrors: 0n });

    // Another capacity: new maps, counters copied, and the indexes with them.
    dp.close();
    dp = open(root, 32);
    assert.ok(
      dp.migrating?.some((c) => c.startsWith('xc_stats: max_entries')),
      String(dp.migrating),
    );
    assert.equal(linkIndex(dp.maps, ia), xa, 'the index went along');
    assert.equal(connectDirection(dp.maps, ia, ib), false);
    assert.equal(connectDirection(dp.maps, ib, ia), false);
    assert.deepEqual(linkCounters(dp.maps, ia), { packets: 8n, bytes: bytesA, redirectErrors: 0n });
    assert.deepEqual(linkCounters(dp.maps, ib), { packets: 2n, bytes: bytesB, redirectErrors: 0n });
    dp.finishMigration();
    bytesA += send(dp, a, ia, 1);
    assert.deepEqual(linkCounters(dp.maps, ia), { packets: 9n, bytes: bytesA, redirectErrors: 0n });

    // Released with the link: the index is free, and the next link there starts at 0.
    disconnectDirection(dp.maps, ia);
    resetLinkStats(dp.maps, ia);
    assert.equal(linkIndex(dp.maps, ia), undefined);
    assert.equal(linkCounters(dp.maps, ia), undefined);
    assert.equal(dp.maps.xcEgress.get(xa), 0);
    assert.equal(connectDirection(dp.maps, ia, ib), true);
    assert.equal(linkIndex(dp.maps, ia), xa, 'the free index is given out again');
    assert.deepEqual(linkCounters(dp.maps, ia), { packets: 0n, bytes: 0n, redirectErrors: 0n });
  });

  it('carries each ingress’s counters over from pins of the layout before (a per-CPU hash keyed by ifindex)', () => {
    const root = `/sys/fs/bpf/xdpctl-test-${id}o`;
    roots.push(root);
    const first = open(root);
    first.close();
    // xc_stats as the layout before left it: a per-CPU hash keyed by ingress ifindex.
    const pin = `${root}/maps/xc_stats`;
    sh('rm', ['-f', pin]);
    sh('bpftool', [
      'map',
      'create',
      pin,
      'type',
      'percpu_hash',
      'key',
      '4',
      'value',
      '24',
      'entries',
      '16',
      'name',
      'xc_stats',
    ]);
    const old = openPinnedMap(pin, u32, linkStats);
    try {
      old.putPerCpu(ia, [{ packets: 7n, bytes: 700n, redirectErrors: 1n }]);
      old.putPerCpu(ib, [{ packets: 3n, bytes: 300n, redirectErrors: 0n }]);
    } finally {
      old.close();
    }
    const dp = open(root);
    assert.ok(
      dp.migrating?.some((c) => c.startsWith('xc_stats: type 5 -> 6')),
      String(dp.migrating),
    );
    // The restore connects the links again on the new maps: the indexes the migration gave are kept.
    assert.equal(connectDirection(dp.maps, ia, ib), false);
    assert.equal(connectDirection(dp.maps, ib, ia), false);
    assert.notEqual(linkIndex(dp.maps, ia), linkIndex(dp.maps, ib));
    assert.deepEqual(linkCounters(dp.maps, ia), { packets: 7n, bytes: 700n, redirectErrors: 1n });
    assert.deepEqual(linkCounters(dp.maps, ib), { packets: 3n, bytes: 300n, redirectErrors: 0n });
    dp.finishMigration();
    const bytes = send(dp, a, ia, 2);
    assert.deepEqual(linkCounters(dp.maps, ia), { packets: 9n, bytes: 700n + bytes, redirectErrors: 1n });
  });

  it('an ingress whose ifindex is past if_flags has its flags in if_flags_big: connected, counted, generic mode kept', () => {
    const root = `/sys/fs/bpf/xdpctl-test-${id}g`;
    roots.push(root);
    const index = 70_000 + Math.floor(Math.random() * 1_000_000);
    sh('ip', ['link', 'add', big, 'index', String(index), 'type', 'veth', 'peer', 'name', bigPeer]);
    const ig = ifindexOf(big);
    assert.equal(ig, index);
    const dp = open(root);
    assert.equal(connectDirection(dp.maps, ig, ifindexOf(bigPeer)), true);
    const x = linkIndex(dp.maps, ig)!;
    assert.equal(dp.maps.ifFlagsBig.get(ig), (IF_F_XCONNECT | IF_F_LINK | (x << IF_LINK_SHIFT)) >>> 0);
    const bytes = send(dp, big, ig, 4);
    assert.deepEqual(linkCounters(dp.maps, ig), { packets: 4n, bytes, redirectErrors: 0n });
    setGenericMode(dp.maps, ig, true);
    assert.equal(ifFlagsOf(dp.maps, ig) & IF_F_GENERIC, IF_F_GENERIC, 'the mode is recorded (before: no entry at all)');
    disconnectDirection(dp.maps, ig);
    resetLinkStats(dp.maps, ig);
    setGenericMode(dp.maps, ig, false);
    assert.equal(dp.maps.ifFlagsBig.get(ig), undefined, 'no flags: no entry');
  });
});
