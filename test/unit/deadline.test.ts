/**
 * Deadlines and cancellation, end to end through a real gRPC server, the
 * access layer's audit and the controller (over modelled maps): a change
 * whose caller's deadline passes while it waits for its turn is not started,
 * changes nothing and is audited CANCELLED, applied: false; a change that
 * had started when the deadline passed completes, and the audit record says
 * it was applied although the caller had gone.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { ServerCredentials } from '@grpc/grpc-js';
import { ClientError, createChannel, createClientFactory, createServer, Status, type Server } from 'nice-grpc';
import { deadlineMiddleware } from 'nice-grpc-client-middleware-deadline';

import { parseUserDb, Policy } from '../../src/server/auth/policy.js';
import { Controller } from '../../src/server/core/controller.js';
import type { Logger } from '../../src/server/log.js';
import { accessMiddleware, listenerCredentials } from '../../src/server/services/access.js';
import { ruleService } from '../../src/server/services/rule-service.js';
import { errorMiddleware } from '../../src/server/services/status.js';
import { Protocol, RuleServiceDefinition, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';

/** Native-redirect checks wait at a gate the test opens. */
class GatedDataplane extends ModelDataplane {
  gate: Promise<void> = Promise.resolve();
  entered = 0;
  override async redirectTarget(): Promise<{ ok: boolean; detail?: string }> {
    this.entered++;
    await this.gate;
    return { ok: true };
  }
}

const rule = (name: string, port: number): Rule => ({
  name,
  match: { protocol: Protocol.PROTOCOL_UDP, port, destination: '', sourcePrefixes: [] },
  ingressInterfaces: ['in0'],
  backends: [{ ip: '172.16.0.2', mac: '02:42:ac:10:00:02', interface: 'b0', weight: 1 }],
  udpChecksum: 0,
  labels: {},
  generation: 0n,
});

describe('deadlines and cancellation of changes', () => {
  let server: Server;
  let address = '';
  const dp = new GatedDataplane();
  const ctl = new Controller(dp, { mode: 'native', fixVethPeers: true });
  const records: Record<string, unknown>[] = [];
  const audit: Logger = {
    debug: () => {},
    info: (obj) => records.push(obj as Record<string, unknown>),
    warn: (obj) => records.push(obj as Record<string, unknown>),
    error: () => {},
    child: () => audit,
  };
  const auditOf = (name: string) =>
    records.find((r) => JSON.stringify((r.resources as { rules?: string[] })?.rules) === JSON.stringify([name]));

  before(async () => {
    const policy = new Policy(
      { admin: [{ type: 'unix-uid', uid: process.getuid!() }], readOnly: [] },
      parseUserDb('', ''),
    );
    server = createServer()
      .use(accessMiddleware({ policy, audit, maxWatchStreams: 2 }))
      .use(errorMiddleware(audit));
    server.add(RuleServiceDefinition, ruleService(ctl));
    const port = await server.listen('127.0.0.1:0', listenerCredentials('tcp', ServerCredentials.createInsecure()));
    address = `127.0.0.1:${port}`;
  });
  after(() => server.forceShutdown());

  it('a change whose deadline passes while it waits is not applied and is audited as such', async () => {
    const ch = createChannel(address);
    const rules = createClientFactory().use(deadlineMiddleware).create(RuleServiceDefinition, ch);
    try {
      let open!: () => void;
      dp.gate = new Promise((r) => (open = r));
      const first = rules.createRule({ rule: rule('first', 7000) });
      // A first change that fails before it reaches the gate fails the test here, not by hanging it.
      let failed: unknown;
      first.catch((e: unknown) => (failed = e ?? new Error('rejected')));
      while (dp.entered === 0) {
        if (failed !== undefined) throw failed;
        await new Promise((r) => setTimeout(r, 5));
      }
      const maps = dp.snapshot();
      const late = await rules.createRule({ rule: rule('late', 7001) }, { deadline: new Date(Date.now() + 100) }).then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.ok(late instanceof ClientError);
      assert.equal(late.code, Status.DEADLINE_EXCEEDED);
      await new Promise((r) => setTimeout(r, 50)); // the client's cancel reaches the server (same process)
      open();
      await first;
      await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(
        ctl.listRules().map((r) => r.name),
        ['first'],
        'the late change was not applied',
      );
      assert.equal(dp.snapshot().ruleMatch.length, maps.ruleMatch.length + 1, 'only the first rule reached the kernel');
      assert.deepEqual(
        { code: auditOf('late')?.code, applied: auditOf('late')?.applied },
        { code: 'CANCELLED', applied: false },
      );
      assert.deepEqual(
        { code: auditOf('first')?.code, applied: auditOf('first')?.applied },
        { code: 'OK', applied: true },
      );
    } finally {
      ch.close();
    }
  });

  it('a change that started before its deadline passed completes, and the audit says the caller had gone', async () => {
    const ch = createChannel(address);
    const rules = createClientFactory().use(deadlineMiddleware).create(RuleServiceDefinition, ch);
    try {
      let open!: () => void;
      dp.gate = new Promise((r) => (open = r));
      const entered = dp.entered;
      const during = rules.createRule({ rule: rule('during', 7002) }, { deadline: new Date(Date.now() + 300) }).then(
        () => undefined,
        (e: unknown) => e,
      );
      let settled = false;
      void during.then(() => (settled = true));
      while (dp.entered === entered) {
        if (settled) assert.fail(`the change ended before it reached the dataplane: ${String(await during)}`);
        await new Promise((r) => setTimeout(r, 5));
      }
      const err = await during;
      assert.ok(err instanceof ClientError);
      assert.equal(err.code, Status.DEADLINE_EXCEEDED);
      await new Promise((r) => setTimeout(r, 50));
      open();
      for (let i = 0; i < 100 && !auditOf('during'); i++) await new Promise((r) => setTimeout(r, 10));
      assert.ok(
        ctl.listRules().some((r) => r.name === 'during'),
        'the started change completed',
      );
      const rec = auditOf('during')!;
      assert.equal(rec.code, 'OK');
      assert.equal(rec.applied, true);
      assert.match(String(rec.callerGone), /deadline passed while the change ran/);
    } finally {
      ch.close();
    }
  });
});
