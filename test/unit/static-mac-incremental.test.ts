/**
 * The reconciler judges a static MAC again only when something it is judged from changed (its rule, its
 * egress, the egress's veth peer, its neighbour entry: resync.ts judgeStaticMacs), not every backend at every
 * pass. This checks that the verdicts, the statuses and what is asked of the kernel are exactly what judging
 * every backend at every pass gives: two controllers over the same scripted host, one as it runs, the other
 * forced to its full sweep at every pass (what every pass did before), compared after every pass of random
 * host and rule changes (seeded; the seed is in the failure message).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { Controller } from '../../src/server/core/controller.js';
import type { RuleSpec } from '../../src/server/core/model.js';
import { CoreState, type RuleKernel } from '../../src/server/core/state.js';
import type { RuleRecord } from '../../src/server/core/model.js';
import type { NeighbourEntry } from '../../src/server/dataplane/netdev.js';
import { prng, stateOf, TwoControllers } from '../helpers/agree.js';
import { MODEL_CAPACITY, ModelDataplane } from '../helpers/model-dataplane.js';

type Peer = { name: string; mac: string; takesOthers: boolean };

/** The host as scripted by the test: neighbour table, veth peers, answered probes; what was asked of it. */
class ScriptedHost extends ModelDataplane {
  table = new Map<string, NeighbourEntry>();
  peers = new Map<string, Peer>();
  answers = new Map<string, string>();
  requests: string[] = [];

  override async neighbourTable(): Promise<Map<string, NeighbourEntry>> {
    // Fresh objects at every read, as the kernel's dump gives them.
    return new Map([...this.table].map(([k, e]) => [k, { ...e, states: [...e.states] }]));
  }
  override vethPeerMac(iface: string): Peer | undefined {
    const p = this.peers.get(iface);
    return p && { ...p };
  }
  override neighbourAnswered(ip: string, iface: string): string | undefined {
    return this.answers.get(`${ip}@${iface}`);
  }
  override verifyNeighbour(ip: string, iface: string): boolean {
    this.requests.push(`reprobe ${ip}@${iface}`);
    return false;
  }
  override probeNeighbour(ip: string, iface: string): void {
    this.requests.push(`resolve ${ip}@${iface}`);
  }
}

const IPS = ['10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.4', '10.0.0.5'];
const MACS = ['02:00:00:00:01:01', '02:00:00:00:01:02', '02:00:00:00:01:03'];
const EGRESSES = ['b0', 'b1', 'b2'];
const STATES = [['REACHABLE'], ['STALE'], ['DELAY'], ['PROBE'], ['FAILED'], ['INCOMPLETE'], ['PERMANENT']];

