/**
 * The reconciler checks and judges a rule again only when something it is checked or judged from changed (its
 * own change, the facts of an interface it names, a static MAC's verdict, a backend's neighbour entry, an
 * observation of its MAC-less backends: resync.ts), not every rule at every pass. This checks that the
 * statuses, their conditions (with their transition times), the problems, the lines logged once per
 * transition and what is asked of the kernel are exactly what checking and judging every rule at every pass
 * gives: two controllers over the same scripted host, one as it runs, the other forced to its full sweep at
 * every pass (what every pass did before), compared after every pass of random host and rule changes (seeded;
 * the seed is in the failure message).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { Controller } from '../../src/server/core/controller.js';
import { notesOfAll, usersOfAll, type EgressIndex, type EgressNotes } from '../../src/server/core/egress-notes.js';
import { problemsOfAll, type RuleProblems } from '../../src/server/core/rule-problems.js';
import { activeLinkSources } from '../../src/server/core/shadow.js';
import type { Dataplane, LinkState, PeerMtu, RedirectTarget } from '../../src/server/core/dataplane.js';
import type { RuleSpec } from '../../src/server/core/model.js';
import type { NeighbourEntry } from '../../src/server/dataplane/netdev.js';
import { prng, stateOf, TwoControllers } from '../helpers/agree.js';
import { MODEL_CAPACITY, ModelDataplane } from '../helpers/model-dataplane.js';

type Peer = { name: string; mac: string; takesOthers: boolean };

/** The host as scripted by the test, nothing read from the real one; what was asked of it. */
class ScriptedHost extends ModelDataplane {
  table = new Map<string, NeighbourEntry>();
  peers = new Map<string, Peer>();
  peerMtus = new Map<string, PeerMtu>();
  links = new Map<string, LinkState>();
  answers = new Map<string, string>();
  handSet = new Map<string, string>();
  missing = new Set<string>();
  napi = new Map<string, RedirectTarget>();
  arpWhy: string | undefined;
  requests: string[] = [];

  override async neighbourTable(): Promise<Map<string, NeighbourEntry>> {
    return new Map([...this.table].map(([k, e]) => [k, { ...e, states: [...e.states] }]));
  }
  override vethPeerMac(iface: string): Peer | undefined {
    const p = this.peers.get(iface);
    return p && { ...p };
  }
  override vethPeerMtu(iface: string): PeerMtu | undefined {
    const p = this.peerMtus.get(iface);
    return p && { ...p };
  }
  override vethPeer(): string | undefined {
    return undefined;
  }
  override linkState(iface: string): LinkState | undefined {
    if (!this.ifs.has(iface)) return undefined;
    const l = this.links.get(iface);
    return l ? { ...l } : { up: true, carrier: true, mtu: 1500 };
  }
  override nameOf(ifindex: number): string | undefined {
    for (const [n, i] of this.ifs) if (i.ifindex === ifindex) return n;
    return undefined;
  }
  override lowerDevices(): string[] {
    return [];
  }
  override upperDevices(): string[] {
    return [];
  }
  override strayAttachments(): [] {
    return [];
  }
  override movedTo(): undefined {
    return undefined;
  }
  override async xdpTransmitStats(): Promise<undefined> {
    return undefined;
  }
  override neighbourAnswered(ip: string, iface: string): string | undefined {
    return this.answers.get(`${ip}@${iface}`);
  }
  override neighbourAnswerAge(): undefined {
    return undefined;
  }
  override askNeighbour(ip: string, iface: string, mac: string): boolean {
    this.requests.push(`ask ${ip}@${iface} ${mac}`);
    return false;
  }
  override arpUnavailable(): string | undefined {
    return this.arpWhy;
  }
  override neighbourHandSet(ip: string, iface: string): string | undefined {
    return this.handSet.get(`${ip}@${iface}`);
  }
  override neighbourMissing(ip: string, iface: string): boolean {
    return this.missing.has(`${ip}@${iface}`);
  }
  override verifyNeighbour(ip: string, iface: string): boolean {
    this.requests.push(`reprobe ${ip}@${iface}`);
    return false;
  }
  override probeNeighbour(ip: string, iface: string): void {
    this.requests.push(`resolve ${ip}@${iface}`);
  }
  override async redirectTarget(iface?: string): Promise<RedirectTarget> {
    return { ...(this.napi.get(iface ?? '') ?? { ok: true }) };
  }
}

