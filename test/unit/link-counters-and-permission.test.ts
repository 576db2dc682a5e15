/**
 * Link counters are released with their link: an xc_stats index (one per
 * linked ingress interface, named in its if_flags entry, a table of --links
 * entries) is given back on disconnect and when a connect is undone, so
 * connecting more distinct interfaces over time than the table holds never
 * fails (it used to: RESOURCE_EXHAUSTED after 1 024). And the daemon's own EPERM/EACCES from the kernel is
 * FAILED_PRECONDITION naming the capability it lacks, never
 * PERMISSION_DENIED (which says the caller was refused).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Status } from 'nice-grpc';

import { Controller } from '../../src/server/core/controller.js';
import { CoreError } from '../../src/server/core/errors.js';
import { IF_F_LINK, IF_LINK_SHIFT } from '../../src/server/dataplane/codec.js';
import { KernelError } from '../../src/server/dataplane/errors.js';
import { STATUS_BY_KIND, toServerError } from '../../src/server/services/status.js';
import { MODEL_CAPACITY, ModelDataplane } from '../helpers/model-dataplane.js';

/** The xc_stats indexes the ingresses' if_flags entries name (the link counters in use). */
function linkIndexes(dp: ModelDataplane): number[] {
  return dp
    .snapshot()
    .ifFlags.map((e) => Buffer.from(e.split('=')[1], 'hex').readUInt32LE(0))
    .filter((f) => f & IF_F_LINK)
    .map((f) => f >>> IF_LINK_SHIFT);
}

describe('link counters are released with their link', () => {
  it('connects 4x as many distinct ingress interfaces over time as xc_stats holds', async () => {
    const names = Array.from({ length: 4 * MODEL_CAPACITY.links }, (_, i) => `if${i}`);
    const dp = new ModelDataplane(MODEL_CAPACITY, [...names, 'peer']);
    const c = new Controller(dp, { mode: 'generic', fixVethPeers: false });
    for (const n of names) {
      await c.connect({ a: n, b: 'peer', direction: 'a-to-b' });
      assert.equal(linkIndexes(dp).length, 1, `${n}: one counters index while linked`);
      await c.disconnect(n, 'peer');
      assert.deepEqual(linkIndexes(dp), [], `${n}: released with the link`);
      assert.deepEqual(dp.snapshot().xcEgress, [], `${n}: its egress entry cleared`);
    }
  });

  it('an undone connect leaves no counters entry', async () => {
    const dp = new ModelDataplane(MODEL_CAPACITY, ['a', 'b']);
    const c = new Controller(dp, { mode: 'generic', fixVethPeers: false });
    const before = dp.snapshot();
    dp.faults.failAt = dp.faults.writes + 4; // the devmap entry, after the counters, the egress and the flag
    await assert.rejects(c.connect({ a: 'a', b: 'b', direction: 'both' }));
    assert.deepEqual(dp.snapshot(), before);
  });

  it('a counters entry left by a failed release survives a connect undone at any write', async () => {
    const dp = new ModelDataplane(MODEL_CAPACITY, ['a', 'b']);
    const c = new Controller(dp, { mode: 'generic', fixVethPeers: false });
    await c.connect({ a: 'a', b: 'b', direction: 'a-to-b' });
    // A disconnect whose last write, the release of the counters, fails: the
    // change stands (it is durable) and the entry stays. The first fault
    // position at which the disconnect succeeds is that write.
    for (let n = 1; ; n++) {
      assert.ok(n < 20, 'the disconnect succeeds once the fault is past its writes');
      dp.faults.failAt = dp.faults.writes + n;
      const ok = await c.disconnect('a', 'b').then(
        () => true,
        () => false,
      );
      dp.faults.failAt = 0;
      if (ok) break;
    }
    assert.equal(linkIndexes(dp).length, 1, 'the counters index whose release failed');
    const before = dp.snapshot();
    // A connect of the same ingress, failed at each of its writes in turn:
    // the undo takes back what it wrote, not the entry that was there.
    for (let n = 1; ; n++) {
      assert.ok(n < 20, 'the connect succeeds once the fault is past its writes');
      dp.faults.failAt = dp.faults.writes + n;
      const ok = await c.connect({ a: 'a', b: 'b', direction: 'a-to-b' }).then(
        () => true,
        () => false,
      );
      dp.faults.failAt = 0;
      if (ok) break;
      assert.deepEqual(dp.snapshot(), before, `fault at write ${n} of the connect: every map as before`);
    }
  });
});

describe("the daemon's own EPERM/EACCES", () => {
  const cases: [string, number, RegExp][] = [
    ['attach xdp to veth3', 1, /CAP_NET_ADMIN/],
    ['update map rule_cfg', 1, /CAP_BPF/],
    ['load program xdpctl_main', 13, /CAP_BPF/],
  ];
  for (const [op, errno, cap] of cases) {
    it(`${op}: ${errno === 1 ? 'EPERM' : 'EACCES'} is FAILED_PRECONDITION naming ${cap.source}`, () => {
      const { error } = toServerError(new KernelError(op, errno));
      assert.equal(error.code, Status.FAILED_PRECONDITION);
      assert.match(error.details, new RegExp(`^${op}: .* \\(E(PERM|ACCES)\\): xdpctld lacks `));
      assert.match(error.details, cap);
    });
  }
  it('no error kind maps to PERMISSION_DENIED (only the access layer refuses callers)', () => {
    assert.ok(!Object.values(STATUS_BY_KIND).includes(Status.PERMISSION_DENIED));
  });
  it('store and cancellation kinds', () => {
    assert.equal(toServerError(new CoreError('unavailable', 'x')).error.code, Status.UNAVAILABLE);
    assert.equal(toServerError(new CoreError('cancelled', 'x')).error.code, Status.CANCELLED);
  });
});
