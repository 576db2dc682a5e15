/**
 * A device deleted and made again with the same name and ifindex (core/device-identity.ts remadeDevices,
 * remadeSinceRead): judged from the kernel's deletion reports, which the dataplane hands over in order with its
 * reads (a report taken by a read came before it), never from a wait. Counters are evidence only where reports
 * were lost since the last read, and then said as inferred; lost reports with no count gone back cannot be told.
 * A modelled kernel: a device per name, a queue of reports that a read takes up to itself.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { remadeDevices, remadeSinceRead } from '../../src/server/core/device-identity.js';
import type { Dataplane } from '../../src/server/core/dataplane.js';
import type { ExecContext } from '../../src/server/core/execute.js';
import { CoreState } from '../../src/server/core/state.js';
import { MODEL_CAPACITY } from '../helpers/model-dataplane.js';

class Kernel {
  readonly devs = new Map<string, { ifindex: number; packets: bigint; carrierChanges: number }>();
  /** Reports made, not yet read; those a read took, not yet handed over. */
  private queue: { ifindex: number; name: string }[] = [];
  private taken: { ifindex: number; name: string }[] = [];
  lost = false;
  add(name: string, ifindex: number, packets = 0n): void {
    this.devs.set(name, { ifindex, packets, carrierChanges: 1 });
  }
  del(name: string): void {
    const d = this.devs.get(name)!;
    this.devs.delete(name);
    this.queue.push({ ifindex: d.ifindex, name });
  }
  readonly dp = {
    deviceCounters: (name: string) => {
      this.taken.push(...this.queue);
      this.queue = [];
      const d = this.devs.get(name);
      return d && { ...d };
    },
    linkDeletions: () => {
      const out = { deleted: this.taken, lost: this.lost };
      this.taken = [];
      this.lost = false;
      return out;
    },
  } as unknown as Dataplane;
}

const context = (k: Kernel): ExecContext =>
  ({ dp: k.dp, state: new CoreState(MODEL_CAPACITY), mono: () => 0 }) as unknown as ExecContext;

describe('a device made again with the same name and ifindex', () => {
  it('is observed from a deletion reported after the last read, not before it, whatever the counters', () => {
    const k = new Kernel();
    const ctx = context(k);
    k.add('a', 7, 100n);
    k.del('a'); // before the first read: not this device's
    k.add('a', 7, 100n);
    assert.deepEqual([...remadeDevices(ctx, ['a'])], []);
    assert.deepEqual([...remadeDevices(ctx, ['a'])], [], 'nothing since');
    k.del('a');
    k.add('a', 7, 5000n); // more traffic than the old one had: the counters would not show it
    const r = remadeDevices(ctx, ['a']);
    assert.match(r.get('a') ?? '', /^observed: the kernel reported the device on ifindex 7 \(a\) deleted/);
    assert.deepEqual([...remadeDevices(ctx, ['a'])], [], 'said once');
  });

  it('made again between a pass read and the read that finds our program gone: found at once, recorded', () => {
    const k = new Kernel();
    const ctx = context(k);
    k.add('a', 7);
    remadeDevices(ctx, ['a']);
    k.del('a');
    k.add('a', 7);
    assert.match(remadeSinceRead(ctx, 'a', 7)?.remade ?? '', /^observed: /);
    assert.equal(remadeSinceRead(ctx, 'a', 7), undefined, 'the new device is the one recorded now');
    assert.deepEqual([...remadeDevices(ctx, ['a'])], [], 'not said again by the next pass');
  });

  it('missing at a pass in between: still the deletion after the last read of it', () => {
    const k = new Kernel();
    const ctx = context(k);
    k.add('a', 7);
    remadeDevices(ctx, ['a']);
    k.del('a');
    assert.deepEqual([...remadeDevices(ctx, ['a'])], []);
    k.add('a', 7);
    assert.match(remadeDevices(ctx, ['a']).get('a') ?? '', /^observed: /);
  });

  it('reports lost: inferred from a count that went back, else cannot be told (never a detach said as known)', () => {
    const k = new Kernel();
    const ctx = context(k);
    k.add('a', 7, 100n);
    k.add('b', 8, 100n);
    remadeDevices(ctx, ['a', 'b']);
    k.lost = true;
    k.add('a', 7, 3n);
    k.add('b', 8, 200n);
    const unknown = new Map<string, string>();
    const r = remadeDevices(ctx, ['a', 'b'], undefined, unknown);
    assert.match(
      r.get('a') ?? '',
      /^inferred \(reports of deleted devices were lost meanwhile\): its packet count went from 100 to 3/,
    );
    assert.deepEqual([...unknown.keys()], ['b']);
    assert.match(unknown.get('b')!, /cannot be told/);
    k.lost = true;
    remadeDevices(ctx, ['a']);
    // The read after a loss is recorded after it: what follows is observed again.
    assert.equal(remadeSinceRead(ctx, 'a', 7), undefined);
  });
});
