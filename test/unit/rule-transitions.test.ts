/**
 * Rule transitions said together (core/rule-transitions.ts): a few rules each in their own line as before; many
 * that go to one state at once (one host event) in one line per state naming how many and 5 of them; each
 * transition said once.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { LogDamper } from '../../src/server/core/log-damper.js';
import type { RuleStatus } from '../../src/server/core/model.js';
import { RuleTransitions } from '../../src/server/core/rule-transitions.js';

function setup() {
  const lines: { level: string; fields: Record<string, unknown>; msg: string }[] = [];
  const log = {
    info: (fields: Record<string, unknown>, msg: string) => lines.push({ level: 'info', fields, msg }),
    warn: (fields: Record<string, unknown>, msg: string) => lines.push({ level: 'warn', fields, msg }),
  };
  let now = 0;
  const logged = new Map<string, string>();
  const damper = new LogDamper();
  const make = () => new RuleTransitions({ logged, damper, log: log as never, now: () => (now += 1) });
  return { lines, make };
}
const st = (state: RuleStatus['state'], message: string) => ({ state, message }) as RuleStatus;

describe('rule transitions: bounded lines for one event across many rules', () => {
  it('a few rules: one line each, as before; a first ACTIVE says nothing; the same status twice is said once', () => {
    const { lines, make } = setup();
    const t = make();
    for (let i = 0; i < 5; i++) t.add(`r${i}`, st('active', 'ok'));
    t.flush();
    assert.equal(lines.length, 0);
    for (let i = 0; i < 5; i++) t.add(`r${i}`, st('inactive', 'egress v1 is down'));
    t.add('r0', st('inactive', 'egress v1 is down'));
    t.flush();
    assert.deepEqual(
      lines.map((l) => l.msg),
      [0, 1, 2, 3, 4].map((i) => `rule r${i} is INACTIVE: egress v1 is down`),
    );
  });

  it('500 rules to one state: one line naming how many and 5 of them; back: one line', () => {
    const { lines, make } = setup();
    const t = make();
    const names = Array.from({ length: 500 }, (_, i) => `r${i}`);
    for (const n of names) t.add(n, st('active', 'ok'));
    t.flush();
    for (const n of names) t.add(n, st('inactive', 'egress v1 is down'));
    t.add('odd', st('degraded', 'MTU'));
    t.flush();
    assert.equal(lines.length, 2);
    assert.equal(
      lines[0].msg,
      "500 rules are INACTIVE: r0, r1, r2, r3, r4 and 495 more (each: egress v1 is down); each rule's status says its own (xdpctl rules list)",
    );
    assert.deepEqual(lines[0].fields, {
      state: 'INACTIVE',
      rules: 500,
      names: ['r0', 'r1', 'r2', 'r3', 'r4'],
      notListed: 495,
      reason: 'egress v1 is down',
      reasons: 1,
    });
    assert.equal(lines[1].msg, 'rule odd is DEGRADED: MTU');
    for (const n of names) t.add(n, st('active', 'ok'));
    t.flush();
    assert.equal(lines.length, 3);
    assert.equal(lines[2].level, 'info');
    assert.match(lines[2].msg, /^500 rules are ACTIVE: r0, r1, r2, r3, r4 and 495 more \(each: ok\)/);
  });
});
