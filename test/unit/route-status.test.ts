/**
 * What a MAC-less backend's status says of its route (rule-status.ts routeNeighbourStatus): an off-link one's MAC
 * is its gateway's, and its "no neighbour entry" names the gateway's entry; one the host routes out of another
 * device says so after whatever else its status says; a static-MAC backend, a FAILED rule and a backend without
 * a note are left as they are.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { RuleStatus } from '../../src/server/core/model.js';
import { backendStatus, routeNeighbourStatus } from '../../src/server/core/rule-status.js';

const OFF =
  'off-link: the host routes 10.9.50.2 via 10.9.3.2 on e0: MAC of the gateway 10.9.3.2 (where the kernel would send its packets)';
const ELSEWHERE = "no route to 10.9.60.2 through e0: the host routes it out of e1 via 10.9.4.2; taken as on e0's link";

function written(...b: { ip: string; mac: string; resolved: boolean }[]): RuleStatus {
  return {
    state: 'active',
    message: '',
    warnings: [],
    backends: b.map((x) =>
      backendStatus({ ip: x.ip, interface: 'e0', givenMac: '', mac: x.mac, resolved: x.resolved }),
    ),
  };
}

describe('routeNeighbourStatus', () => {
  const rule = {
    backends: [
      { ip: '10.9.50.2', interface: 'e0', mac: '' },
      { ip: '10.9.60.2', interface: 'e0', mac: '' },
      { ip: '10.9.70.2', interface: 'e0', mac: '02:00:00:00:00:07' },
    ],
  };
  const route = new Map([
    ['10.9.50.2@e0', OFF],
    ['10.9.60.2@e0', ELSEWHERE],
    ['10.9.70.2@e0', OFF],
  ]);

  it("says an off-link backend's MAC is its gateway's; the other note is added; a static MAC untouched", () => {
    const w = written(
      { ip: '10.9.50.2', mac: '02:00:00:00:00:05', resolved: true },
      { ip: '10.9.60.2', mac: '02:00:00:00:00:06', resolved: true },
      { ip: '10.9.70.2', mac: '02:00:00:00:00:07', resolved: true },
    );
    w.backends[2] = { ...w.backends[2], message: '' };
    const s = routeNeighbourStatus(w, rule, route);
    assert.equal(s.backends[0].message, `${OFF}, resolved from its neighbour entry`);
    assert.equal(s.backends[1].message, `MAC resolved from the neighbour table (${ELSEWHERE})`);
    assert.equal(s.backends[2].message, '');
    // Idempotent: judged again, the same.
    assert.deepEqual(routeNeighbourStatus(s, rule, route), s);
  });

  it("names the gateway's entry when it is missing", () => {
    const w = written({ ip: '10.9.50.2', mac: '', resolved: false });
    const s = routeNeighbourStatus(w, { backends: [rule.backends[0]] }, route);
    assert.equal(
      s.backends[0].message,
      `no neighbour entry for the gateway 10.9.3.2 on e0 (${OFF}): backend gets no traffic until its MAC is known`,
    );
  });

  it('leaves a FAILED rule and a rule without notes as they are', () => {
    const w = written({ ip: '10.9.50.2', mac: '02:00:00:00:00:05', resolved: true });
    assert.equal(routeNeighbourStatus(w, rule, new Map()), w);
    const failed = { ...w, state: 'failed' as const };
    assert.equal(routeNeighbourStatus(failed, rule, route), failed);
  });
});
