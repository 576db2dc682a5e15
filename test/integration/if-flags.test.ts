/**
 * if_flags: the per-interface array that lets packets of interfaces without a
 * cross-connect skip the devmap lookup. The flag must follow xc_links (set
 * before the link, cleared after), and rebuilding the port index must restore
 * it from xc_links, as for pins made before if_flags existed.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { IF_F_LINK, IF_F_XCONNECT, IF_LINK_SHIFT } from '../../src/server/dataplane/codec.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { ifindexOf, macOf } from '../../src/server/dataplane/netdev.js';
import {
  connectDirection,
  disconnectDirection,
  linkIndex,
  rebuildPortUse,
  resetLinkStats,
} from '../../src/server/dataplane/tables.js';
import { kernelOnly, runId, sh, shQuiet } from '../helpers/env.js';
import { openDatapath } from '../helpers/fixture.js';
import { udpFrame } from '../helpers/packets.js';

const XDP_PASS = 2;
const XDP_REDIRECT = 4;

describe('if_flags follows the cross-connects', kernelOnly(), () => {
  const id = runId();
  const a = `xf${id}a`;
  const b = `xf${id}b`;
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  let dp: XdpDatapath;
  let ia: number;
  let ib: number;

  before(() => {
    sh('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', b]);
    ia = ifindexOf(a);
    ib = ifindexOf(b);
    dp = openDatapath(pinRoot);
  });
  after(() => {
    dp?.close();
    XdpDatapath.unpinAll(pinRoot);
    shQuiet('ip', ['link', 'del', a]);
  });

  const verdict = () =>
    dp.testRun(
      udpFrame({ dmac: macOf(a), smac: '02:00:00:00:00:01', sip: '198.18.1.1', dip: '198.18.9.9', sport: 1, dport: 9 }),
      ia,
    ).action;

  it('a stale flag (a crash between the two writes) only costs a lookup: no link, so passed', () => {
    dp.maps.ifFlags.put(ia, IF_F_XCONNECT);
    assert.equal(verdict(), XDP_PASS);
    dp.maps.ifFlags.put(ia, 0);
  });

  it('connect sets the flag (and the link counters index) and the frame is redirected; disconnect clears it', () => {
    assert.equal(dp.maps.ifFlags.get(ia), 0);
    assert.equal(verdict(), XDP_PASS);
    connectDirection(dp.maps, ia, ib);
    const link = (IF_F_LINK | (linkIndex(dp.maps, ia)! << IF_LINK_SHIFT)) >>> 0;
    assert.equal(dp.maps.ifFlags.get(ia), IF_F_XCONNECT | link);
    assert.equal(verdict(), XDP_REDIRECT);
    disconnectDirection(dp.maps, ia);
    assert.equal(dp.maps.ifFlags.get(ia), link, 'the counters stay until released');
    assert.equal(verdict(), XDP_PASS);
    resetLinkStats(dp.maps, ia);
    assert.equal(dp.maps.ifFlags.get(ia), 0);
  });

  it('a link without its flag (older pins) is passed until the index is rebuilt', () => {
    connectDirection(dp.maps, ia, ib);
    dp.maps.ifFlags.put(ia, 0); // as left by a version without if_flags
    assert.equal(verdict(), XDP_PASS);
    rebuildPortUse(dp.maps);
    const x = linkIndex(dp.maps, ia);
    assert.notEqual(x, undefined, 'the link gets a counters index again');
    assert.equal(dp.maps.ifFlags.get(ia), (IF_F_XCONNECT | IF_F_LINK | (x! << IF_LINK_SHIFT)) >>> 0);
    assert.equal(dp.maps.xcEgress.get(x!), ib, 'and its egress');
    assert.equal(dp.maps.ifFlags.get(ib), 0); // no link, no flag
    assert.equal(verdict(), XDP_REDIRECT);
    disconnectDirection(dp.maps, ia);
    resetLinkStats(dp.maps, ia);
  });
});
