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
import { after, before, describe, it } from 'node:test';

import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { kernelOnly, sh, shQuiet, until } from '../helpers/env.js';
import { backendOf, esc, Lab } from '../helpers/lab.js';
import { saidWhileOnPeer } from '../helpers/peer-note.js';
import { type Host } from '../helpers/topology.js';

const PORT = 7653;

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

    /** With `add` done on b1's side of the veth: said, DEGRADED, then ACTIVE once `remove` is done (peer-note.ts). */
    const saidWhileThere = (words: string, drops: boolean, add: () => void, remove: () => void) =>
      saidWhileOnPeer(lab, b1, {
        rule: 'web',
        port: PORT,
        reason: 'PeerNftChain',
        words: () => words,
        drops,
        add,
        remove,
        neverSaid: new RegExp(esc(harmless)),
      });

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
