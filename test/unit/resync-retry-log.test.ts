/**
 * A rule the datapath refused at a reconciler pass is FAILED and retried after
 * FAILED_RETRY_MS. What the log says about it must be what was observed (docs/architecture.md:
 * "each transition is logged once, not every second"): the failure once; a retry
 * is not a host change ("the host changed: re-applying rules" is only for
 * changes seen on the host); a retry that fails the same way adds no line; the
 * retry that succeeds says so, with the status it reached. Over modelled maps
 * whose N-th write fails (test/helpers/model-dataplane.ts).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Controller } from '../../src/server/core/controller.js';
import { FAILED_RETRY_MS } from '../../src/server/core/restore.js';
import { captureLog, type LogLine as Line } from '../helpers/log-capture.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';

describe('resync: a refused rule retried', () => {
  it('logs its failure once, its retries never as a host change, and its recovery once', async () => {
    const dp = new ModelDataplane();
    // The backend's host: b0's veth peer has its static MAC (confirmed; one nothing confirms is DEGRADED).
    dp.vethPeers.set('b0', { name: 'b0p', mac: '02:00:00:00:01:01', takesOthers: false });
    const lines: Line[] = [];
    let t = 1_000_000;
    const c = new Controller(dp, { mode: 'generic', fixVethPeers: false, log: captureLog(lines), now: () => t });
    await c.createRule({
      name: 'r',
      protocol: 'udp',
      port: 5000,
      destination: '',
      sourcePrefixes: [],
      ingressInterfaces: ['in0'],
      backends: [{ ip: '10.0.0.1', mac: '02:00:00:00:01:01', interface: 'b0', weight: 1 }],
      udpChecksum: 'update',
      labels: {},
    });
    await c.resync();
    assert.equal(c.getRule('r').status.state, 'active');

    // The ingress gets a new ifindex (deleted and made again): the pass re-applies r, and its first map write fails.
    dp.ifs.set('in0', { ...dp.ifs.get('in0')!, ifindex: 42 });
    dp.faults.failAt = dp.faults.writes + 1;
    lines.length = 0;
    await c.resync();
    assert.equal(c.getRule('r').status.state, 'failed');
    const hostChanged = () => lines.filter((l) => l.msg === 'the host changed: re-applying rules');
    assert.equal(hostChanged().length, 1, 'the change seen on the host is logged');
    assert.match(String((hostChanged()[0].fields.changes as Record<string, string>).r), /in0 has a new ifindex/);
    const failures = () => lines.filter((l) => l.level === 'error' && /rule r FAILED/.test(l.msg));
    assert.equal(failures().length, 1, 'the failure is logged');

    // Within the retry period nothing is tried; after it, a retry that fails the same way adds no line.
    lines.length = 0;
    await c.resync();
    t += FAILED_RETRY_MS;
    dp.faults.failAt = dp.faults.writes + 1;
    await c.resync();
    assert.equal(c.getRule('r').status.state, 'failed');
    assert.equal(hostChanged().length, 0, `a retry is not a host change: ${JSON.stringify(hostChanged())}`);
    assert.equal(failures().length, 0, `the same failure is not logged again: ${JSON.stringify(lines)}`);
    assert.ok(
      lines.some((l) => l.level === 'debug' && l.msg === 'retrying rules the datapath refused before'),
      'the retry itself is at debug level',
    );

    // The next retry succeeds: logged once, with the state it reached.
    lines.length = 0;
    t += FAILED_RETRY_MS;
    await c.resync();
    assert.equal(c.getRule('r').status.state, 'active');
    assert.equal(hostChanged().length, 0);
    const recovered = lines.filter((l) => /^rule r applied on retry/.test(l.msg));
    assert.equal(recovered.length, 1, JSON.stringify(lines.map((l) => l.msg)));
    assert.ok(!lines.some((l) => /^rule r is ACTIVE/.test(l.msg)), 'one line for the transition, not two');
    assert.equal(recovered[0].level, 'info');
    assert.match(recovered[0].msg, /it was FAILED: .+\); now ACTIVE/);
    lines.length = 0;
    await c.resync();
    assert.ok(!lines.some((l) => /applied on retry/.test(l.msg)), 'said once');
  });
});
