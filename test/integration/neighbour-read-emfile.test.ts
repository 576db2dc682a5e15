/**
 * The neighbour table cannot be read (EMFILE: the daemon's open-files limit lowered under it with `prlimit --pid`)
 * while a rule's backend is given without a MAC (`IP,,iface`: its MAC from that table). What the read would have
 * judged cannot be verified: the backend says "cannot be verified: <reason>" (BackendsReceiving Unknown, the rule
 * DEGRADED), stays in the datapath as it was (datagrams delivered), and the failure is logged once, not a line per
 * pass; once the limit is back, one line says the table is read again and the rule is ACTIVE. Before: "resync
 * failed" every second, and the status kept saying "MAC resolved from the neighbour table", ACTIVE.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { kernelOnly, sleep, until } from '../helpers/env.js';
import { backendOf, cond, Lab } from '../helpers/lab.js';
import { openFilesLimit } from '../helpers/nofile.js';
import type { Host } from '../helpers/topology.js';

describe(
  'a neighbour table that cannot be read (EMFILE) is said once, its backends "cannot be verified"',
  kernelOnly(),
  () => {
    const lab = new Lab();
    let b1: Host;
    let limit: ReturnType<typeof openFilesLimit> | undefined;
    before(async () => {
      ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
      await lab.start(['--log-level', 'info']);
      limit = openFilesLimit(lab.d!.child.pid!);
      await lab.c.rules.createRule({ rule: lab.rule('web', 7999, [backendOf(b1, '')]) });
      await lab.untilActive('web', 15_000);
    });
    after(async () => {
      limit?.restore();
      await lab.destroy();
    });

    it('says "cannot be verified: <reason>", keeps the backend, logs it once, and its end once', async () => {
      const r0 = await lab.send(7999, [b1], 20, 5);
      assert.equal(r0.total, r0.sent, 'delivered before');
      // No descriptor above the standard three: every socket or pipe the daemon opens from now on fails (EMFILE);
      // the test's gRPC connection, open already, stays.
      limit!.lower();
      try {
        await until(
          async () => `b1 said not verifiable; last: ${JSON.stringify((await lab.status('web')).backendStatus)}`,
          async () => /^cannot be verified: .*EMFILE/.test((await lab.status('web')).backendStatus[0].message),
          10_000,
        );
        const st = await lab.status('web');
        assert.equal(st.state, RuleState.RULE_STATE_DEGRADED);
        assert.deepEqual(
          st.backendStatus.map((b) => [b.active, b.mac]),
          [[true, b1.mac]],
          'left in the datapath as it was',
        );
        assert.match(st.backendStatus[0].message, /as last read from the neighbour table/);
        assert.equal(cond(st, 'BackendsReceiving').status, ConditionStatus.CONDITION_STATUS_UNKNOWN);
        assert.match(cond(st, 'BackendsReceiving').message, /EMFILE/);
        const r = await lab.send(7999, [b1], 20, 5);
        assert.equal(r.total, r.sent, `the datapath forwards meanwhile (${r.total}/${r.sent})`);
        await sleep(3000); // three passes or more
        assert.equal(lab.count(/"msg":"reading the neighbour table failed: .*EMFILE/), 1, 'said once');
        assert.equal(lab.count(/"msg":"resync failed/), 0, 'the passes go on');
      } finally {
        limit!.restore();
      }
      await until(
        'web ACTIVE again',
        async () => (await lab.status('web')).state === RuleState.RULE_STATE_ACTIVE,
        15_000,
      );
      assert.equal((await lab.status('web')).backendStatus[0].message, 'MAC resolved from the neighbour table');
      await until('its end said once', () => lab.count(/"msg":"the neighbour table is read again/) === 1);
      await sleep(1500);
      assert.equal(lab.count(/"msg":"the neighbour table is read again/), 1);
      assert.equal(lab.count(/"msg":"reading the neighbour table failed/), 1);
    });
  },
);
