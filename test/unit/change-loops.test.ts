/**
 * The change path's loop refusal (execute.ts backendsLoopingBack) over a CoreState and modelled veth peers: a
 * planned rule whose backend leads, through a veth peer, to the ingress of a rule the change leaves alone (found
 * by who claims the key now, state.claims) and back is refused naming both; a rule the change deletes or moves to
 * another key is not on the way back any more; and the check reads only the rules the walk reaches (a rule set
 * of 10 000 is not made into loop rules at every change). Pure: no kernel.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { backendsLoopingBack } from '../../src/server/core/execute.js';
import type { RuleRecord, RuleSpec } from '../../src/server/core/model.js';
import type { RulePlan } from '../../src/server/core/plan-rules.js';
import { CoreState } from '../../src/server/core/state.js';

const spec = (name: string, ingress: string, port: number, egress: string, ip = '10.0.0.2'): RuleSpec => ({
  name,
  protocol: 'udp',
  port,
  destination: '',
  sourcePrefixes: [],
  ingressInterfaces: [ingress],
  backends: [{ ip, mac: '02:00:00:00:00:02', interface: egress, weight: 1 }],
  udpChecksum: 'update',
  labels: {},
});

const record = (s: RuleSpec): RuleRecord => ({ ...s, generation: 1, createTime: 0, updateTime: 0 });

const plan = (s: RuleSpec, i = 0): RulePlan =>
  ({ name: s.name, spec: s, field: `rules[${i}]`, ingress: [], backends: [] }) as unknown as RulePlan;

/** veth pairs: e1 <-> i2 and e2 <-> i1 (a backend sent out of e1 arrives on i2, one out of e2 on i1). */
const PEERS: Record<string, string> = { e1: 'i2', i2: 'e1', e2: 'i1', i1: 'e2' };

function check(state: CoreState, plans: RulePlan[], scope: string[], reads?: string[]): string | undefined {
  const dp = { vethPeer: (name: string) => PEERS[name] };
  const links = { want: new Map(), field: (from: string) => from };
  const rules = reads ? trackReads(state, reads) : state;
  try {
    backendsLoopingBack(dp, rules, plans, links, { rules: new Set(scope) }, (field, detail) => {
      throw new Error(`${field}: ${detail}`);
    });
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/** `state` whose rules map records every rule read from it (get, values) into `reads`. */
function trackReads(state: CoreState, reads: string[]): CoreState {
  const rules = state.rules;
  const tracked = new Proxy(rules, {
    get(target, prop) {
      if (prop === 'get') return (name: string) => (reads.push(name), target.get(name));
      if (prop === 'values') return () => [...target.values()].map((r) => (reads.push(r.name), r)).values();
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return new Proxy(state, {
    get(target, prop) {
      return prop === 'rules' ? tracked : (Reflect.get(target, prop, target) as unknown);
    },
  });
}

function stateWith(...specs: RuleSpec[]): CoreState {
  const state = new CoreState({ ruleSlots: 64, statsIds: 64, backends: 64 } as never);
  for (const s of specs) state.setRecord(s.name, record(s));
  return state;
}

describe('loop refusal of a change (backendsLoopingBack)', () => {
  it('a planned rule closing a cycle with a rule left alone is refused, naming both', () => {
    const state = stateWith(spec('a', 'i1', 7999, 'e1'));
    const b = spec('b', 'i2', 7999, 'e2');
    const why = check(state, [plan(b)], ['b']);
    assert.ok(why, 'refused');
    assert.match(why, /^rules\[0\]\.backends\[0\]\.interface: /);
    assert.match(why, /\ba\b/);
    assert.match(why, /every redirected datagram would come back/);
  });

  it('a rule the change deletes, or moves to another port, is not on the way back', () => {
    const state = stateWith(spec('a', 'i1', 7999, 'e1'));
    const b = spec('b', 'i2', 7999, 'e2');
    // a deleted by the same change (in scope, no plan).
    assert.equal(check(state, [plan(b)], ['a', 'b']), undefined);
    // a moved to port 8000 by the same change: i1|7999 is claimed by nobody after it.
    const a2 = spec('a', 'i1', 8000, 'e1');
    assert.equal(check(state, [plan(b, 0), plan(a2, 1)], ['a', 'b']), undefined);
    // ... and the cycle on port 8000 is found when b moves there too.
    const b2 = spec('b', 'i2', 8000, 'e2');
    assert.ok(check(state, [plan(b2, 0), plan(a2, 1)], ['a', 'b']));
  });

  it('reads only the rules the walk reaches, not every rule at every change', () => {
    const many = Array.from({ length: 2000 }, (_, i) => spec(`r${i}`, 'i9', 10_000 + i, 'e9'));
    const state = stateWith(spec('a', 'i1', 7999, 'e1'), ...many);
    const reads: string[] = [];
    assert.ok(check(state, [plan(spec('b', 'i2', 7999, 'e2'))], ['b'], reads));
    assert.deepEqual([...new Set(reads)], ['a']);
    const quiet: string[] = [];
    assert.equal(check(state, [plan(spec('c', 'i7', 7999, 'e7'))], ['c'], quiet), undefined);
    assert.deepEqual(quiet, []);
  });
});
