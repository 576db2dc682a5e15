/**
 * What a rule says about a veth backend agrees with what is delivered, through every way its peer's GRO
 * can be set (measured on 6.18; the daemon runs with --no-fix-veth-peers, so it only observes): GRO
 * switched on while the peer is up gives it NAPI (delivered); switched off while the peer is down,
 * the kernel keeps announcing ndo-xmit with no NAPI (0 delivered); switched on while the peer is down,
 * ethtool shows "on" with no NAPI (0 delivered) until GRO is switched off and on while up. Each step:
 * the rule's state, then real datagrams.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { ifindexOf } from '../../src/server/dataplane/netdev.js';
import { XDP_ACT, xdpFeatures } from '../../src/server/dataplane/xdp-features.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients } from '../helpers/daemon.js';
import { kernelOnly, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

describe('a veth backend: the status follows delivery, however its peer got its GRO setting', kernelOnly(), () => {
  const lab = new Lab();
  let c: Clients;
  let b1: Host;
  before(async () => {
    ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    ({ c } = await lab.start(['--xdp-mode', 'native', '--no-fix-veth-peers']));
  });
  after(() => lab.destroy());

  it('ACTIVE exactly when datagrams arrive', async () => {
    const ndoXmit = () => ((xdpFeatures(ifindexOf(b1.hostIf)) ?? 0n) & XDP_ACT['ndo-xmit']) !== 0n;
    const peer = (cmd: string) => lab.topo.exec('b1', 'sh', ['-c', cmd]);
    const state = () => lab.status('web');
    const deliver = async () => {
      const { sent, got } = await lab.send(7999, [b1], 100, 10);
      return { sent, got: got[0] };
    };
    peer('ethtool -K eth0 gro on');
    await c.rules.createRule({
      rule: lab.rule('web', 7999, [backendOf(b1)]),
    });
    const steps: [string, string, boolean, RegExp?][] = [
      ['GRO on while up', 'true', true],
      [
        'GRO off while down (ndo-xmit still announced)',
        'ip link set eth0 down && ethtool -K eth0 gro off && ip link set eth0 up',
        false,
        /has neither an XDP program nor GRO/,
      ],
      ['GRO on and off again while up', 'ethtool -K eth0 gro on && ethtool -K eth0 gro off', false],
      [
        'GRO on while down (ethtool says on)',
        'ip link set eth0 down && ethtool -K eth0 gro on && ip link set eth0 up',
        false,
        /has GRO but no NAPI .*switch it off and on again/,
      ],
      ['GRO off and on while up', 'ethtool -K eth0 gro off && ethtool -K eth0 gro on', true],
    ];
    const premises: boolean[] = [];
    for (const [what, cmd, delivers, why] of steps) {
      peer(cmd);
      premises.push(ndoXmit());
      const want = delivers ? RuleState.RULE_STATE_ACTIVE : RuleState.RULE_STATE_INACTIVE;
      await until(
        async () => `${what}: rule ${want}; last ${JSON.stringify((await state()).backendStatus)}`,
        async () => {
          const st = await state();
          return st.state === want && (!why || why.test(st.backendStatus[0].message));
        },
        5000,
      );
      const r = await deliver();
      assert.equal(r.got, delivers ? r.sent : 0, `${what}: ${r.got} of ${r.sent} delivered`);
    }
    // What the kernel announced at each step: the two stale cases are what this test is about.
    assert.deepEqual(premises, [true, true, false, false, true], 'ndo-xmit per step (kernel behaviour)');
  });
});
