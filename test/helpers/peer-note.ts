/**
 * The check shared by the tests of what runs on a backend egress's veth peer (backend-peer-tc, backend-peer-nft):
 * something that may drop what is redirected to the backend is put on the peer's side (eth0 in the backend's
 * namespace); the rule must say it, stay DEGRADED while it is there and become ACTIVE again when it goes.
 */
import assert from 'node:assert/strict';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { until } from './env.js';
import { cond, esc, type Lab } from './lab.js';
import { type Host } from './topology.js';

const { NOT_SERVING, SERVING } = HealthCheckResponse_ServingStatus;

export interface PeerNoteCase {
  /** The rule (one backend, `b`) and its port. */
  rule: string;
  port: number;
  /** What the note says the peer has (after "veth peer eth0 in netns N "), read once `add` is done. */
  words: () => string;
  /** BackendsReceiving's reason while it is there (`PeerTcFilter`, `PeerNftChain`). */
  reason: string;
  /** Whether it drops what is sent: 0 of 20 datagrams arrive while it is there, else 20 of 20. */
  drops: boolean;
  add: () => Promise<void> | void;
  remove: () => Promise<void> | void;
  /** A pattern no line of the daemon may match (what is there throughout and must not be said). */
  neverSaid?: RegExp;
}

/**
 * With `c.add` done: said on the rule, its backend and BackendsReceiving (Unknown, `c.reason`) as
 * "veth peer eth0 in netns N <words>: delivery past it cannot be verified", the rule DEGRADED (its backend kept in
 * its table), Ready False, xdpctl.datapath NOT_SERVING; after `c.remove` (done also when the check fails) ACTIVE,
 * AllReceiving, SERVING, 20 of 20 delivered, one log line when it appeared and one when it went.
 */
export async function saidWhileOnPeer(lab: Lab, b: Host, c: PeerNoteCase): Promise<void> {
  let removed = false;
  try {
    await c.add();
    const note = `veth peer eth0 in netns ${b.netns} ${c.words()}: delivery past it cannot be verified`;
    const warning = new RegExp(`^backend ${esc(b.ip!)} on ${esc(b.hostIf)}: ${esc(note)}$`);
    await until(
      async () => `the warning names what is on the peer: ${(await lab.status(c.rule)).warnings.join(' | ')}`,
      async () => (await lab.status(c.rule)).warnings.some((w) => warning.test(w)),
      15_000,
    );
    const s = await lab.status(c.rule);
    assert.match(s.backendStatus[0].message, new RegExp(esc(note)), JSON.stringify(s.backendStatus[0]));
    assert.equal(s.state, RuleState.RULE_STATE_DEGRADED, JSON.stringify(s));
    assert.equal(s.backendStatus[0].active, true, 'kept in its table: what it does is not known');
    assert.match(s.message, new RegExp(esc(note)), s.message);
    const br = cond(s, 'BackendsReceiving');
    assert.deepEqual([br.status, br.reason], [ConditionStatus.CONDITION_STATUS_UNKNOWN, c.reason]);
    assert.equal(br.message, `${b.ip}@${b.hostIf}: ${note}`);
    assert.equal(cond(s, 'Ready').status, ConditionStatus.CONDITION_STATUS_FALSE);
    // A rule not ACTIVE is a problem of the datapath (before: SERVING while the peer dropped everything).
    assert.equal(await lab.health(), NOT_SERVING);
    // What the warning is about: something that drops what is redirected to the backend (or that does not: the
    // daemon cannot tell them apart).
    const r = await lab.send(c.port, [b], 20, 4);
    assert.equal(r.got[0], c.drops ? 0 : 20, JSON.stringify(r));
    await c.remove();
    removed = true;
    await until(
      'the warning goes with it',
      async () => !JSON.stringify(await lab.status(c.rule)).includes(note),
      15_000,
    );
    const s2 = await lab.status(c.rule);
    assert.equal(s2.state, RuleState.RULE_STATE_ACTIVE, JSON.stringify(s2));
    const br2 = cond(s2, 'BackendsReceiving');
    assert.deepEqual([br2.status, br2.reason], [ConditionStatus.CONDITION_STATUS_TRUE, 'AllReceiving']);
    assert.equal(await lab.health(), SERVING);
    assert.equal(lab.count(new RegExp(esc(note))), 2, 'one line when it appears, one when it goes');
    if (c.neverSaid) assert.equal(lab.count(c.neverSaid), 0, `never said: ${c.neverSaid}`);
  } finally {
    if (!removed) await c.remove();
  }
  const r = await lab.send(c.port, [b], 20, 4);
  assert.equal(r.got[0], 20, JSON.stringify(r));
}
