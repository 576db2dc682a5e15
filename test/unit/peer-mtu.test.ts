/**
 * The egress MTU check as it reads a veth peer wherever the peer lives (rule-status mtuWarnings, egressMtu,
 * conditions framesFitCondition): a peer's MTU below the ingress's names the peer and its namespace; a peer
 * whose MTU cannot be read makes FramesFit Unknown ("cannot be verified"), never True and never another
 * reason. Pure functions, no kernel.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { framesFitCondition, ruleConditions } from '../../src/server/core/conditions.js';
import type { PeerMtu } from '../../src/server/core/dataplane.js';
import type { Dataplane } from '../../src/server/core/dataplane.js';
import { stepEgress } from '../../src/server/core/egress-watch.js';
import { peerMtu } from '../../src/server/core/facts.js';
import { smallPeerMtu } from '../../src/server/core/resync.js';
import { egressMtu, mtuRuleStatus, mtuWarnings } from '../../src/server/core/rule-status.js';

const mtus: Record<string, number> = { in0: 1500, out0: 1500, out1: 1500 };
const mtu = (i: string) => mtus[i];
const backend = (ip: string, iface: string) => ({ ip, interface: iface });

describe('veth peer MTU in the egress check', () => {
  it('a peer in a named netns with a smaller MTU: named with its namespace and both MTUs', () => {
    const peers: Record<string, PeerMtu> = { out0: { name: 'eth0', mtu: 1000, netns: 'b1', nsid: 3 } };
    const w = mtuWarnings(['in0'], [backend('10.0.0.2', 'out0')], mtu, (i) => peers[i]);
    assert.equal(w.length, 1);
    assert.match(
      w[0],
      /^backend 10\.0\.0\.2: egress out0's veth peer eth0 in netns b1 has MTU 1000, ingress in0 1500: /,
    );
    assert.match(
      w[0],
      /exceeds 1004 bytes are dropped .*counted as redirect errors in native mode, in out0's tx_dropped/,
    );
    const f = framesFitCondition(w);
    assert.deepEqual([f.status, f.reason], ['False', 'EgressMTUTooSmall']);
  });

  it('a peer in an unnamed netns is named by its namespace id', () => {
    const e = egressMtu('out0', 1500, { name: 'eth0', mtu: 1200, nsid: 7 });
    assert.deepEqual(e, { mtu: 1200, where: "out0's veth peer eth0 in an unnamed network namespace (nsid 7)" });
  });

  it('the smaller of the device and its peer counts; a larger peer changes nothing', () => {
    assert.deepEqual(egressMtu('out0', 1400, { name: 'p', mtu: 9000 }), { mtu: 1400, where: 'out0' });
    assert.deepEqual(
      mtuWarnings(['in0'], [backend('10.0.0.2', 'out0')], mtu, () => ({ name: 'p', mtu: 1500, netns: 'x' })),
      [],
    );
  });

  it('a peer whose MTU cannot be read: FramesFit Unknown, cannot be verified, the rule not lowered for it', () => {
    const w = mtuWarnings(['in0'], [backend('10.0.0.2', 'out0')], mtu, () => ({ unreadable: 'EPERM' }));
    assert.equal(w.length, 1);
    assert.match(w[0], /egress out0's veth peer MTU cannot be verified \(EPERM\)/);
    const f = framesFitCondition(w);
    assert.deepEqual([f.status, f.reason], ['Unknown', 'PeerMTUUnverified']);
    const status = { state: 'active' as const, message: 'forwarding to 1 backend(s)', backends: [], warnings: [...w] };
    assert.equal(mtuRuleStatus(status), status, 'ACTIVE stays: nothing is known to be dropped');
    // A known-too-small MTU elsewhere wins: False, not Unknown.
    const both = [...w, ...mtuWarnings(['in0'], [backend('10.0.0.3', 'out1')], mtu, () => ({ name: 'q', mtu: 900 }))];
    assert.equal(framesFitCondition(both).status, 'False');
    const conds = ruleConditions({ ...status, backends: [] }, [], []);
    assert.equal(conds.find((c) => c.type === 'FramesFit')!.status, 'Unknown');
  });

  it("an egress watch whose drops may be the peer's MTU says so, not only NAPI", () => {
    const read = (p: bigint, e: bigint) => new Map([[1, { packets: p, redirectErrors: e }]]);
    let w = stepEgress(undefined, 'k', [1], read(0n, 0n), 0, 'out0');
    w = stepEgress(w, 'k', [1], read(0n, 6n), 1, 'out0', true, undefined, 'the MTU of its veth peer eth0 (1000)');
    assert.equal(w.verdict, 'failing');
    assert.match(
      w.why!,
      /either it cannot receive native XDP redirects \(a veth whose peer has no NAPI\) or the frames were larger than the MTU of its veth peer eth0 \(1000\) lets through/,
    );
  });

  it('a peer whose MTU the dataplane cannot give: unknown, never taken for full size', () => {
    // A dataplane that names the peer but not its MTU (no vethPeerMtu; linkState has no answer for the peer).
    const dp = { vethPeer: () => 'p0', linkState: () => undefined } as unknown as Dataplane;
    const p = peerMtu(dp, 'out0');
    assert.deepEqual(p, { unreadable: "the MTU of out0's veth peer p0 cannot be read" });
    const f = framesFitCondition(mtuWarnings(['in0'], [backend('10.0.0.2', 'out0')], mtu, () => p));
    assert.deepEqual([f.status, f.reason], ['Unknown', 'PeerMTUUnverified']);
  });

  it('an egress watch on a peer whose MTU cannot be read names that unknown MTU as a possible cause', () => {
    const dp = { vethPeerMtu: () => ({ unreadable: 'EPERM' }), linkState: () => ({ mtu: 1500 }) };
    const ctx = { dp: dp as unknown as Dataplane, state: { rules: new Map() } } as unknown as Parameters<
      typeof smallPeerMtu
    >[0];
    const text = smallPeerMtu(ctx, 'out0');
    assert.equal(text, 'the MTU of its veth peer (peer MTU unknown: EPERM)');
    const read = (p: bigint, e: bigint) => new Map([[1, { packets: p, redirectErrors: e }]]);
    let w = stepEgress(undefined, 'k', [1], read(0n, 0n), 0, 'out0');
    w = stepEgress(w, 'k', [1], read(0n, 6n), 1, 'out0', true, undefined, text);
    assert.equal(w.verdict, 'failing');
    assert.match(
      w.why!,
      /either it cannot receive native XDP redirects \(a veth whose peer has no NAPI\) or the frames were larger than the MTU of its veth peer \(peer MTU unknown: EPERM\) lets through/,
    );
  });
});
