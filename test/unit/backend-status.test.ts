/**
 * A backend's status message names the most fundamental reason it gets no traffic (a review: a backend
 * without MAC whose egress was deleted said "no neighbour entry", while the same backend with a MAC said
 * "egress … does not exist").
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { absentBackendStatus, backendStatus } from '../../src/server/core/rule-status.js';

describe('backend status messages', () => {
  it('an egress that does not exist is the reason, with or without a MAC', () => {
    for (const mac of ['', '02:00:00:00:00:01']) {
      const s = absentBackendStatus({ ip: '10.0.0.2', interface: 'gone0', mac });
      assert.equal(s.receiving, false);
      assert.match(s.message, /^egress gone0 does not exist: backend taken out of the table/, `mac '${mac}'`);
    }
  });

  it('an egress that is down comes before an unresolved neighbour; a resolved one on a good egress says nothing wrong', () => {
    const base = { ip: '10.0.0.2', interface: 'e0', givenMac: '', mac: '' };
    assert.match(
      backendStatus({ ...base, resolved: false, egress: 'egress e0 is down' }).message,
      /^egress e0 is down: /,
    );
    assert.match(backendStatus({ ...base, resolved: false }).message, /^no neighbour entry for 10\.0\.0\.2 on e0/);
    const ok = backendStatus({ ...base, mac: '02:00:00:00:00:01', resolved: true });
    assert.equal(ok.receiving, true);
    assert.equal(ok.message, 'MAC resolved from the neighbour table');
  });
});
