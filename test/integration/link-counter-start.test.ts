/**
 * Where a link direction's counter series starts, and what it is (twentieth review, MED-2), on a real daemon with
 * real packets. Before, on fresh veths and fresh maps: a link connected at T read FOUND (counted before this
 * daemon started, as `xdpctl watch` then said) with start_time = the first read, seconds after T; disconnected and
 * connected again, ZEROED with start_time = the disconnect (before the link existed); an end deleted and made
 * again while the link stayed desired, one direction ZEROED at the deletion, the other FOUND with the packets of
 * the old device. Now:
 *  - connected: both directions ZEROED, start_time the connect's (between the call and its reply);
 *  - disconnected and connected again: ZEROED at the new connect;
 *  - an end deleted and made again: both directions ZEROED when the daemon wrote them anew for the new device;
 *  - across a daemon restart (counters kept in the pins): FOUND, at the new daemon's first read, the counts kept.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { CounterStartKind, type LinkCounters } from '../../src/gen/xdpctl/v1/counters.js';
import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { kernelOnly, sleep, until } from '../helpers/env.js';
import { Lab } from '../helpers/lab.js';
import type { Host } from '../helpers/topology.js';

const { COUNTER_START_KIND_ZEROED: ZEROED, COUNTER_START_KIND_FOUND: FOUND } = CounterStartKind;
/** The daemon's wall clock against the test's (one machine; ms rounding). */
const SLACK = 50;

describe("a link direction's counters start when the daemon zeroed them (ZEROED), or as found", kernelOnly(), () => {
  const lab = new Lab();
  let h1: Host, h2: Host;
  before(async () => {
    ({ h1, h2 } = lab.addHosts({ h1: '198.18.45.1/24', h2: '198.18.45.2/24' }));
    await lab.start(['--log-level', 'info']);
  });
  after(() => lab.destroy());

  const links = async (): Promise<LinkCounters[]> => (await lab.c.counters.getCounters({})).counters!.links;
  const show = (ls: LinkCounters[]) =>
    JSON.stringify(
      ls.map((l) => ({
        dir: `${l.fromInterface}>${l.toInterface}`,
        packets: String(l.packets),
        kind: CounterStartKind[l.startKind],
        start: l.startTime?.toISOString(),
      })),
    );
  /** Connect h1 - h2 (both ways): the wall-clock window of the call. */
  const connect = async () => {
    const t0 = Date.now();
    await lab.c.links.connect({
      link: { a: h1.hostIf, b: h2.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH, status: undefined },
    });
    return [t0, Date.now()] as const;
  };
  /** Both directions' series ZEROED, started within [t0, t1] (read at least a second after t1, after traffic). */
  const zeroedWithin = async (t0: number, t1: number, what: string) => {
    await until('h1 reaches h2 through the link', () => lab.topo.ping('h1', h2.ip!, 1), 15_000);
    await sleep(Math.max(0, t1 + 1000 - Date.now())); // a first read now is well after the window
    const ls = await links();
    assert.equal(ls.length, 2, show(ls));
    for (const l of ls) {
      assert.ok(l.packets > 0n, `${what}: traffic counted: ${show(ls)}`);
      assert.equal(l.startKind, ZEROED, `${what}: zeroed by the daemon, counted from 0: ${show(ls)}`);
      const s = l.startTime!.getTime();
      assert.ok(s >= t0 - SLACK && s <= t1 + SLACK, `${what}: started in [${t0}, ${t1}]: ${show(ls)}`);
    }
  };

  it('connected on fresh maps: ZEROED at the connect', async () => {
    const [t0, t1] = await connect();
    await zeroedWithin(t0, t1, 'connected');
  });

  it('disconnected and connected again: ZEROED at the new connect, not at the disconnect', async () => {
    await lab.c.links.disconnect({ a: h1.hostIf, b: h2.hostIf });
    await sleep(1000);
    const [t0, t1] = await connect();
    await zeroedWithin(t0, t1, 're-connected');
  });

  it('an end deleted and made again while the link stays: ZEROED when written anew', async () => {
    lab.topo.unplug('h2');
    await until('the direction out of h2 gone from the counters', async () => (await links()).length === 0, 15_000);
    await sleep(500);
    const t0 = Date.now();
    lab.topo.replug('h2', '198.18.45.2/24');
    await until('both directions counted again', async () => (await links()).length === 2, 15_000);
    const t1 = Date.now();
    await zeroedWithin(t0, t1, 'end made again');
  });

  it('across a restart (kept in the pins): FOUND at the first read, the counts kept', async () => {
    const before = await links();
    assert.equal(await lab.d!.stop('SIGTERM'), 0);
    lab.d!.closeClients();
    const started = Date.now();
    await lab.start(['--log-level', 'info']);
    const ls = await links();
    assert.equal(ls.length, 2, show(ls));
    for (const l of ls) {
      const was = before.find((b) => b.fromInterface === l.fromInterface)!;
      assert.ok(l.packets >= was.packets, `kept: ${show(before)} -> ${show(ls)}`);
      assert.equal(l.startKind, FOUND, `found counting: ${show(ls)}`);
      assert.ok(l.startTime!.getTime() >= started - SLACK, `its first read by this daemon: ${show(ls)}`);
    }
  });
});
