/**
 * The CLI's interface table says when the daemon cut an interface's used_by (used_by_omitted): a review
 * found a cut list printed as if it were whole.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { INTERFACE_HEAD, interfaceRow, renderTable, usedByCell } from '../../src/client/cli/output.js';
import { ManagedInterface } from '../../src/gen/xdpctl/v1/interface.js';

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
