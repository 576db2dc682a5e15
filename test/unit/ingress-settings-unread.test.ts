/**
 * The reconciler's check of an ingress's device settings (resync.ts checkIngressSettings, every
 * INGRESS_CHECK_MS): a read it could not make (the peer's `ethtool -k` killed at its deadline, a namespace not
 * entered) is "cannot be verified", never "as needed". Before, such a read was one of the preparation's
 * `problems`, which the reconciler dropped: the ingress stayed as needed and nothing was said (found by
 * `child-limits`: a stopped `nsenter … ethtool -k eth0` on the ingress's peer was killed at 5 s with no line,
 * so the test's "a deadline said" waited for the next child: 10-18 s instead of 5). Over the model dataplane.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Controller } from '../../src/server/core/controller.js';
import { INGRESS_CHECK_MS } from '../../src/server/core/resync.js';
import { captureLog, type LogLine as Line } from '../helpers/log-capture.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';
import { udpSpec } from '../helpers/rule-spec.js';

describe('an ingress settings read that could not be made', () => {
  it('is said as cannot be verified (the rule DEGRADED), once, and as needed again once read', async () => {
    const dp = new ModelDataplane();
    dp.vethPeers.set('b0', { name: 'b0p', mac: '02:00:00:00:01:01', takesOthers: false });
    let unread: string[] = [];
    Object.assign(dp, {
      checkIngress: async () => ({ done: [], unrepaired: [], ...(unread.length ? { unread } : {}) }),
    });
    const lines: Line[] = [];
    let t = 1_000_000;
    const c = new Controller(dp, { mode: 'generic', fixVethPeers: false, log: captureLog(lines), now: () => t });
    await c.createRule(udpSpec('r', 5000, [{ ip: '10.0.0.1', mac: '02:00:00:00:01:01', interface: 'b0', weight: 1 }]));
    await c.resync();
    assert.equal(c.getRule('r').status.state, 'active');

    const killed =
      'cannot read the offloads of eth0 in netns vm: nsenter --net=/run/netns/vm ethtool -k eth0 did not answer within 5 s (killed)';
    unread = [killed];
    lines.length = 0;
    t += INGRESS_CHECK_MS;
    await c.resync();
    const said = () =>
      lines.filter((l) => l.msg.startsWith('in0: the device settings XDP relies on cannot be verified'));
    assert.equal(said().length, 1, JSON.stringify(lines.map((l) => l.msg)));
    assert.ok(said()[0].msg.endsWith(killed), said()[0].msg);
    assert.equal(c.getRule('r').status.state, 'degraded');
    t += INGRESS_CHECK_MS;
    await c.resync();
    assert.equal(said().length, 1, 'once, not at every check');

    unread = [];
    lines.length = 0;
    t += INGRESS_CHECK_MS;
    await c.resync();
    assert.ok(lines.some((l) => l.msg === 'in0: the device settings XDP relies on are as needed again'));
    assert.equal(c.getRule('r').status.state, 'active');
  });
});
