/**
 * Rule transitions said together (core/rule-transitions.ts): a few rules each in their own line as before; many
 * that go to one state at once (one host event) in one line per state naming how many and 5 of them; each
 * transition said once.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { LogDamper } from '../../src/server/core/log-damper.js';
import type { RuleStatus } from '../../src/server/core/model.js';
import { backendStatus, egressProblem, messageHead, writtenRuleStatus } from '../../src/server/core/rule-status.js';
import { RuleTransitions } from '../../src/server/core/rule-transitions.js';

function setup(damper = new LogDamper()) {
  const lines: { level: string; fields: Record<string, unknown>; msg: string }[] = [];
  const log = {
    info: (fields: Record<string, unknown>, msg: string) => lines.push({ level: 'info', fields, msg }),
    warn: (fields: Record<string, unknown>, msg: string) => lines.push({ level: 'warn', fields, msg }),
  };
  let now = 0;
  const logged = new Map<string, string>();
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

/** Whether every parenthesis of `s` is closed, in order. */
function balanced(s: string): boolean {
  let depth = 0;
  for (const c of s) {
    if (c === '(') depth++;
    else if (c === ')' && --depth < 0) return false;
  }
  return depth === 0;
}

describe('rule transitions: every form of the line closes its parentheses', () => {
  // The statuses the datapath gives rules whose only backend's egress has no carrier (its veth peer down) or is
  // down: what a review read in the grouped line ("... (each: no backend can take traffic (all drained or unable
  // to receive: 198.18.2.1@x8: egress x8 has no carrier (nothing at its other end): matching packets are dropped);
  // ..." with one parenthesis never closed).
  const out = (iface: string, up: boolean) =>
    backendStatus({
      ip: '198.18.2.1',
      interface: iface,
      givenMac: '',
      mac: '02:00:00:00:00:01',
      resolved: true,
      egress: egressProblem(iface, { up, carrier: false, mtu: 1500 } as never),
    });
  const noCarrier = writtenRuleStatus([out('x8', true)], 0);
  const down = writtenRuleStatus([out('x9', false)], 0);
  const degraded = writtenRuleStatus([out('x8', true), { ...out('x7', true), receiving: true, message: '' }], 1);

  it("a backend's message is cut after what it is, never inside a parenthesis or a MAC", () => {
    assert.equal(
      messageHead('egress x8 has no carrier (nothing at its other end: for a veth, its peer is down): backend out'),
      'egress x8 has no carrier (nothing at its other end: for a veth, its peer is down)',
    );
    assert.equal(
      messageHead('MAC 02:42:ac:11:00:02 not confirmed yet: why'),
      'MAC 02:42:ac:11:00:02 not confirmed yet',
    );
    assert.equal(messageHead('no colon here'), 'no colon here');
    for (const s of [noCarrier, down, degraded]) assert.ok(balanced(s.message), s.message);
    assert.match(
      noCarrier.message,
      /^no backend can take traffic \(all drained or unable to receive: 198\.18\.2\.1@x8: egress x8 has no carrier \(nothing at its other end: for a veth, its peer is down\)\): matching packets are dropped$/,
    );
  });

  const forms: { form: string; run: (t: RuleTransitions, flush: () => void) => void; count: number }[] = [
    {
      form: 'one rule',
      count: 1,
      run: (t) => t.add('a', noCarrier),
    },
    {
      form: 'a few rules, each its own line',
      count: 3,
      run: (t) => ['a', 'b', 'c'].forEach((n) => t.add(n, noCarrier)),
    },
    {
      form: 'many rules, one reason (each: ...)',
      count: 1,
      run: (t) => Array.from({ length: 7 }, (_, i) => t.add(`r${i}`, noCarrier)),
    },
    {
      form: 'many rules, several reasons (e.g. ...; N different reasons)',
      count: 1,
      run: (t) => Array.from({ length: 7 }, (_, i) => t.add(`r${i}`, i % 2 ? down : noCarrier)),
    },
    {
      form: 'many DEGRADED rules',
      count: 1,
      run: (t) => Array.from({ length: 6 }, (_, i) => t.add(`r${i}`, degraded)),
    },
  ];
  for (const f of forms) {
    it(`${f.form}: every line balanced`, () => {
      const { lines, make } = setup();
      const t = make();
      f.run(t, () => t.flush());
      t.flush();
      assert.equal(lines.length, f.count, lines.map((l) => l.msg).join('\n'));
      for (const l of lines) assert.ok(balanced(l.msg), l.msg);
    });
  }

  it('the flapping summaries of one rule and of many: balanced', () => {
    const damper = new LogDamper(1, 1_000_000);
    const { lines, make } = setup(damper);
    const t = make();
    // Three flips each of one rule and of a group of 7, each in its own batch (the first of each is logged, the
    // others counted into a summary when the window ends).
    for (let k = 0; k < 3; k++) {
      t.add('one', k % 2 ? down : noCarrier);
      t.flush();
      for (let i = 0; i < 7; i++) t.add(`r${i}`, k % 2 ? down : noCarrier);
      t.flush();
    }
    damper.flush(2_000_000);
    const summaries = lines.filter((l) => /not logged one by one/.test(l.msg));
    assert.deepEqual(
      summaries.map((l) => l.msg.slice(0, 40)),
      ['rule one: 2 more state changes in 2000 s', 'rules: 2 more changes of many rules at o'],
    );
    for (const l of lines) assert.ok(balanced(l.msg), l.msg);
  });
});
