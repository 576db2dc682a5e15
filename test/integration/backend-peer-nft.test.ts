/**
 * An nftables chain on a backend egress's veth peer (nineteenth review, MED-2): a `netdev` family chain hooked on
 * the ingress of the backend's side of the veth (eth0 in the backend's namespace: `nft add chain netdev t c '{ type
 * filter hook ingress device eth0 priority 0; policy drop; }'`) dropped every datagram redirected to the backend,
 * while the rule stayed ACTIVE, BackendsReceiving AllReceiving, health SERVING, with no word of it. The netfilter
 * ingress hook runs on the peer's receive path after XDP and tc (nf_ingress) in both of the daemon's modes. Now
 * the chains hooked on the peer's ingress (NFT_MSG_GETCHAIN over NETLINK_NETFILTER, read inside its namespace: family
 * netdev hook ingress, family inet hook ingress) are said as the peer's tc filters are: "veth peer eth0 in netns N
 * has an nftables ingress chain netdev T c (priority 0, policy drop, no rules): delivery past it cannot be
 * verified", the rule DEGRADED, BackendsReceiving Unknown (PeerNftChain), the backend kept in its table, one line
 * when it appears and one when it goes; ACTIVE again, 20 of 20 delivered, once it is removed. A chain that cannot
 * drop anything (policy accept, no rule) is not said, nor one on the peer's egress hook (it sees what the peer
 * sends, never what it receives): both stay there throughout. Real veths, namespaces, daemon, datagrams, nft.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { kernelOnly, sh, shQuiet, until } from '../helpers/env.js';
import { backendOf, cond, esc, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const PORT = 7653;
const { NOT_SERVING, SERVING } = HealthCheckResponse_ServingStatus;

for (const mode of ['native', 'generic'] as const) {
  describe(`an nftables chain on a backend's veth peer is said (daemon ${mode})`, kernelOnly(), () => {
    const lab = new Lab();
    let b1: Host;
    const nft = (...args: string[]) => sh('nsenter', [`--net=/run/netns/${b1.netns}`, 'nft', ...args]);
    /** Tables that can drop nothing redirected to b1, there throughout: never said. */
    const harmless = `x${lab.id}ok`;

    before(async () => {
      ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
      nft('add', 'table', 'netdev', harmless);
      // Policy accept and no rule: passes every frame.
      nft(
        'add',
        'chain',
        'netdev',
        harmless,
        'in',
        '{ type filter hook ingress device eth0 priority 0; policy accept; }',
      );
      // The peer's egress: what eth0 sends, never what it receives.
      nft(
        'add',
        'chain',
        'netdev',
        harmless,
        'out',
        '{ type filter hook egress device eth0 priority 0; policy accept; }',
      );
      nft('add', 'rule', 'netdev', harmless, 'out', 'counter');
      await lab.start(['--xdp-mode', mode, '--log-level', 'info']);
      await lab.c.rules.createRule({ rule: lab.rule('web', PORT, [backendOf(b1)]) });
      await until('web ACTIVE', async () => (await lab.status('web')).state === RuleState.RULE_STATE_ACTIVE, 10_000);
    });
    after(() => lab.destroy());

    /**
     * With `add` done in b1's namespace: said as `words`, DEGRADED (`drops`: 0 of 20 arrive, else 20 of 20); ACTIVE
     * again, 20 of 20, once `remove` is done (also when the test fails).
     */
    const saidWhileThere = async (words: string, drops: boolean, add: () => void, remove: () => void) => {
      let removed = false;
      try {
        add();
        // What the warning is about: a chain that drops what is redirected to the backend (or one that does not:
        // the daemon cannot tell them apart). Before: 0 of 20 with the rule ACTIVE and nothing said.
        const r = await lab.send(PORT, [b1], 20, 4);
        assert.equal(r.got[0], drops ? 0 : 20, JSON.stringify(r));
        const note = `veth peer eth0 in netns ${b1.netns} ${words}: delivery past it cannot be verified`;
        const warning = new RegExp(`^backend ${esc(b1.ip!)} on ${esc(b1.hostIf)}: ${esc(note)}$`);
        await until(
          async () => `the warning names the chain: ${(await lab.status('web')).warnings.join(' | ')}`,
          async () => (await lab.status('web')).warnings.some((w) => warning.test(w)),
          15_000,
        );
        const s = await lab.status('web');
        assert.match(s.backendStatus[0].message, new RegExp(esc(note)), JSON.stringify(s.backendStatus[0]));
        assert.equal(s.state, RuleState.RULE_STATE_DEGRADED, JSON.stringify(s));
        assert.equal(s.backendStatus[0].active, true, 'kept in its table: what the chain does is not known');
        assert.match(s.message, new RegExp(esc(note)), s.message);
        const br = cond(s, 'BackendsReceiving');
        assert.deepEqual([br.status, br.reason], [ConditionStatus.CONDITION_STATUS_UNKNOWN, 'PeerNftChain']);
        assert.equal(br.message, `${b1.ip}@${b1.hostIf}: ${note}`);
        assert.equal(cond(s, 'Ready').status, ConditionStatus.CONDITION_STATUS_FALSE);
        // A rule not ACTIVE is a problem of the datapath (before: SERVING while the chain dropped everything).
        assert.equal(await lab.health(), NOT_SERVING);
        remove();
        removed = true;
        await until(
          'the warning goes with the chain',
          async () => !JSON.stringify(await lab.status('web')).includes(note),
          15_000,
        );
        const s2 = await lab.status('web');
        assert.equal(s2.state, RuleState.RULE_STATE_ACTIVE, JSON.stringify(s2));
        const br2 = cond(s2, 'BackendsReceiving');
        assert.deepEqual([br2.status, br2.reason], [ConditionStatus.CONDITION_STATUS_TRUE, 'AllReceiving']);
        assert.equal(await lab.health(), SERVING);
        assert.equal(lab.count(new RegExp(esc(note))), 2, 'one line when it appears, one when it goes');
        assert.equal(lab.count(new RegExp(esc(harmless))), 0, 'the chains that drop nothing received are not said');
      } finally {
        if (!removed) remove();
      }
      const r = await lab.send(PORT, [b1], 20, 4);
      assert.equal(r.got[0], 20, JSON.stringify(r));
    };

    it('a netdev ingress chain with policy drop on the peer', async () => {
      const t = `x${lab.id}drop`;
      await saidWhileThere(
        `has an nftables ingress chain netdev ${t} c (priority 0, policy drop, no rules)`,
        true,
        () => {
          nft('add', 'table', 'netdev', t);
          nft('add', 'chain', 'netdev', t, 'c', '{ type filter hook ingress device eth0 priority 0; policy drop; }');
        },
        () => shQuiet('nsenter', [`--net=/run/netns/${b1.netns}`, 'nft', 'delete', 'table', 'netdev', t]),
      );
    });

    it('an inet ingress chain with a rule (that passes) on the peer, listing two devices', async () => {
      const t = `x${lab.id}inet`;
      await saidWhileThere(
        `has an nftables ingress chain inet ${t} c (priority -5, policy accept, 1 rule)`,
        false,
        () => {
          nft('add', 'table', 'inet', t);
          nft(
            'add',
            'chain',
            'inet',
            t,
            'c',
            '{ type filter hook ingress devices = { lo, eth0 } priority -5; policy accept; }',
          );
          nft('add', 'rule', 'inet', t, 'c', 'counter');
        },
        () => shQuiet('nsenter', [`--net=/run/netns/${b1.netns}`, 'nft', 'delete', 'table', 'inet', t]),
      );
    });
  });
}
