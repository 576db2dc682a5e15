/**
 * Two rules with the same match (protocol, port and destination, on a shared ingress). In one request
 * (ApplyRules, the config file) that is bad input: INVALID_ARGUMENT whose field violation names the second
 * rule's match and the first rule it collides with, by index and name. Against a rule already stored
 * (CreateRule, UpdateRule) it is a conflict with state: FAILED_PRECONDITION naming both rules (rule.proto).
 * Before: both were FAILED_PRECONDITION, the in-request one without a field violation. Nothing is written.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Metadata, Status } from 'nice-grpc';

import { Controller } from '../../src/server/core/controller.js';
import { CoreError } from '../../src/server/core/errors.js';
import { decodeStatusDetails, toServerError } from '../../src/server/services/status.js';
import { BadRequest, PreconditionFailure } from '../../src/gen/google/rpc/error_details.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';
import { twoBackends, udpSpec } from '../helpers/rule-spec.js';

/** The error `p` rejects with, as the services send it: code, message and the details' violations. */
async function refusal(p: Promise<unknown>) {
  const e = await p.then(
    () => assert.fail('expected a refusal'),
    (x: unknown) => x,
  );
  assert.ok(e instanceof CoreError, String(e));
  const { error, details } = toServerError(e);
  const md = new Metadata();
  if (details) md.set('grpc-status-details-bin', details);
  const st = decodeStatusDetails(md);
  const bad = (st?.details ?? [])
    .filter((d) => d.typeUrl.endsWith('/google.rpc.BadRequest'))
    .flatMap((d) => BadRequest.decode(d.value).fieldViolations);
  const pre = (st?.details ?? [])
    .filter((d) => d.typeUrl.endsWith('/google.rpc.PreconditionFailure'))
    .flatMap((d) => PreconditionFailure.decode(d.value).violations);
  return { code: error.code, message: error.details, bad, pre };
}

const controller = (dp: ModelDataplane) => new Controller(dp, { mode: 'generic', fixVethPeers: false });

const a = udpSpec('a', 9100, twoBackends(9100));

describe('two rules with the same match', () => {
  it('in one ApplyRules: INVALID_ARGUMENT on rules[1].match naming rules[0] ("a"); nothing applied', async () => {
    const dp = new ModelDataplane();
    const c = controller(dp);
    const before = dp.snapshot();
    const r = await refusal(c.applyRules([a, udpSpec('b', 9100, twoBackends(9101))], false));
    assert.equal(r.code, Status.INVALID_ARGUMENT, r.message);
    assert.deepEqual(
      r.bad.map((v) => [v.field, v.description]),
      [['rules[1].match', 'rule "b" has the same match as rules[0] ("a"): UDP port 9100 on in0']],
    );
    assert.equal(r.message, 'rules[1].match: rule "b" has the same match as rules[0] ("a"): UDP port 9100 on in0');
    assert.deepEqual(dp.snapshot(), before, 'nothing written');
    assert.deepEqual(c.listRules(), []);
    // validate_only says the same.
    const dry = await refusal(c.applyRules([a, udpSpec('b', 9100, twoBackends(9101))], true));
    assert.equal(dry.code, Status.INVALID_ARGUMENT);
    assert.equal(dry.message, r.message);
  });

  it("the first rule stored already (unchanged by the request): still the request's own collision", async () => {
    const dp = new ModelDataplane();
    const c = controller(dp);
    await c.applyRules([a], false);
    const r = await refusal(c.applyRules([a, udpSpec('b', 9100, twoBackends(9101))], false));
    assert.equal(r.code, Status.INVALID_ARGUMENT, r.message);
    assert.deepEqual(
      r.bad.map((v) => v.field),
      ['rules[1].match'],
    );
  });

  it('a destination, two shared ingresses, different source prefixes: said so', async () => {
    const dp = new ModelDataplane();
    const c = controller(dp);
    const both = { destination: '192.0.2.1', ingressInterfaces: ['in0', 'in1'] };
    const r = await refusal(
      c.applyRules(
        [
          udpSpec('x', 7000, twoBackends(7000)),
          udpSpec('a', 9100, twoBackends(9100), { ...both, sourcePrefixes: ['198.51.100.0/24'] }),
          udpSpec('b', 9100, twoBackends(9101), { ...both, sourcePrefixes: ['203.0.113.0/24'] }),
        ],
        false,
      ),
    );
    assert.equal(r.code, Status.INVALID_ARGUMENT, r.message);
    assert.deepEqual(
      r.bad.map((v) => [v.field, v.description]),
      [
        [
          'rules[2].match',
          'rule "b" has the same protocol, port and destination as rules[1] ("a"): UDP port 9100 to 192.0.2.1 on in0 and in1 ' +
            '(source prefixes do not tell two rules apart: one rule per protocol, port, destination and ingress)',
        ],
      ],
    );
  });

  it('another port, destination or ingress: no collision', async () => {
    const dp = new ModelDataplane();
    const c = controller(dp);
    await c.applyRules(
      [
        a,
        udpSpec('b', 9101, twoBackends(9101)),
        udpSpec('c', 9100, twoBackends(9102), { destination: '192.0.2.1' }),
        udpSpec('d', 9100, twoBackends(9103), { ingressInterfaces: ['in1'] }),
      ],
      false,
    );
    assert.equal(c.listRules().length, 4);
  });

  it('CreateRule and UpdateRule against a stored rule: FAILED_PRECONDITION on rule.match naming both', async () => {
    const dp = new ModelDataplane();
    const c = controller(dp);
    await c.applyRules([a, udpSpec('b', 9101, twoBackends(9101))], false);
    const before = dp.snapshot();
    const created = await refusal(c.createRule(udpSpec('n', 9100, twoBackends(9102))));
    assert.equal(created.code, Status.FAILED_PRECONDITION, created.message);
    assert.equal(created.message, 'rule.match: rule "n" and rule "a" both match UDP port 9100 on in0');
    assert.deepEqual(
      created.pre.map((v) => [v.subject, v.description]),
      [['rule.match', 'rule "n" and rule "a" both match UDP port 9100 on in0']],
    );
    const updated = await refusal(c.updateRule(udpSpec('b', 9100, twoBackends(9101)), 0));
    assert.equal(updated.code, Status.FAILED_PRECONDITION, updated.message);
    assert.equal(updated.message, 'rule.match: rule "b" and rule "a" both match UDP port 9100 on in0');
    assert.deepEqual(dp.snapshot(), before, 'nothing written');
  });

  it('the config file: the same refusal, naming both rules', async () => {
    const dp = new ModelDataplane();
    const c = controller(dp);
    const r = await refusal(c.applyConfig({ rules: [a, udpSpec('b', 9100, twoBackends(9101))], links: [] }));
    assert.equal(r.code, Status.INVALID_ARGUMENT);
    assert.equal(r.message, 'rules[1].match: rule "b" has the same match as rules[0] ("a"): UDP port 9100 on in0');
    const checked = await c.checkConfig({ rules: [a, udpSpec('b', 9100, twoBackends(9101))], links: [] });
    assert.equal(checked.refusal, r.message);
  });
});
