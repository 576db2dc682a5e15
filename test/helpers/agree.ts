/**
 * "Two controllers agree": an incremental part of the reconciler is checked against what a full sweep at every
 * pass gives. Two controllers over two copies of one scripted host (ModelDataplane subclasses the test writes):
 * `inc` as it runs, `full` with the sweeps named forced at every pass (the reference). The test changes both
 * hosts alike (both()), moves the clock (now), runs a pass of each (pass()) and compares what it observes.
 */
import { Controller } from '../../src/server/core/controller.js';
import type { CoreState } from '../../src/server/core/state.js';
import { silentLogger } from '../../src/server/log.js';
import type { ModelDataplane } from './model-dataplane.js';

/** A small deterministic PRNG (mulberry32), so that a failure replays from its seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A controller's state (private to it: tests read it to compare, and to force a sweep). */
export function stateOf(c: Controller): CoreState {
  return (c as unknown as { state: CoreState }).state;
}

/** The full sweeps a pass may be forced to: the time the last one ran. */
export type Sweep = 'ruleSweptAt' | 'staticMacSweptAt';

export class TwoControllers<H extends ModelDataplane> {
  /** The controllers' clock (ms). */
  now = 1_000_000;
  readonly hosts: [H, H];
  readonly inc: Controller;
  readonly full: Controller;

  /** `host()` makes each copy; `sweeps`: what the reference does at every pass. */
  constructor(
    host: () => H,
    mode: 'native' | 'generic',
    private readonly sweeps: Sweep[],
  ) {
    this.hosts = [host(), host()];
    [this.inc, this.full] = this.hosts.map(
      // A scripted host answers nothing while a change waits: no real-time wait for ARP answers (staticMacWaitMs).
      (dp) =>
        new Controller(dp, { mode, fixVethPeers: false, log: silentLogger, now: () => this.now, staticMacWaitMs: 0 }),
    ) as [Controller, Controller];
  }

  /** The same change on both hosts. */
  both(f: (h: H) => void): void {
    this.hosts.forEach(f);
  }

  /** A reconciler pass of each, the reference's sweeps forced first. */
  async pass(): Promise<void> {
    for (const s of this.sweeps) stateOf(this.full)[s] = -Infinity;
    await this.inc.resync();
    await this.full.resync();
  }
}
