/**
 * The egress facts kept from what changed (core/egress-notes.ts EgressIndex: each egress's users, and what the
 * rules' statuses say about it) and the rules' problem lines (core/rule-problems.ts) are what a walk over every
 * rule gives, after every change of random rules,
 * kernel records and statuses, one at a time or many at once (CoreState.replaceMany), with updates stopped
 * between two slices and changes landing before they go on (seeded; the seed is in the failure message).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { EgressIndex, notesOfAll, usersOfAll, type EgressNotes } from '../../src/server/core/egress-notes.js';
import type { BackendStatus, LinkSpec, RuleRecord, RuleStatus } from '../../src/server/core/model.js';
import { problemsOfAll, RuleProblems } from '../../src/server/core/rule-problems.js';
import { CoreState, type RuleKernel } from '../../src/server/core/state.js';
import { prng } from '../helpers/agree.js';
import { MODEL_CAPACITY } from '../helpers/model-dataplane.js';

const EGRESSES = ['e0', 'e1', 'e2', 'e3'];
const IPS = ['10.0.0.1', '10.0.0.2', '10.0.0.3'];

const byName = <T>(m: ReadonlyMap<string, T>) => [...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
const texts = (n: EgressNotes) =>
  (['problems', 'unverified', 'frames'] as const).map((k) => byName(n[k]).map(([e, m]) => [e, [...m]]));

describe('egress facts kept from what changed', () => {
  for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
    it(`agree with a walk over every rule (seed ${seed}, 400 steps)`, async () => {
      const rnd = prng(seed);
      const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)];
      const state = new CoreState(MODEL_CAPACITY);
      const index = new EgressIndex(state);
      const names = Array.from({ length: seed > 6 ? 600 : 12 }, (_, i) => `r${i}`);
      const record = (name: string): RuleRecord => ({
        name,
        protocol: 'udp',
        port: 9000,
        destination: '',
        sourcePrefixes: [],
        ingressInterfaces: ['in0'],
        backends: Array.from({ length: 1 + Math.floor(rnd() * 3) }, () => ({
          ip: pick(IPS),
          mac: '',
          interface: pick(EGRESSES),
          weight: 1,
        })),
        udpChecksum: 'update',
        labels: {},
        generation: 1,
        createTime: 0,
        updateTime: 0,
      });
      const status = (rec: RuleRecord): RuleStatus => {
        const backends: BackendStatus[] = rec.backends.map((b) => {
          const what = rnd();
          return {
            ip: b.ip,
            interface: b.interface,
            mac: '',
            resolved: true,
            receiving: what >= 0.3,
            message: '',
            egress: what < 0.3 ? pick(['no native XDP redirects', 'every redirected frame dropped']) : undefined,
            unverified: what > 0.7 || undefined,
            egressUnverified: what > 0.7 ? pick(['peer in another namespace', 'peer unreadable']) : undefined,
          };
        });
        const warnings = rec.backends.flatMap((b) =>
          rnd() < 0.3
            ? [`backend ${b.ip}: egress ${b.interface} has MTU 1400 below ingress in0's 1500`]
            : rnd() < 0.2
              ? [`backend ${b.ip}: egress ${b.interface}'s veth peer MTU cannot be verified (gone)`]
              : [],
        );
        const state = pick(['active', 'active', 'degraded', 'inactive', 'failed'] as const);
        return { state, message: `m${Math.floor(rnd() * 3)}`, backends, warnings };
      };
      const kernel = (rec: RuleRecord): RuleKernel => ({
        slot: 1,
        statsId: 1,
        matchKeys: [],
        prefixes: [],
        backends: new Map(),
        ifindexes: new Map(),
        status: status(rec),
      });
      const problems = new RuleProblems(state);
      const link: LinkSpec = { a: 'in0', b: 'e0', direction: 'both' };
      let shadows = new Map<string, LinkSpec>();
      let running: Generator<void, void> | undefined;
      for (let step = 0; step < 400; step++) {
        const what = rnd();
        const name = pick(names);
        if (what < 0.35) {
          const rec = record(name);
          state.setRecord(name, rec);
          state.setKernel(name, kernel(rec));
        } else if (what < 0.45) {
          state.deleteRule(name);
        } else if (what < 0.75) {
          // A judgement that gives a new status object (resync.ts marks it so).
          const rec = state.rules.get(name);
          const k = state.ruleKernel.get(name);
          if (rec && k) {
            k.status = status(rec);
            state.markStatus(name);
          }
        } else if (what < 0.85) {
          // Many at once, built beside and swapped (names kept, new ones, some deleted).
          const set = names
            .filter(() => rnd() < 0.5)
            .map((n) => {
              const rec = record(n);
              return [n, rec, kernel(rec)] as [string, RuleRecord, RuleKernel];
            });
          const del = names.filter((n) => !set.some(([s]) => s === n) && rnd() < 0.2);
          await state.replaceMany(set, del, async () => {});
        } else if (what < 0.9) {
          // A link shadows the rules' ingress, or no longer does.
          shadows = shadows.size ? new Map() : new Map([['in0', link]]);
        } else {
          // An update under way stops between two slices; the next change lands before it goes on.
          running ??= index.update();
          for (let i = Math.floor(rnd() * 3); i > 0 && running; i--) if (running.next().done) running = undefined;
          if (running) continue;
        }
        if (running && rnd() < 0.5) continue; // left under way; a later update reads what it has not
        const it = index.update();
        while (!it.next().done);
        if (running) while (!running.next().done);
        running = undefined;
        assert.ok(index.current(), `seed ${seed}, step ${step}: current after an update`);
        const ctx = `seed ${seed}, step ${step}`;
        assert.deepEqual(byName(index.users), byName(usersOfAll(state)), `${ctx}: the egresses' users`);
        assert.deepEqual(texts(index.notes), texts(notesOfAll(state)), `${ctx}: what the rules say about each egress`);
        if (rnd() < 0.3) continue; // problem lines read less often than the changes
        const before = problems.lines(shadows);
        assert.deepEqual(before, problemsOfAll(state, shadows), `${ctx}: the rules' problem lines, in order`);
        assert.equal(problems.lines(shadows), before, `${ctx}: the same array while nothing changed`);
      }
    });
  }
});
