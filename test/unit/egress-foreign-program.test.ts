/**
 * An XDP program not ours on a backend's egress itself (rule-status.ts foreignEgressStatus, conditions.ts
 * ruleConditions; twentieth review, LOW-9): what the backend sends back passes through it first. A backend in the
 * table with a non-zero weight names it and makes an ACTIVE rule DEGRADED, BackendsReceiving Unknown
 * (EgressForeignProgram); one not known to receive has it named as a possible cause, as before; a weight-0 one
 * does not degrade the rule. The program said with its id, name and mode (conditions.ts otherProgram).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { egressReason, otherProgram, ruleConditions } from '../../src/server/core/conditions.js';
import type { RuleStatus } from '../../src/server/core/model.js';
import {
  egressHooksNote,
  egressHooksPhrase,
  egressOwnPhrase,
  foreignEgressStatus,
  takerParts,
} from '../../src/server/core/rule-status.js';

const program = otherProgram(42, undefined, 'generic', undefined, 'base_sink');
const foreign = new Map([['v1', egressHooksPhrase('v1', program, undefined)!]]);
const backend = (ip: string, iface: string, receiving = true) => ({
  ip,
  interface: iface,
  mac: receiving ? '02:00:00:00:00:02' : '',
  resolved: receiving,
  receiving,
  message: receiving ? '' : `no neighbour entry for ${ip} on ${iface}`,
});
const active = (backends: RuleStatus['backends']): RuleStatus => ({
  state: 'active',
  message: 'forwarding to 2 backend(s)',
  backends,
  warnings: [],
});

describe('foreignEgressStatus', () => {
  it('names the program with its id, name and mode', () => {
    assert.equal(program, 'another XDP program (id 42, name base_sink, generic mode)');
    assert.equal(otherProgram(42, undefined, 'native'), 'another XDP program (id 42, native mode)');
  });

  it('a receiving backend behind it: DEGRADED, named, kept in the table, BackendsReceiving Unknown', () => {
    const rule = { backends: [{ interface: 'v1' }, { interface: 'v2' }] };
    const s = foreignEgressStatus(active([backend('10.0.0.2', 'v1'), backend('10.0.0.3', 'v2')]), rule, foreign);
    const note =
      `${program} is attached to v1: what backend 10.0.0.2 sends back, its answers and ARP replies included, ` +
      'passes through that program before this host, which may drop it or redirect it elsewhere: whether it ' +
      'arrives cannot be verified';
    assert.equal(s.state, 'degraded');
    assert.equal(s.message, `forwarding to 2 backend(s); ${note}`);
    assert.deepEqual(s.warnings, [note]);
    assert.equal(s.backends[0].receiving, true);
    assert.equal(s.backends[0].egressProgram, note);
    assert.equal(s.backends[0].message, note);
    assert.equal(s.backends[1].egressProgram, undefined);
    const c = ruleConditions(s, [1, 1], []).find((x) => x.type === 'BackendsReceiving')!;
    assert.deepEqual(
      { status: c.status, reason: c.reason, message: c.message },
      { status: 'Unknown', reason: 'EgressForeignProgram', message: `10.0.0.2@v1: ${note}` },
    );
    // Judged again with the same facts: the same words, said once.
    assert.deepEqual(foreignEgressStatus(s, rule, foreign), s);
  });

  it('one not known to receive: named as a possible cause, the verdict unchanged', () => {
    const rule = { backends: [{ interface: 'v1' }, { interface: 'v2' }] };
    const s = foreignEgressStatus(
      { ...active([backend('10.0.0.2', 'v1', false), backend('10.0.0.3', 'v2')]), state: 'degraded' },
      rule,
      foreign,
    );
    assert.equal(s.backends[0].egressProgram, undefined);
    assert.match(
      s.backends[0].message,
      /^no neighbour entry for 10\.0\.0\.2 on v1; another XDP program .* what arrives on it/,
    );
    assert.equal(s.message, 'forwarding to 2 backend(s)');
    const c = ruleConditions(s, [1, 1], []).find((x) => x.type === 'BackendsReceiving')!;
    assert.equal(c.reason, 'BackendsNotReceiving');
  });

  it('a weight-0 backend behind it does not degrade the rule', () => {
    const rule = { backends: [{ interface: 'v1', weight: 0 }, { interface: 'v2' }] };
    const s = foreignEgressStatus(active([backend('10.0.0.2', 'v1'), backend('10.0.0.3', 'v2')]), rule, foreign);
    assert.equal(s.state, 'active');
    assert.equal(s.backends[0].egressProgram, undefined);
  });

  it('tc filters and nftables chains on the egress ingress: said as the egress has them, their own reasons', () => {
    const u32 = { kind: 'u32', pref: 49152, protocol: 0x0800, programs: [] };
    const drop = { family: 'netdev', table: 't', chain: 'c', priority: 0, policy: 'drop', rules: 0 };
    assert.equal(egressHooksPhrase('v1', undefined, undefined), undefined);
    const tc = egressHooksPhrase('v1', undefined, { tc: { filters: [u32], tcx: [] } })!;
    assert.equal(tc, 'v1 has a tc ingress filter (u32, pref 49152, protocol ip)');
    const nft = egressHooksPhrase('v1', undefined, { nft: [drop] })!;
    assert.equal(nft, 'v1 has an nftables ingress chain netdev t c (priority 0, policy drop, no rules)');
    const both = egressHooksPhrase('v1', program, { tc: { filters: [u32], tcx: [] }, nft: [drop] })!;
    assert.equal(
      both,
      `${program} is attached to v1, and v1 has a tc ingress filter (u32, pref 49152, protocol ip) and has an ` +
        'nftables ingress chain netdev t c (priority 0, policy drop, no rules)',
    );
    const rule = { backends: [{ interface: 'v1' }] };
    const s = foreignEgressStatus(active([backend('10.0.0.2', 'v1')]), rule, new Map([['v1', tc]]));
    assert.equal(
      s.backends[0].egressProgram,
      `${tc}: what backend 10.0.0.2 sends back, its answers and ARP replies included, passes through them before ` +
        'this host, which may drop it or redirect it elsewhere: whether it arrives cannot be verified',
    );
    assert.equal(s.state, 'degraded');
    assert.equal(egressReason([s.backends[0].egressProgram!]), 'EgressTcFilter');
    const n = foreignEgressStatus(active([backend('10.0.0.2', 'v1')]), rule, new Map([['v1', nft]]));
    assert.equal(egressReason([n.backends[0].egressProgram!]), 'EgressNftChain');
    const b = foreignEgressStatus(active([backend('10.0.0.2', 'v1')]), rule, new Map([['v1', both]]));
    assert.equal(egressReason([b.backends[0].egressProgram!]), 'EgressForeignProgram');
  });

  it('a passthru macvlan stacked on the egress (twenty-third review, LOW-3): said, EgressPassthruDevice', () => {
    const uppers = [
      { name: 'br0', kind: 'bridge', via: 'master' },
      { name: 'mb', kind: 'macvlan', via: 'stacked', mode: 'bridge' },
      { name: 'v10', kind: 'vlan', via: 'stacked' },
      { name: 'iv', kind: 'ipvlan', via: 'stacked', mode: 'l2' },
      { name: 'mp', kind: 'macvlan', via: 'stacked', mode: 'passthru' },
    ];
    // Only what takes every frame arriving on the egress.
    const takers = takerParts(uppers);
    assert.deepEqual(takers, ['has macvlan mp stacked on it in passthru mode']);
    assert.deepEqual(takerParts(uppers.slice(0, 4)), []);
    const phrase = egressHooksPhrase('v1', undefined, undefined, takers)!;
    assert.equal(phrase, 'v1 has macvlan mp stacked on it in passthru mode');
    const rule = { backends: [{ interface: 'v1' }, { interface: 'v1' }] };
    const s = foreignEgressStatus(
      active([backend('10.0.0.2', 'v1'), backend('10.0.0.3', 'v1', false)]),
      rule,
      new Map([['v1', phrase]]),
    );
    assert.equal(
      s.backends[0].egressProgram,
      `${phrase}: what backend 10.0.0.2 sends back, its answers and ARP replies included, goes to macvlan mp, not ` +
        'to v1: whether it arrives cannot be verified',
    );
    assert.equal(s.state, 'degraded');
    assert.equal(egressReason([s.backends[0].egressProgram!]), 'EgressPassthruDevice');
    // One without a MAC: why it has none.
    assert.equal(
      s.backends[1].message,
      `no neighbour entry for 10.0.0.3 on v1; ${phrase}: every unicast frame arriving on v1, backend 10.0.0.3's ARP ` +
        'replies and answers included, goes to macvlan mp, not to v1',
    );
    // With tc there too: "them", the reason tc's.
    const u32 = { kind: 'u32', pref: 1, protocol: 0x0800, programs: [] };
    const mixed = egressHooksPhrase('v1', undefined, { tc: { filters: [u32], tcx: [] } }, takers)!;
    assert.equal(
      mixed,
      'v1 has a tc ingress filter (u32, pref 1, protocol ip) and has macvlan mp stacked on it in passthru mode',
    );
    const m = foreignEgressStatus(
      active([backend('10.0.0.2', 'v1')]),
      { backends: [{ interface: 'v1' }] },
      new Map([['v1', mixed]]),
    );
    assert.match(m.backends[0].egressProgram!, /passes through them before this host/);
    assert.equal(egressReason([m.backends[0].egressProgram!]), 'EgressTcFilter');
  });

  it("the interface row's words (twenty-third review, LOW-2): what the egress has itself, its program left out", () => {
    const u32 = { kind: 'u32', pref: 49152, protocol: 0x0800, programs: [] };
    assert.equal(egressOwnPhrase('v1', undefined), undefined);
    const own = egressOwnPhrase('v1', { tc: { filters: [u32], tcx: [] } })!;
    assert.equal(own, 'v1 has a tc ingress filter (u32, pref 49152, protocol ip)');
    assert.equal(
      egressHooksNote('v1', own),
      `${own}: what the backends behind it send back, their answers and ARP replies included, passes through them ` +
        'before this host, which may drop it or redirect it elsewhere: whether it arrives cannot be verified',
    );
    const taker = egressOwnPhrase('v1', undefined, ['has macvtap t0 stacked on it in passthru mode'])!;
    assert.equal(
      egressHooksNote('v1', taker),
      `${taker}: what the backends behind it send back, their answers and ARP replies included, goes to macvtap t0, ` +
        'not to v1: whether it arrives cannot be verified',
    );
  });
});
