/**
 * A rule rewritten while its ingress is missing (restore and the reconciler plan leniently: no match entry
 * for a missing ingress) has the status the kernel gives it from the write on: INACTIVE, naming the
 * interface. Before, the write said ACTIVE ("forwarding to N backend(s)") until the end of the reconciler's
 * pass lowered it, and a read in between (the first answer after a restart, on a loaded machine) got ACTIVE
 * for a rule whose only ingress did not exist.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Controller } from '../../src/server/core/controller.js';
import type { RuleSpec } from '../../src/server/core/model.js';
import type { Transactions } from '../../src/server/core/restore.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';

const spec = (ingress: string[]): RuleSpec => ({
  name: 'web',
  protocol: 'udp',
  port: 5000,
  destination: '',
  sourcePrefixes: [],
  ingressInterfaces: ingress,
  backends: [{ ip: '10.0.0.1', mac: '02:00:00:00:01:01', interface: 'b0', weight: 1 }],
  udpChecksum: 'update',
  labels: {},
});

/** The veth peer of b0 in our namespace, with the backend's static MAC (its host holds the address). */
const PEER = { name: 'b0p', mac: '02:00:00:00:01:01', takesOthers: false };

describe('the written status of a rule whose ingress is missing', () => {
  for (const [what, ingress, state, lowered] of [
    ['its only ingress', ['in0'], 'inactive', /^not receiving on any ingress interface: interface in0 does not exist$/],
    [
      'one of two',
      ['in0', 'in1'],
      'degraded',
      /not receiving on 1 of 2 ingress interface\(s\): interface in0 does not exist/,
    ],
  ] as const) {
    it(`${what} missing: ${state} from the write on`, async () => {
      const dp = new ModelDataplane();
      dp.vethPeers.set('b0', PEER); // the backend's host confirms its static MAC
      const c = new Controller(dp, { mode: 'native', fixVethPeers: true });
      await c.applyRules([spec([...ingress])], false);
      assert.equal(c.getRule('web').status.state, 'active');
      dp.ifs.delete('in0');
      // The rewrite restore and the reconciler make (lenient), without the rest of the pass.
      const tx = (c as unknown as { tx: Transactions }).tx;
      await tx.applyRuleOps([{ name: 'web', next: spec([...ingress]), lenient: true }], true);
      const st = c.getRule('web').status;
      assert.equal(st.state, state, st.message);
      assert.match(st.message, lowered);
      assert.ok(st.warnings.includes('interface in0 does not exist'));
      // And the pass that follows agrees (nothing to correct, nothing logged twice).
      await c.resync();
      assert.equal(c.getRule('web').status.state, state);
      assert.match(c.getRule('web').status.message, lowered);
    });
  }
});

/** A model whose interfaces can be down or without carrier (the reconciler and a write read linkState). */
class LinkModel extends ModelDataplane {
  readonly links = new Map<string, { up: boolean; carrier: boolean }>();
  override linkState(name: string) {
    const l = this.links.get(name);
    return this.ifs.has(name) ? { up: l?.up ?? true, carrier: l?.carrier ?? true, mtu: 1500 } : undefined;
  }
}

describe('a change replies with the status a pass gives (one judgement, rule-status judgeRule)', () => {
  for (const [what, link, why] of [
    ['down', { up: false, carrier: false }, /^not receiving on any ingress interface: ingress in0 is down/],
    [
      'without carrier',
      { up: true, carrier: false },
      /^not receiving on any ingress interface: ingress in0 has no carrier/,
    ],
  ] as const) {
    it(`an ingress ${what}: CreateRule and UpdateRule say INACTIVE, as the pass after them`, async () => {
      const dp = new LinkModel();
      dp.vethPeers.set('b0', PEER); // the backend's host confirms its static MAC
      dp.links.set('in0', link);
      const c = new Controller(dp, { mode: 'native', fixVethPeers: true });
      const created = await c.createRule(spec(['in0']));
      assert.equal(created.status.state, 'inactive', created.status.message);
      assert.match(created.status.message, why);
      const cond = created.status.conditions!.find((x) => x.type === 'IngressReceiving')!;
      assert.deepEqual([cond.status, cond.reason], ['False', 'IngressDown']);
      const strip = (s: typeof created.status) => ({
        ...s,
        conditions: s.conditions!.map((x) => ({ ...x, lastTransitionTime: 0 })),
      });
      await c.resync();
      assert.deepEqual(strip(c.getRule('web').status), strip(created.status), 'the pass judges the same');
      const updated = await c.updateRule({ ...spec(['in0']), port: 5001 }, created.generation);
      assert.equal(updated.status.state, 'inactive');
      assert.match(updated.status.message, why);
      // Up with carrier again: ACTIVE in the next reply.
      dp.links.delete('in0');
      const again = await c.updateRule({ ...spec(['in0']), port: 5002 }, updated.generation);
      assert.equal(again.status.state, 'active', again.status.message);
    });
  }
});
