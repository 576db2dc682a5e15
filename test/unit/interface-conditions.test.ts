/**
 * Interface conditions by use (conditions.ts interfaceConditions) and MACs from neighbour entries set by hand
 * (rule-status.ts handSetNeighbourStatus). Pure functions, no kernel.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { interfaceConditions, ruleConditions } from '../../src/server/core/conditions.js';
import { handSetNeighbourStatus } from '../../src/server/core/rule-status.js';

const base = { present: true, name: 'eth1', effectiveMode: 'none', ours: false, progId: 0, used: false };
const brief = (c: ReturnType<typeof interfaceConditions>) => c.map((x) => [x.type, x.status, x.reason]);

describe('interface conditions by use', () => {
  it('an egress-only interface without a program: EgressReady and FramesFit only', () => {
    assert.deepEqual(brief(interfaceConditions({ ...base, egressFor: ['rule/web/egress'] })), [
      ['EgressReady', 'True', 'Up'],
      ['FramesFit', 'True', 'MTUFits'],
    ]);
    const down = interfaceConditions({
      ...base,
      egressFor: ['rule/web/egress'],
      egressProblems: ['egress eth1 is down'],
    });
    assert.deepEqual(brief(down), [
      ['EgressReady', 'False', 'EgressDown'],
      ['FramesFit', 'True', 'MTUFits'],
    ]);
    assert.equal(down[0].message, 'egress eth1 is down (egress of rule/web)');
    assert.deepEqual(brief(interfaceConditions({ ...base, present: false, egressFor: ['link/a:eth1/egress'] })), [
      ['EgressReady', 'False', 'InterfaceMissing'],
      ['FramesFit', 'Unknown', 'InterfaceMissing'],
    ]);
  });

  it("an egress carries what its users' backend judgements found: no native redirects, unverified, MTU", () => {
    const eg = { ...base, egressFor: ['rule/web/egress'] };
    const napi = interfaceConditions({
      ...eg,
      egressProblems: ['the kernel reports no ndo_xdp_xmit for eth1 (...) (rule/web)'],
      egressUnverified: ['cannot be verified: eth1: ... (rule/other)'],
    });
    // Cannot transmit wins over cannot be verified.
    assert.deepEqual(brief(napi), [
      ['EgressReady', 'False', 'EgressCannotTransmit'],
      ['FramesFit', 'True', 'MTUFits'],
    ]);
    assert.equal(napi[0].message, 'the kernel reports no ndo_xdp_xmit for eth1 (...) (rule/web) (egress of rule/web)');
    const unverified = interfaceConditions({ ...eg, egressUnverified: ['cannot be verified: eth1: why (rule/web)'] });
    assert.deepEqual(brief(unverified)[0], ['EgressReady', 'Unknown', 'EgressUnverified']);
    assert.equal(
      unverified[0].message,
      'up with carrier; cannot be verified: eth1: why (rule/web) (egress of rule/web)',
    );
    const small = 'egress eth1 has MTU 1000, ingress eth0 1500: datagrams ... (rule/web)';
    const mtu = interfaceConditions({ ...eg, egressFrames: [small] });
    assert.deepEqual(brief(mtu), [
      ['EgressReady', 'True', 'Up'],
      ['FramesFit', 'False', 'EgressMTUTooSmall'],
    ]);
    assert.equal(mtu[1].message, small);
    const peer = "egress eth1's veth peer MTU cannot be verified (no access): ... (rule/web)";
    assert.deepEqual(brief(interfaceConditions({ ...eg, egressFrames: [peer] }))[1], [
      'FramesFit',
      'Unknown',
      'PeerMTUUnverified',
    ]);
  });

  it('an ingress keeps ProgramAttached alone; one that is both has both', () => {
    assert.deepEqual(brief(interfaceConditions({ ...base, used: true })), [
      ['ProgramAttached', 'False', 'NotAttached'],
    ]);
    assert.deepEqual(
      brief(
        interfaceConditions({ ...base, used: true, effectiveMode: 'native', ours: true, egressFor: ['rule/x/egress'] }),
      ),
      [
        ['ProgramAttached', 'True', 'Attached'],
        ['EgressReady', 'True', 'Up'],
        ['FramesFit', 'True', 'MTUFits'],
      ],
    );
    // A foreign program on an egress-only interface is still said.
    assert.deepEqual(
      brief(interfaceConditions({ ...base, effectiveMode: 'generic', progId: 9, egressFor: ['rule/x/egress'] })),
      [
        ['ProgramAttached', 'False', 'ForeignProgram'],
        ['EgressReady', 'True', 'Up'],
        ['FramesFit', 'True', 'MTUFits'],
      ],
    );
  });
});

describe('MACs from neighbour entries set by hand', () => {
  const written = {
    state: 'active' as const,
    message: 'forwarding to 2 backend(s)',
    warnings: [],
    backends: [
      {
        ip: '10.0.0.2',
        interface: 'eth1',
        mac: '02:00:00:00:00:02',
        resolved: true,
        receiving: true,
        message: 'MAC resolved from the neighbour table',
      },
      { ip: '10.0.0.3', interface: 'eth1', mac: '02:00:00:00:00:03', resolved: true, receiving: true, message: '' },
    ],
  };
  const rule = {
    backends: [
      { ip: '10.0.0.2', interface: 'eth1', mac: '' },
      { ip: '10.0.0.3', interface: 'eth1', mac: '02:00:00:00:00:03' },
    ],
  };

  it('only a MAC-less backend whose entry was set by hand (its MAC not answered) is unverified; the rule is DEGRADED for it', () => {
    const handSet = new Map([
      ['10.0.0.2@eth1', 'PERMANENT'],
      ['10.0.0.3@eth1', 'PERMANENT'],
    ]);
    const s = handSetNeighbourStatus(written, rule, handSet);
    assert.equal(s.state, 'degraded', 'whether it receives cannot be verified (proto RuleState DEGRADED)');
    assert.match(
      s.message,
      /; 1 not confirmed yet \(10\.0\.0\.2@eth1 \(PERMANENT\): MAC from a neighbour entry set by hand, which the kernel never confirms, no ARP probe of ours to it answered yet; probing it\)/,
    );
    assert.match(
      s.backends[0].message,
      /^MAC 02:00:00:00:00:02 not confirmed yet: the neighbour entry for 10\.0\.0\.2 on eth1 was set by hand \(PERMANENT\)/,
    );
    assert.equal(s.backends[0].unverified, true);
    assert.equal(s.backends[1], written.backends[1], 'a static MAC is not from the neighbour table');
    const c = ruleConditions(s, [1, 1], []).find((x) => x.type === 'BackendsReceiving')!;
    assert.deepEqual([c.status, c.reason], ['Unknown', 'BackendsUnverified']);
    const ready = ruleConditions(s, [1, 1], []).find((x) => x.type === 'Ready')!;
    assert.equal(ready.status, 'False');
    assert.equal(handSetNeighbourStatus(written, rule, new Map()), written);
  });
});
