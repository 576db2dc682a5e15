/**
 * What is said of what runs on a backend egress's veth peer (rule-status.ts peerXdpNote) and the reason its
 * rule's BackendsReceiving gives (conditions.ts): XDP programs, tc ingress filters (bpf with their programs,
 * other kinds by kind, pref and protocol), tcx programs, nftables ingress chains; PeerXdpProgram when an XDP
 * program is there, PeerTcFilter when tc is (and no XDP), PeerNftChain when only nftables ingress chains are.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ruleConditions } from '../../src/server/core/conditions.js';
import { peerXdpNote } from '../../src/server/core/rule-status.js';

const where = 'eth0 in netns blue';
const bpf = { kind: 'bpf', pref: 49152, protocol: 3, programs: [{ id: 43, name: 'tc_drop', directAction: true }] };
const u32 = { kind: 'u32', pref: 49151, protocol: 0x0800, programs: [] };
const drop = { family: 'netdev', table: 't', chain: 'c', priority: 0, policy: 'drop', rules: 0 };
const unread = { family: 'netdev', table: 't', chain: 'd', priority: 10, policy: 'accept' };

describe('peerXdpNote', () => {
  it('says an XDP program as before', () => {
    assert.equal(
      peerXdpNote({ where, programs: [{ id: 42, mode: 'generic', name: 'sink' }] }),
      'veth peer eth0 in netns blue runs XDP program id 42 (sink, generic mode): delivery past it cannot be verified',
    );
  });
  it('says a bpf tc filter with its program', () => {
    assert.equal(
      peerXdpNote({ where, programs: [], tc: { filters: [bpf], tcx: [] } }),
      'veth peer eth0 in netns blue has a tc ingress filter (bpf program id 43 (tc_drop, direct-action)): ' +
        'delivery past it cannot be verified',
    );
  });
  it('says other filters by kind, pref and protocol, tcx programs, and XDP with them', () => {
    assert.equal(
      peerXdpNote({
        where,
        programs: [{ id: 42, mode: 'native' }],
        tc: { filters: [bpf, u32], tcx: [{ id: 44, name: 'tcx_prog' }, { id: 45 }] },
      }),
      'veth peer eth0 in netns blue runs XDP program id 42 (name unknown, native mode), has tc ingress filters ' +
        '(bpf program id 43 (tc_drop, direct-action); u32, pref 49151, protocol ip) and has tcx ingress programs ' +
        'id 44 (tcx_prog), id 45 (name unknown): delivery past it cannot be verified',
    );
  });
});

describe('peerXdpNote of nftables chains', () => {
  it('says each chain as nft names it, with priority, policy and its rules counted', () => {
    assert.equal(
      peerXdpNote({ where, programs: [], nft: [drop] }),
      'veth peer eth0 in netns blue has an nftables ingress chain netdev t c (priority 0, policy drop, no rules): ' +
        'delivery past it cannot be verified',
    );
    assert.equal(
      peerXdpNote({
        where,
        programs: [],
        tc: { filters: [u32], tcx: [] },
        nft: [drop, { family: 'inet', table: 'f\x1b', chain: 'in', priority: -5, policy: 'accept', rules: 1 }, unread],
      }),
      'veth peer eth0 in netns blue has a tc ingress filter (u32, pref 49151, protocol ip) and has nftables ingress ' +
        'chains netdev t c (priority 0, policy drop, no rules), inet f\\e in (priority -5, policy accept, 1 rule), ' +
        'netdev t d (priority 10, policy accept, rules not read): delivery past it cannot be verified',
    );
  });
});

describe('BackendsReceiving of a backend with a peer note', () => {
  const reason = (note: string) =>
    ruleConditions(
      {
        state: 'degraded',
        message: note,
        backends: [{ receiving: true, ip: '10.0.0.2', interface: 'v1', message: note, peerXdp: note }],
      },
      [1],
      [],
    ).find((c) => c.type === 'BackendsReceiving');
  it('PeerTcFilter when only tc is there, PeerXdpProgram when XDP is', () => {
    const tc = peerXdpNote({ where, programs: [], tc: { filters: [u32], tcx: [] } });
    assert.deepEqual(
      [reason(tc)?.status, reason(tc)?.reason, reason(tc)?.message],
      ['Unknown', 'PeerTcFilter', `10.0.0.2@v1: ${tc}`],
    );
    const xdp = peerXdpNote({ where, programs: [{ id: 1, mode: 'native' }], tc: { filters: [u32], tcx: [] } });
    assert.equal(reason(xdp)?.reason, 'PeerXdpProgram');
  });
  it('PeerNftChain when only nftables chains are there, PeerTcFilter with tc, PeerXdpProgram with XDP', () => {
    const nft = peerXdpNote({ where, programs: [], nft: [drop] });
    assert.deepEqual([reason(nft)?.status, reason(nft)?.reason], ['Unknown', 'PeerNftChain']);
    const tcx = peerXdpNote({ where, programs: [], tc: { filters: [], tcx: [{ id: 44 }] }, nft: [drop] });
    assert.equal(reason(tcx)?.reason, 'PeerTcFilter');
    const xdp = peerXdpNote({ where, programs: [{ id: 1, mode: 'generic' }], nft: [drop] });
    assert.equal(reason(xdp)?.reason, 'PeerXdpProgram');
  });
});
