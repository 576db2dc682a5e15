/**
 * The client library: addresses, deadlines, and retries only for reads the
 * protos mark NO_SIDE_EFFECTS. Against an in-process server on 127.0.0.1:0.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { createServer, ServerError, Status, type Server } from 'nice-grpc';

import { channelAddress, createXdpctlClient } from '../../src/client/index.js';
import { RuleServiceDefinition, type RuleServiceImplementation } from '../../src/gen/xdpctl/v1/rule.js';

describe('client library', () => {
  let server: Server;
  let port = 0;
  const calls = { getRule: 0, createRule: 0 };
  const flaky: Partial<RuleServiceImplementation> = {
    async getRule(req) {
      if (++calls.getRule < 3) throw new ServerError(Status.UNAVAILABLE, 'try again');
      return {
        rule: { name: req.name, backends: [], ingressInterfaces: [], labels: {}, generation: 7n, udpChecksum: 0 },
      };
    },
    async createRule() {
      calls.createRule++;
      throw new ServerError(Status.UNAVAILABLE, 'not now');
    },
    async listRules() {
      await new Promise((r) => setTimeout(r, 2000));
      return { rules: [], nextPageToken: '' };
    },
  };

  before(async () => {
    server = createServer();
    const unimplemented = async () => {
      throw new ServerError(Status.UNIMPLEMENTED, 'not in this test');
    };
    const impl = Object.fromEntries(
      Object.keys(RuleServiceDefinition.methods).map((m) => [m, flaky[m as keyof typeof flaky] ?? unimplemented]),
    );
    server.add(RuleServiceDefinition, impl as unknown as RuleServiceImplementation);
    port = await server.listen('127.0.0.1:0');
  });
  after(() => server.forceShutdown());

  it('retries idempotent reads and never mutations', async () => {
    const c = createXdpctlClient({ address: `127.0.0.1:${port}` });
    try {
      const r = await c.rules.getRule({ name: 'web' });
      assert.equal(r.rule!.generation, 7n);
      assert.equal(calls.getRule, 3, 'two retries');
      await assert.rejects(c.rules.createRule({}), /UNAVAILABLE/);
      assert.equal(calls.createRule, 1, 'no retry of a mutation');
    } finally {
      c.close();
    }
  });

  it('honours per-call deadlines', async () => {
    const c = createXdpctlClient({ address: `127.0.0.1:${port}` });
    try {
      const t0 = Date.now();
      await assert.rejects(
        c.rules.listRules({}, { deadline: new Date(Date.now() + 200) }),
        (e: { code: number }) => e.code === Status.DEADLINE_EXCEEDED,
      );
      assert.ok(Date.now() - t0 < 1500);
    } finally {
      c.close();
    }
  });

  it('takes unix:/path addresses', () => {
    assert.equal(channelAddress('unix:/run/xdpctl/xdpctl.sock'), 'unix:///run/xdpctl/xdpctl.sock');
    assert.equal(channelAddress('unix:///x.sock'), 'unix:///x.sock');
    assert.equal(channelAddress('10.0.0.1:9091'), '10.0.0.1:9091');
  });
});
