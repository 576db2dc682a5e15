/**
 * An XDP program on a backend egress's veth peer (thirty-third review, finding 3): another tool's program on
 * the backend's side of the veth (eth0 in the backend's namespace) sees every frame redirected into the veth
 * first and may drop it, while the daemon said the rule ACTIVE, the backend receiving, with no word of it:
 * 0 of 20 datagrams arrived, nothing said. Now the rule's warnings and the backend's message name the peer,
 * its namespace and the program ("veth peer eth0 in netns N runs XDP program id P (base_sink, generic mode):
 * delivery past it cannot be verified"). Newcomer review (MED): said, but the rule stayed ACTIVE, AllReceiving.
 * Now whether the backend receives cannot be verified: the rule is DEGRADED, BackendsReceiving Unknown
 * (PeerXdpProgram) naming the program, the backend kept in its table; once the program is removed the words go
 * and the rule is ACTIVE again (20 of 20 arrive). Both XDP modes of the
 * daemon; the peer's program native (xdpdrv) in one, generic (xdpgeneric) in the other. Real veths, namespaces,
 * a real daemon and real datagrams.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { kernelOnly, ROOT, sh, until } from '../helpers/env.js';
import { backendOf, cond, esc, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const PORT = 7651;

for (const [mode, peerMode, peerWords] of [
  ['native', 'xdpgeneric', 'generic'],
  ['generic', 'xdpdrv', 'native'],
] as const) {
  describe(`an XDP program on a backend's veth peer is said (daemon ${mode}, peer ${peerWords})`, kernelOnly(), () => {
    const lab = new Lab();
    let b1: Host;

    before(async () => {
      ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
      await lab.start(['--xdp-mode', mode, '--log-level', 'info']);
      await lab.c.rules.createRule({ rule: lab.rule('web', PORT, [backendOf(b1)]) });
      await lab.untilActive('web');
    });
    after(() => lab.destroy());

    it('named in the warnings and the backend while attached, gone once removed', async () => {
      const prog = ['obj', `${ROOT}build/bpf/baseline.bpf.o`, 'sec', 'xdp', 'program', 'base_sink'];
      sh('ip', ['-n', b1.netns, 'link', 'set', 'dev', 'eth0', peerMode, ...prog]);
      let detached = false;
      try {
        const id = JSON.parse(sh('ip', ['-n', b1.netns, '-j', 'link', 'show', 'dev', 'eth0']))[0].xdp.prog.id as number;
        const note =
          `veth peer eth0 in netns ${b1.netns} runs XDP program id ${id} \\(base_sink, ${peerWords} mode\\): ` +
          'delivery past it cannot be verified';
        const warning = new RegExp(`^backend ${esc(b1.ip!)} on ${b1.hostIf}: ${note}$`);
        await until(
          'the warning names the program on the peer',
          async () => (await lab.status('web')).warnings.some((w) => warning.test(w)),
          15_000,
        );
        const s = await lab.status('web');
        assert.match(s.backendStatus[0].message, new RegExp(note), JSON.stringify(s.backendStatus[0]));
        // Whether it receives cannot be verified: DEGRADED, not ACTIVE, the backend kept in its table.
        assert.equal(s.state, RuleState.RULE_STATE_DEGRADED, JSON.stringify(s));
        assert.equal(s.backendStatus[0].active, true, 'kept in its table: what the program does is not known');
        assert.match(s.message, new RegExp(note), s.message);
        const br = cond(s, 'BackendsReceiving');
        assert.deepEqual([br.status, br.reason], [ConditionStatus.CONDITION_STATUS_UNKNOWN, 'PeerXdpProgram']);
        assert.match(br.message, new RegExp(`^${esc(b1.ip!)}@${b1.hostIf}: ${note}$`), br.message);
        assert.equal(cond(s, 'Ready').status, ConditionStatus.CONDITION_STATUS_FALSE);
        // What the warning is about: the program drops what is redirected to the backend.
        const r = await lab.send(PORT, [b1], 20, 4);
        assert.equal(r.got[0], 0, JSON.stringify(r));
        sh('ip', ['-n', b1.netns, 'link', 'set', 'dev', 'eth0', peerMode, 'off']);
        detached = true;
        await until(
          'the warning goes with the program',
          async () => !/runs XDP program/.test(JSON.stringify(await lab.status('web'))),
          15_000,
        );
        const s2 = await lab.status('web');
        assert.equal(s2.state, RuleState.RULE_STATE_ACTIVE, JSON.stringify(s2));
        const br2 = cond(s2, 'BackendsReceiving');
        assert.deepEqual([br2.status, br2.reason], [ConditionStatus.CONDITION_STATUS_TRUE, 'AllReceiving']);
      } finally {
        if (!detached) sh('ip', ['-n', b1.netns, 'link', 'set', 'dev', 'eth0', peerMode, 'off']);
      }
      const r = await lab.send(PORT, [b1], 20, 4);
      assert.equal(r.got[0], 20, JSON.stringify(r));
    });
  });
}