/** What a pass left: kept verdicts, conflicts, unverified texts, and each rule's status. */
function observed(c: Controller): unknown {
  const s = stateOf(c);
  const sorted = <T>(m: Iterable<[string, T]>) => [...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return {
    staticMacs: sorted(s.staticMacs),
    conflicts: sorted(s.macConflicts),
    unverified: sorted(s.staticMacUnverified),
    rules: c.listRules().map((r) => [r.name, r.status.state, r.status.message, r.status.backends]),
  };
}

describe('static MACs judged incrementally', () => {
  for (const seed of [1, 2, 3, 4, 5, 6]) {
    it(`agree with judging every backend at every pass (seed ${seed}, 150 steps)`, async () => {
      const rnd = prng(seed);
      const pick = <T>(xs: readonly T[]) => xs[Math.floor(rnd() * xs.length)];
      // The reference: every backend judged at every pass.
      const pair = new TwoControllers(() => new ScriptedHost(MODEL_CAPACITY, ['in0', 'in1', ...EGRESSES]), 'generic', [
        'staticMacSweptAt',
      ]);
      const { hosts, inc, full } = pair;
      const ruleOf = (name: string, i: number): RuleSpec => ({
        name,
        protocol: 'udp',
        port: 5000 + i,
        destination: '',
        sourcePrefixes: [],
        ingressInterfaces: ['in0'],
        backends: [0, 1, 2].slice(0, 1 + Math.floor(rnd() * 3)).map((k) => ({
          ip: pick(IPS),
          mac: rnd() < 0.15 ? '' : pick(MACS),
          interface: EGRESSES[(i + k) % EGRESSES.length],
          weight: 1,
        })),
        udpChecksum: 'update',
        labels: {},
      });
      const names = ['r0', 'r1', 'r2', 'r3'];
      for (const [i, n] of names.entries()) {
        const r = ruleOf(n, i);
        for (const c of [inc, full]) await c.createRule(r);
      }
      const both = (f: (h: ScriptedHost) => void) => pair.both(f);
      for (let step = 0; step < 150; step++) {
        const what = rnd();
        const ip = pick(IPS);
        const iface = pick(EGRESSES);
        const key = `${ip}@${iface}`;
        if (what < 0.35) {
          // A neighbour entry appears or changes (state, MAC, age).
          const states = pick(STATES);
          const mac = states[0] === 'FAILED' || states[0] === 'INCOMPLETE' ? undefined : pick(MACS);
          const confirmed = Math.floor(rnd() * 25);
          both((h) => h.table.set(key, { mac, states: [...states], confirmed }));
        } else if (what < 0.45) {
          both((h) => h.table.delete(key));
        } else if (what < 0.55) {
          // A probe of ours answered (or not) from some MAC.
          const mac = rnd() < 0.5 ? undefined : pick(MACS);
          both((h) => (mac ? h.answers.set(key, mac) : h.answers.delete(key)));
        } else if (what < 0.65) {
          // A veth peer seen, changed, taking others' frames, or gone.
          const peer = rnd() < 0.3 ? undefined : { name: `${iface}p`, mac: pick(MACS), takesOthers: rnd() < 0.3 };
          both((h) => (peer ? h.peers.set(iface, peer) : h.peers.delete(iface)));
        } else if (what < 0.72) {
          // An egress disappears or comes back.
          const gone = hosts[0].ifs.has(iface);
          const info = hosts[0].ifs.get(iface) ?? {
            name: iface,
            ifindex: 20 + EGRESSES.indexOf(iface),
            mac: '02:aa:00:00:00:01',
          };
          both((h) => (gone ? h.ifs.delete(iface) : h.ifs.set(iface, { ...info })));
        } else if (what < 0.87) {
          // A rule's backends change (its MACs, addresses, egresses).
          const i = Math.floor(rnd() * names.length);
          const r = ruleOf(names[i], i);
          for (const c of [inc, full]) await c.updateRule(r, 0).catch((e: Error) => e);
        } else if (what < 0.93) {
          const i = Math.floor(rnd() * names.length);
          for (const c of [inc, full]) await c.deleteRule(names[i], 0).catch((e: Error) => e);
          const r = ruleOf(names[i], i);
          for (const c of [inc, full]) await c.createRule(r).catch((e: Error) => e);
        }
        pair.now += Math.floor(rnd() * 2500); // ages, grace periods and the full sweep's period move on
        both((h) => (h.requests.length = 0));
        await pair.pass();
        const ctx = `seed ${seed}, step ${step}`;
        assert.deepEqual(observed(inc), observed(full), `${ctx}: verdicts and statuses`);
        assert.deepEqual(
          [...hosts[0].requests].sort(),
          [...hosts[1].requests].sort(),
          `${ctx}: what was asked of the kernel`,
        );
      }
    });
  }
});

describe('the static-MAC index the rule changes keep', () => {
  it('is the one the rules give, and says what was added and what went since the last look (3 000 random changes)', async () => {
    const rnd = prng(7);
    const pick = <T>(xs: readonly T[]) => xs[Math.floor(rnd() * xs.length)];
    const s = new CoreState({ links: 16, ruleSlots: 64, statsIds: 256, matches: 64, srcPrefixes: 64, backends: 256 });
    const rec = (i: number): RuleRecord => ({
      name: `r${i}`,
      protocol: 'udp',
      port: 5000 + i,
      destination: '',
      sourcePrefixes: [],
      ingressInterfaces: ['in0'],
      backends: [0, 1, 2].slice(0, 1 + Math.floor(rnd() * 3)).map(() => ({
        ip: pick(IPS),
        mac: rnd() < 0.2 ? '' : pick([...MACS, MACS[0].toUpperCase()]),
        interface: pick(EGRESSES),
        weight: 1,
      })),
      udpChecksum: 'update',
      labels: {},
      generation: 1,
      createTime: 0,
      updateTime: 0,
    });
    const kern = (i: number) =>
      ({
        slot: i + 1,
        matchKeys: [{ ifindex: 2, dport: 5000 + i, proto: 17, family: 2, daddr: new Uint8Array(4) }],
        prefixes: [],
        backends: new Map(),
      }) as unknown as RuleKernel;
    let seen = new Set<string>(); // the keys at the last look (a reconciler pass)
    for (let step = 0; step < 3000; step++) {
      const what = rnd();
      if (what < 0.5) {
        const i = Math.floor(rnd() * 12);
        s.setRecord(`r${i}`, rec(i));
        s.setKernel(`r${i}`, kern(i));
      } else if (what < 0.75) s.deleteRule(`r${Math.floor(rnd() * 12)}`);
      else if (what < 0.9) {
        const set = [...Array(12).keys()].filter(() => rnd() < 0.5).map((i) => [`r${i}`, rec(i), kern(i)] as const);
        const del = [...Array(12).keys()].filter(() => rnd() < 0.2).map((i) => `r${i}`);
        await s.replaceMany(
          set.map(([n, r, k]) => [n, r, k]),
          del.filter((n) => !set.some(([m]) => m === n)),
          async () => {},
        );
      } else {
        // A look: what was added and what went since the last one.
        const now = new Set(s.staticMacBackends.keys());
        for (const k of now) if (!seen.has(k)) assert.ok(s.staticMacAdded.has(k), `step ${step}: ${k} added`);
        for (const k of seen) if (!now.has(k)) assert.ok(s.staticMacGone.has(k), `step ${step}: ${k} gone`);
        for (const k of s.staticMacAdded) assert.ok(now.has(k), `step ${step}: ${k} added is there`);
        for (const k of s.staticMacGone) assert.ok(!now.has(k), `step ${step}: ${k} gone is not there`);
        s.staticMacAdded.clear();
        s.staticMacGone.clear();
        seen = now;
      }
      // The index against the rules.
      const want = new Map<string, number>();
      for (const r of s.rules.values()) {
        for (const b of r.backends) {
          if (b.mac === '') continue;
          const key = `${b.ip}@${b.interface}|${b.mac.toLowerCase()}`;
          want.set(key, (want.get(key) ?? 0) + 1);
        }
      }
      const have = new Map([...s.staticMacBackends].map(([k, b]) => [k, b.rules]));
      assert.deepEqual([...have].sort(), [...want].sort(), `step ${step}: keys and rule counts`);
      const byEgress = new Map<string, string[]>();
      const byNeighbour = new Map<string, string[]>();
      for (const [k, b] of s.staticMacBackends) {
        byEgress.set(b.iface, [...(byEgress.get(b.iface) ?? []), k]);
        byNeighbour.set(b.neighbour, [...(byNeighbour.get(b.neighbour) ?? []), k]);
      }
      const norm = (m: Map<string, Iterable<string> | string>) =>
        [...m].map(([k, v]) => [k, typeof v === 'string' ? [v] : [...v].sort()]).sort();
      assert.deepEqual(norm(s.staticMacsByEgress), norm(byEgress), `step ${step}: by egress`);
      assert.deepEqual(norm(s.staticMacsByNeighbour), norm(byNeighbour), `step ${step}: by neighbour entry`);
    }
  });
});