/** Static-MAC backends' addresses, and those of backends given without a MAC (apart: a fact of one is not the other's). */
const IPS = ['10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.4'];
const MACLESS_IPS = ['10.0.1.1', '10.0.1.2', '10.0.1.3'];
const MACS = ['02:00:00:00:01:01', '02:00:00:00:01:02', '02:00:00:00:01:03'];
const INGRESSES = ['in0', 'in1'];
const EGRESSES = ['b0', 'b1', 'b2'];
const STATES = [['REACHABLE'], ['STALE'], ['DELAY'], ['FAILED'], ['INCOMPLETE'], ['PERMANENT']];

/** What a pass left that anyone can see: every rule with its status and conditions, the problems, the log's memory. */
function observed(c: Controller): unknown {
  const s = stateOf(c);
  const sorted = <T>(m: Iterable<[string, T]>) => [...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return {
    rules: c.listRules().map((r) => [r.name, r.status]),
    problems: [...c.problems()].sort(),
    logged: sorted(s.logged),
    staticMacs: sorted(s.staticMacs),
    conflicts: sorted(s.macConflicts),
    unverified: sorted(s.staticMacUnverified),
  };
}

/**
 * The egress facts the controller keeps from what changed (egress-notes.ts) are what a walk over every rule
 * gives: each egress's users in order, each text with its users in the rules' order.
 */
function egressFactsAgree(c: Controller, ctx: string): void {
  const index = (c as unknown as { egressIndex: EgressIndex }).egressIndex;
  const it = index.update();
  while (!it.next().done);
  const st = stateOf(c);
  const byName = <T>(m: ReadonlyMap<string, T>) => [...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const texts = (n: EgressNotes) =>
    (['problems', 'unverified', 'frames'] as const).map((k) => byName(n[k]).map(([e, m]) => [e, [...m]]));
  assert.deepEqual(byName(index.users), byName(usersOfAll(st)), `${ctx}: the egresses' users`);
  assert.deepEqual(texts(index.notes), texts(notesOfAll(st)), `${ctx}: what the rules say about each egress`);
  const shadows = activeLinkSources((c as unknown as { dp: Dataplane }).dp, st);
  const problems = (c as unknown as { ruleProblems: RuleProblems }).ruleProblems;
  assert.deepEqual(problems.lines(shadows), problemsOfAll(st, shadows), `${ctx}: the rules' problem lines, in order`);
}

describe('rule statuses judged incrementally', () => {
  for (const seed of [11, 12, 13, 14, 15, 16]) {
    const mode = seed % 2 ? 'native' : 'generic';
    it(`agree with checking and judging every rule at every pass (seed ${seed}, ${mode}, 150 steps)`, async () => {
      const rnd = prng(seed);
      const pick = <T>(xs: readonly T[]) => xs[Math.floor(rnd() * xs.length)];
      // The reference: every rule checked and judged, every static MAC judged, at every pass.
      const pair = new TwoControllers(() => new ScriptedHost(MODEL_CAPACITY, [...INGRESSES, ...EGRESSES]), mode, [
        'ruleSweptAt',
        'staticMacSweptAt',
      ]);
      const { hosts, inc, full } = pair;
      const both = (f: (h: ScriptedHost) => void) => pair.both(f);
      const ruleOf = (name: string, i: number): RuleSpec => ({
        name,
        protocol: 'udp',
        port: 5000 + i,
        destination: '',
        sourcePrefixes: [],
        ingressInterfaces: rnd() < 0.2 ? [...INGRESSES] : [INGRESSES[i % 2]],
        backends: [0, 1, 2].slice(0, 1 + Math.floor(rnd() * 3)).map((k) => {
          const mac = rnd() < 0.5 ? '' : pick(MACS);
          return {
            ip: mac === '' ? MACLESS_IPS[(i + k) % MACLESS_IPS.length] : IPS[(i + k) % IPS.length],
            mac,
            interface: EGRESSES[(i + k) % EGRESSES.length],
            weight: rnd() < 0.1 ? 0 : 1,
          };
        }),
        udpChecksum: 'update',
        labels: {},
      });
      const names = ['r0', 'r1', 'r2', 'r3', 'r4'];
      for (const [i, n] of names.entries()) {
        const r = ruleOf(n, i);
        for (const c of [inc, full]) await c.createRule(r).catch((e: Error) => e);
      }
      for (let step = 0; step < 150; step++) {
        const what = rnd();
        // Mostly a backend the rules have (its facts matter), sometimes any.
        const used = inc.listRules().flatMap((r) => r.backends);
        const b =
          used.length && rnd() < 0.8 ? pick(used) : { ip: pick([...IPS, ...MACLESS_IPS]), interface: pick(EGRESSES) };
        const egress = b.interface;
        const iface = rnd() < 0.7 ? egress : pick(INGRESSES);
        const key = `${b.ip}@${egress}`;
        if (what < 0.12) {
          // A neighbour entry (what a MAC-less backend resolves to, and what a static MAC is checked against).
          const states = pick(STATES);
          const mac = states[0] === 'FAILED' || states[0] === 'INCOMPLETE' ? undefined : pick(MACS);
          const confirmed = Math.floor(rnd() * 25);
          both((h) => {
            h.table.set(key, { mac, states: [...states], confirmed });
            if (mac) h.neighbours.set(key, mac);
            else h.neighbours.delete(key);
          });
        } else if (what < 0.17) {
          both((h) => (h.table.delete(key), h.neighbours.delete(key)));
        } else if (what < 0.24) {
          // A probe of ours answered, mostly from the MAC the entry holds (what confirms it), or not.
          const mac = rnd() < 0.4 ? undefined : rnd() < 0.6 ? hosts[0].neighbours.get(key) : pick(MACS);
          both((h) => (mac ? h.answers.set(key, mac) : h.answers.delete(key)));
        } else if (what < 0.28) {
          const set = rnd() < 0.5;
          both((h) => (set ? h.handSet.set(key, 'PERMANENT') : h.handSet.delete(key)));
        } else if (what < 0.31) {
          const set = rnd() < 0.5;
          both((h) => (set ? h.missing.add(key) : h.missing.delete(key)));
        } else if (what < 0.42) {
          // An interface down, without carrier, or with another MTU.
          const l = { up: rnd() < 0.8, carrier: rnd() < 0.8, mtu: pick([1500, 1500, 1400, 9000]) };
          both((h) => h.links.set(iface, l));
        } else if (what < 0.47) {
          const p: PeerMtu | undefined =
            rnd() < 0.3 ? undefined : rnd() < 0.2 ? { unreadable: 'no netns' } : { name: `${egress}p`, mtu: 1400 };
          both((h) => (p ? h.peerMtus.set(egress, p) : h.peerMtus.delete(egress)));
        } else if (what < 0.52) {
          const peer = rnd() < 0.4 ? undefined : { name: `${egress}p`, mac: pick(MACS), takesOthers: rnd() < 0.3 };
          both((h) => (peer ? h.peers.set(egress, peer) : h.peers.delete(egress)));
        } else if (what < 0.57) {
          // Native redirects into an egress: delivered, refused, or not verifiable.
          const r: RedirectTarget =
            rnd() < 0.4
              ? { ok: true }
              : rnd() < 0.5
                ? { ok: false, detail: 'no NAPI' }
                : { ok: true, unverified: true, detail: 'peer elsewhere', key: 'k' };
          both((h) => h.napi.set(egress, r));
        } else if (what < 0.64) {
          // An interface disappears, comes back (with its ifindex or a new one), or gets another MAC.
          const was = hosts[0].ifs.get(iface);
          const ifindex = 2 + [...INGRESSES, ...EGRESSES].indexOf(iface) + (rnd() < 0.3 ? 40 : 0);
          const mac = rnd() < 0.3 ? '02:aa:00:00:00:09' : `02:00:00:00:00:${ifindex.toString(16).padStart(2, '0')}`;
          const next = was && rnd() < 0.5 ? undefined : { name: iface, ifindex: was?.ifindex ?? ifindex, mac };
          both((h) => (next ? h.ifs.set(iface, { ...next }) : h.ifs.delete(iface)));
        } else if (what < 0.66) {
          const arp = rnd() < 0.5 ? undefined : 'no CAP_NET_RAW';
          both((h) => (h.arpWhy = arp));
        } else if (what < 0.82) {
          const i = Math.floor(rnd() * names.length);
          const r = ruleOf(names[i], i);
          for (const c of [inc, full]) await c.updateRule(r, 0).catch((e: Error) => e);
        } else if (what < 0.87) {
          const i = Math.floor(rnd() * names.length);
          for (const c of [inc, full]) await c.deleteRule(names[i], 0).catch((e: Error) => e);
          const r = ruleOf(names[i], i);
          for (const c of [inc, full]) await c.createRule(r).catch((e: Error) => e);
        }
        pair.now += Math.floor(rnd() * 2500); // grace periods, retries and the sweeps' periods move on
        both((h) => (h.requests.length = 0));
        await pair.pass();
        const ctx = `seed ${seed}, step ${step}`;
        assert.deepEqual(observed(inc), observed(full), `${ctx}: statuses, conditions, problems, transitions`);
        egressFactsAgree(inc, ctx);
        egressFactsAgree(full, ctx);
        assert.deepEqual(
          [...hosts[0].requests].sort(),
          [...hosts[1].requests].sort(),
          `${ctx}: what was asked of the kernel`,
        );
      }
    });
  }

  it('agree step by step through the per-backend observations (answers, entries set by hand, held MACs, unverifiable egresses, no ARP)', async () => {
    const pair = new TwoControllers(() => new ScriptedHost(MODEL_CAPACITY, ['in0', ...EGRESSES]), 'native', [
      'ruleSweptAt',
      'staticMacSweptAt',
    ]);
    const { inc, full } = pair;
    const both = (f: (h: ScriptedHost) => void) => pair.both(f);
    const key = '10.0.1.1@b0';
    const entry = (mac: string) =>
      both((h) => {
        h.neighbours.set(key, mac);
        h.table.set(key, { mac, states: ['REACHABLE'], confirmed: 1 });
      });
    entry(MACS[0]);
    for (const c of [inc, full]) {
      await c.createRule({
        name: 'r',
        protocol: 'udp',
        port: 5000,
        destination: '',
        sourcePrefixes: [],
        ingressInterfaces: ['in0'],
        backends: [
          { ip: '10.0.1.1', mac: '', interface: 'b0', weight: 1 },
          { ip: '10.0.0.1', mac: MACS[1], interface: 'b1', weight: 1 },
        ],
        udpChecksum: 'update',
        labels: {},
      });
    }
    const steps: [string, () => void][] = [
      ['nothing', () => {}],
      ['its MAC answers', () => both((h) => h.answers.set(key, MACS[0]))],
      ['nothing', () => {}],
      ['the entry changes to a MAC that has not answered (held)', () => entry(MACS[2])],
      ['nothing', () => {}],
      ['the new MAC answers', () => both((h) => h.answers.set(key, MACS[2]))],
      ['the entry is set by hand', () => both((h) => h.handSet.set(key, 'PERMANENT'))],
      ['no longer', () => both((h) => h.handSet.delete(key))],
      ['the answer is gone', () => both((h) => h.answers.delete(key))],
      ['no ARP can be sent', () => both((h) => (h.arpWhy = 'no CAP_NET_RAW'))],
      ['ARP again', () => both((h) => (h.arpWhy = undefined))],
      [
        "b1's peer cannot be inspected",
        () => both((h) => h.napi.set('b1', { ok: true, unverified: true, detail: 'peer elsewhere', key: 'k' })),
      ],
      ['it can', () => both((h) => h.napi.set('b1', { ok: true }))],
      ['nothing', () => {}],
    ];
    const seen = new Set<string>();
    for (const [i, [what, change]] of steps.entries()) {
      change();
      pair.now += 1000;
      await pair.pass();
      assert.deepEqual(observed(inc), observed(full), `step ${i} (${what})`);
      egressFactsAgree(inc, `step ${i} (${what})`);
      seen.add(inc.getRule('r').status.message);
    }
    assert.ok(seen.size >= 5, `the steps changed the status: ${[...seen].join(' | ')}`);
  });
});
