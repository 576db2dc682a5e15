/**
 * A condition's lastTransitionTime is when the transition was observed: the write that made it, or the
 * reconciler pass that saw it; not the first read after it (a reviewer saw every time equal to the read
 * that followed the change, and after a restart equal to the daemon's start). It is stable across reads,
 * a transition nobody read in between is still recorded, a deleted and re-created rule starts anew, and
 * after a restart a condition that has not changed says its time is unknown (undefined) rather than
 * claiming the restart. A Controller over the model dataplane with a clock the test sets.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Controller } from '../../src/server/core/controller.js';
import type { Condition, RuleSpec } from '../../src/server/core/model.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';

const spec = (port = 5000): RuleSpec => ({
  name: 'web',
  protocol: 'udp',
  port,
  destination: '',
  sourcePrefixes: [],
  ingressInterfaces: ['in0'],
  backends: [{ ip: '10.0.0.1', mac: '02:00:00:00:01:01', interface: 'b0', weight: 1 }],
  udpChecksum: 'update',
  labels: {},
});

function rig(dp = new ModelDataplane(), t0 = 1_000_000) {
  // The backend's host: b0's veth peer has its static MAC (confirmed; one nothing confirms is DEGRADED).
  dp.vethPeers.set('b0', { name: 'b0p', mac: '02:00:00:00:01:01', takesOthers: false });
  const clock = { t: t0 };
  const c = new Controller(dp, { mode: 'generic', fixVethPeers: false, now: () => clock.t });
  const cond = (type: string): Condition => c.getRule('web').status.conditions!.find((x) => x.type === type)!;
  return { c, dp, clock, cond };
}

describe('condition transition times are the time of the observation', () => {
  it('the write that made it, stable across later reads', async () => {
    const { c, clock, cond } = rig();
    clock.t = 1_000;
    await c.createRule(spec());
    clock.t = 5_000;
    await c.resync(); // a pass that finds everything as written changes no time
    clock.t = 9_000;
    assert.deepEqual([cond('Ready').status, cond('Ready').lastTransitionTime], ['True', 1_000]);
    assert.equal(cond('ProgramAttached').lastTransitionTime, 1_000);
    clock.t = 12_000;
    assert.equal(cond('Ready').lastTransitionTime, 1_000, 'stable across reads');
    const ifc = c.listInterfaces().find((i) => i.name === 'in0')!.conditions[0];
    assert.deepEqual([ifc.type, ifc.status, ifc.lastTransitionTime], ['ProgramAttached', 'True', 1_000]);
  });

  it('the reconciler pass that saw it, not the read after it; a transition nobody read is recorded', async () => {
    const { c, dp, clock, cond } = rig();
    clock.t = 1_000;
    await c.createRule(spec());
    // The ingress disappears; the pass at 2 000 sees it; the first read is at 9 000.
    const in0 = dp.ifs.get('in0')!;
    dp.ifs.delete('in0');
    clock.t = 2_000;
    await c.resync();
    clock.t = 9_000;
    assert.deepEqual([cond('Ready').status, cond('Ready').reason], ['False', 'Inactive']);
    assert.equal(cond('Ready').lastTransitionTime, 2_000, 'the pass that observed it, not the read (9 000)');
    assert.equal(cond('ProgramAttached').lastTransitionTime, 2_000);
    // Back at 10 000, gone again at 11 000, back at 12 000: no read in between; each pass records its time.
    for (const [t, present] of [
      [10_000, true],
      [11_000, false],
      [12_000, true],
    ] as const) {
      if (present) dp.ifs.set('in0', in0);
      else dp.ifs.delete('in0');
      clock.t = t;
      await c.resync();
    }
    clock.t = 20_000;
    assert.deepEqual([cond('Ready').status, cond('Ready').lastTransitionTime], ['True', 12_000]);
  });

  it('a rule deleted and created again starts anew; a link carries the time of its Connect', async () => {
    const { c, clock, cond } = rig();
    clock.t = 1_000;
    await c.createRule(spec());
    clock.t = 2_000;
    await c.deleteRule('web', 0);
    clock.t = 3_000;
    await c.applyRules([spec()], false); // through ApplyRules: its reply has no conditions
    clock.t = 8_000;
    assert.equal(cond('Ready').lastTransitionTime, 3_000);
    clock.t = 4_000;
    await c.connect({ a: 'in1', b: 'b1', direction: 'both' });
    clock.t = 8_000;
    const active = c.listLinks()[0].conditions.find((x) => x.type === 'Active')!;
    assert.deepEqual([active.status, active.lastTransitionTime], ['True', 4_000]);
  });

  it('after a restart: unchanged conditions have an unknown time (not the restart); a later change has its own', async () => {
    const first = rig();
    first.clock.t = 1_000;
    await first.c.createRule(spec());
    await first.c.connect({ a: 'in1', b: 'b1', direction: 'both' });
    const stored = first.c.storedState();
    // The next process: same maps, restored at 50 000, its first pass at 51 000, read at 60 000.
    const { c, dp, clock, cond } = rig(ModelDataplane.adopt(first.dp), 50_000);
    await c.restore(stored);
    clock.t = 51_000;
    await c.resync();
    clock.t = 60_000;
    assert.deepEqual([cond('Ready').status, cond('Ready').lastTransitionTime], ['True', undefined]);
    assert.equal(c.listLinks()[0].conditions[0].lastTransitionTime, undefined, 'the link too');
    const ifc = c.listInterfaces().find((i) => i.name === 'in0')!.conditions[0];
    assert.equal(ifc.lastTransitionTime, undefined, 'and its ingress');
    // A change after the first pass is observed: its time.
    dp.ifs.delete('in0');
    clock.t = 61_000;
    await c.resync();
    clock.t = 70_000;
    assert.deepEqual([cond('Ready').status, cond('Ready').lastTransitionTime], ['False', 61_000]);
    assert.equal(cond('FramesFit').lastTransitionTime, undefined, 'an unchanged one stays unknown');
  });
});
