/**
 * A link direction whose egress's veth peer runs what may drop what it is given (resync.ts linkPeerNote, read with
 * the backends' per-peer reader Dataplane.vethPeerXdp): its words, and the link's Active condition (conditions.ts
 * linkConditions): Unknown with PeerXdpProgram (an XDP program there), PeerTcFilter (tc filters or tcx programs
 * only), behind a problem (False) and an unverified egress (EgressUnverified).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { linkConditions } from '../../src/server/core/conditions.js';
import type { PeerXdp } from '../../src/server/core/dataplane.js';
import { linkPeerNote } from '../../src/server/core/resync.js';

const where = 'eth0 in netns blue';
const peers: Record<string, PeerXdp> = {
  xdp: { where, programs: [{ id: 42, mode: 'native', name: 'drop' }] },
  tc: {
    where,
    programs: [],
    tc: { filters: [{ kind: 'bpf', pref: 1, protocol: 3, programs: [{ id: 43, directAction: true }] }], tcx: [] },
  },
  tcx: { where, programs: [], tc: { filters: [], tcx: [{ id: 44, name: 'p' }] } },
};
const dp = { vethPeerXdp: (name: string) => peers[name] };

describe('linkPeerNote', () => {
  it("names the direction and what runs on its egress's peer; nothing when nothing runs there", () => {
    assert.equal(
      linkPeerNote(dp, 'a', 'xdp'),
      'a -> xdp: veth peer eth0 in netns blue runs XDP program id 42 (drop, native mode): delivery past it cannot ' +
        'be verified',
    );
    assert.equal(linkPeerNote(dp, 'a', 'none'), undefined);
    assert.equal(linkPeerNote({}, 'a', 'xdp'), undefined, 'a dataplane that cannot read peers says nothing');
  });
});

describe('Active of a link with a peer note', () => {
  const active = (a: boolean[], problems: string[], unverified: string[], notes: string[]) =>
    linkConditions(a, problems, unverified, [], notes).find((c) => c.type === 'Active')!;
  it('Unknown, PeerXdpProgram or PeerTcFilter, naming each direction', () => {
    const x = linkPeerNote(dp, 'a', 'xdp')!;
    const t = linkPeerNote(dp, 'b', 'tc')!;
    assert.deepEqual(
      [active([true, true], [], [], [x, t]).status, active([true, true], [], [], [x, t]).reason],
      ['Unknown', 'PeerXdpProgram'],
    );
    assert.equal(active([true, true], [], [], [x, t]).message, `${x}; ${t}`);
    assert.equal(active([true], [], [], [t]).reason, 'PeerTcFilter');
    assert.equal(active([true], [], [], [linkPeerNote(dp, 'a', 'tcx')!]).reason, 'PeerTcFilter');
  });
  it('behind a problem and an unverified egress; True without notes', () => {
    const x = linkPeerNote(dp, 'a', 'xdp')!;
    assert.equal(active([true], ['a -> xdp: egress xdp has no carrier'], [], [x]).status, 'False');
    assert.equal(active([true], [], ['a -> xdp: cannot be verified: ...'], [x]).reason, 'EgressUnverified');
    assert.equal(active([false, true], [], [], [x]).reason, 'NotInDatapath');
    assert.deepEqual([active([true], [], [], []).status, active([true], [], [], []).reason], ['True', 'Forwarding']);
  });
});
