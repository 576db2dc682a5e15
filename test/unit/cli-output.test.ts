/**
 * The CLI's interface table says when the daemon cut an interface's used_by (used_by_omitted): a review
 * found a cut list printed as if it were whole.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { INTERFACE_HEAD, interfaceRow, renderTable, ruleDetails, usedByCell } from '../../src/client/cli/output.js';
import { Counters } from '../../src/gen/xdpctl/v1/counters.js';
import { ManagedInterface } from '../../src/gen/xdpctl/v1/interface.js';
import { Rule } from '../../src/gen/xdpctl/v1/rule.js';

describe('CLI output: interfaces', () => {
  it('used_by cut by the daemon ends with "+N more"; a whole one does not', () => {
    assert.equal(
      usedByCell({ usedBy: ['rule/a/ingress', 'rule/b/egress'], usedByOmitted: 0 }),
      'rule/a/ingress,rule/b/egress',
    );
    assert.equal(usedByCell({ usedBy: ['rule/a/ingress'], usedByOmitted: 19_999 }), 'rule/a/ingress +19999 more');
    assert.equal(usedByCell({ usedBy: [], usedByOmitted: 3 }), '+3 more');
    assert.equal(usedByCell({ usedBy: [], usedByOmitted: 0 }), '-');
  });

  it('the table (interfaces list / get) shows the count', () => {
    const i = ManagedInterface.fromPartial({
      name: 'eth0',
      present: true,
      ifindex: 2,
      usedBy: ['rule/web/ingress'],
      usedByOmitted: 4000,
    });
    const text = renderTable(INTERFACE_HEAD, [interfaceRow(i)]);
    assert.match(text, /rule\/web\/ingress \+4000 more/);
  });
});

describe('CLI output: rules get', () => {
  it('shows the packets the kernel dropped after the redirect, for the rule and each backend', () => {
    const r = Rule.fromPartial({
      name: 'web',
      match: { port: 7999 },
      ingressInterfaces: ['in0'],
      backends: [
        { ip: '10.0.0.1', mac: '02:00:00:00:00:01', interface: 'b1' },
        { ip: '10.0.0.2', mac: '02:00:00:00:00:02', interface: 'b2' },
      ],
    });
    const c = Counters.fromPartial({
      rules: [{ rule: 'web', matchedPackets: 1350n, redirectedPackets: 1238n, redirectErrorPackets: 112n }],
      backends: [
        { rule: 'web', ip: '10.0.0.1', interface: 'b1', packets: 515n, redirectErrorPackets: 112n },
        { rule: 'web', ip: '10.0.0.2', interface: 'b2', packets: 723n, redirectErrorPackets: 0n },
      ],
    });
    const text = ruleDetails(r, c);
    assert.match(text, /^redirect errors:\s+112 packets \(dropped by the kernel after the redirect\)$/m);
    assert.match(text, /REDIRECT ERRORS/);
    assert.match(text, /^0\s+10\.0\.0\.1\s.*\s515\s+\S+ B\s+112(\s|$)/m);
    assert.match(text, /^1\s+10\.0\.0\.2\s.*\s723\s+\S+ B\s+0(\s|$)/m);
  });
});
