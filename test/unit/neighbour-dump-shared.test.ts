/**
 * A reconciler pass reads the neighbour table once: the entries of the backends given without MAC
 * (Dataplane.neighbourMacs) and the static-MAC judgement (Dataplane.neighbourTable) share one read when a pass
 * has both (it was two RTM_GETNEIGH dumps per pass: 45 in 10 s at rest with 200 MAC-less and 48 static-MAC
 * backends, in pairs). What is judged from it is what two reads of the same table give.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Controller } from '../../src/server/core/controller.js';
import type { RuleSpec } from '../../src/server/core/model.js';
import type { NeighbourEntry } from '../../src/server/dataplane/netdev.js';
import { silentLogger } from '../../src/server/log.js';
import { MODEL_CAPACITY, ModelDataplane } from '../helpers/model-dataplane.js';
import { udpSpec } from '../helpers/rule-spec.js';

/** A host whose one neighbour table answers both reads; each read is counted. */
class CountingHost extends ModelDataplane {
  table = new Map<string, NeighbourEntry>();
  reads: string[] = [];

  constructor(private readonly share: boolean) {
    super(MODEL_CAPACITY, ['in0', 'b0', 'b1']);
  }
  override async neighbourMac(ip: string, iface: string): Promise<string | undefined> {
    return this.table.get(`${ip}@${iface}`)?.mac;
  }
  override async neighbourMacs(
    wanted: readonly { ip: string; iface: string }[],
    whole = false,
  ): Promise<{ macs: Map<string, string | undefined>; gone: Set<string>; table?: Map<string, NeighbourEntry> }> {
    this.reads.push(whole && this.share ? 'neighbourMacs+table' : 'neighbourMacs');
    const r = await super.neighbourMacs(wanted);
    return whole && this.share ? { ...r, table: this.copy() } : r;
  }
  /** Each entry's MAC answered our probes: a REACHABLE entry with another MAC contradicts a static one. */
  override neighbourAnswered(ip: string, iface: string): string | undefined {
    return this.table.get(`${ip}@${iface}`)?.mac;
  }
  /** Only each entry's MAC answers our requests: a static MAC the entry does not hold is silent when asked. */
  override neighbourAnswers(ip: string, iface: string, mac: string): { own?: 'answers' | 'silent'; others: string[] } {
    const e = this.table.get(`${ip}@${iface}`)?.mac;
    return e === mac.toLowerCase() ? { own: 'answers', others: [] } : { own: 'silent', others: e ? [e] : [] };
  }
  override async neighbourTable(): Promise<Map<string, NeighbourEntry>> {
    this.reads.push('neighbourTable');
    return this.copy();
  }
  private copy(): Map<string, NeighbourEntry> {
    return new Map([...this.table].map(([k, e]) => [k, { ...e, states: [...e.states] }]));
  }
}

const MAC_A = '02:00:00:00:01:01';
const MAC_B = '02:00:00:00:01:02';
const macless = { ip: '10.0.0.1', mac: '', interface: 'b0', weight: 1 };
const staticMac = { ip: '10.0.0.2', mac: MAC_B, interface: 'b1', weight: 1 };

async function passes(share: boolean, backends: RuleSpec['backends'][]) {
  let t = 1_000_000;
  const dp = new CountingHost(share);
  dp.table.set('10.0.0.1@b0', { mac: MAC_A, states: ['REACHABLE'], confirmed: 1 });
  dp.table.set('10.0.0.2@b1', { mac: MAC_B, states: ['REACHABLE'], confirmed: 1 });
  const c = new Controller(dp, { mode: 'generic', fixVethPeers: false, log: silentLogger, now: () => t });
  for (const [i, b] of backends.entries()) await c.createRule(udpSpec(`r${i}`, 5000 + i, b));
  const seen: { reads: string[]; rules: unknown }[] = [];
  for (let pass = 0; pass < 4; pass++) {
    // The static MAC contradicted by the host from the third pass on: judged from the shared read too.
    if (pass === 2) dp.table.set('10.0.0.2@b1', { mac: MAC_A, states: ['REACHABLE'], confirmed: 0 });
    dp.reads = [];
    t += 1500;
    await c.resync();
    seen.push({
      reads: dp.reads,
      rules: c.listRules().map((r) => [r.name, r.status.state, r.status.message, r.status.backends]),
    });
  }
  return seen;
}

describe('one neighbour table read per reconciler pass', () => {
  it('backends without MAC and with a static MAC: one read, judged as from two', async () => {
    const shared = await passes(true, [[macless, staticMac]]);
    const twice = await passes(false, [[macless, staticMac]]);
    // Passes at rest: one read. Every pass: the table is never read by itself (a pass that re-applies a rule
    // reads that rule's MAC-less entries again, as a change does).
    for (const s of shared.slice(0, 2)) assert.deepEqual(s.reads, ['neighbourMacs+table']);
    for (const s of twice.slice(0, 2)) assert.deepEqual(s.reads, ['neighbourMacs', 'neighbourTable']);
    for (const s of shared) assert.deepEqual(s.reads.slice(0, 1), ['neighbourMacs+table'], JSON.stringify(s.reads));
    for (const s of shared) assert.ok(!s.reads.includes('neighbourTable'), JSON.stringify(s.reads));
    assert.deepEqual(
      shared.map((s) => s.rules),
      twice.map((s) => s.rules),
    );
    // The contradiction was seen (the test judged something).
    assert.match(JSON.stringify(shared[3].rules), /static MAC contradicted: 10\.0\.0\.2 answers ARP on b1/);
  });

  it('only one kind of backend: the one read it needs', async () => {
    for (const s of await passes(true, [[macless]])) assert.deepEqual(s.reads, ['neighbourMacs']);
    for (const s of await passes(true, [[staticMac]])) assert.deepEqual(s.reads, ['neighbourTable']);
  });
});
