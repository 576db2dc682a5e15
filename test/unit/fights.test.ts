/**
 * core/fights.ts against a fake clock: the third repair of one subject within the window is a fight (one
 * warning); a fight's repairs are counted, one summary line per window; once per subject per pass; the fight
 * ends (one line) a window after its last repair; its interfaces are reported as changed at both ends.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { FIGHT_WINDOW_MS, fightWindow, RepairFights, type RepairSubject } from '../../src/server/core/fights.js';
import type { Logger } from '../../src/server/log.js';

function setup() {
  let t = 1000;
  const out: { level: string; msg: string; fields: Record<string, unknown> }[] = [];
  const log = {
    info: (fields: Record<string, unknown>, msg: string) => out.push({ level: 'info', msg, fields }),
    warn: (fields: Record<string, unknown>, msg: string) => out.push({ level: 'warn', msg, fields }),
    debug: () => undefined,
  } as unknown as Logger;
  const f = new RepairFights(() => t);
  f.log = log;
  const subject: RepairSubject = {
    key: 'gro|5|2@ns|0',
    what: 'GRO on eth0 in netns ns, the veth peer of v5',
    interfaces: ['v5'],
  };
  let said = 0;
  /** One pass with one repair of `subject`, `ms` after the last. */
  const repair = (ms: number, s = subject) => {
    t += ms;
    f.beginPass();
    f.tick();
    f.repaired(s, () => said++);
  };
  const pass = (ms: number) => {
    t += ms;
    f.beginPass();
    f.tick();
  };
  return { f, out, repair, pass, said: () => said, subject };
}

describe('repair fights', () => {
  it('two repairs within the window are repairs; the third is a fight, said once, statuses told', () => {
    const { f, out, repair, said } = setup();
    repair(0);
    repair(2000);
    assert.equal(said(), 2);
    assert.equal(out.length, 0);
    assert.equal(f.current().length, 0);
    repair(2000);
    assert.equal(said(), 2, 'the third repair is said by the fight line, not its own');
    assert.equal(out.length, 1);
    assert.equal(out[0].level, 'warn');
    assert.match(
      out[0].msg,
      /^GRO on eth0 in netns ns, the veth peer of v5: repaired 3 times in 4\.0 s: something keeps undoing it/,
    );
    assert.deepEqual([...f.takeChanged()], ['v5']);
    assert.deepEqual([...f.takeChanged()], []);
    assert.match(f.byInterface().get('v5')!, /^GRO on .* keeps being undone/);
    assert.equal(f.fighting('v5'), true);
  });

  it('repairs spread over more than the window are no fight', () => {
    const { f, out, repair, said } = setup();
    for (let i = 0; i < 10; i++) repair(FIGHT_WINDOW_MS / 2 + 1);
    assert.equal(said(), 10);
    assert.equal(out.length, 0);
    assert.equal(f.current().length, 0);
  });

  it('a subject looked at every 6.8 s: three repairs 6.8 s apart are a fight in its window, which ends after it', () => {
    // The full kernel comparison of 10 000 rules ran every ~6.8 s: three repairs 6.7-6.8 s apart never fell
    // within 10 s, and another tool rewriting an entry in a loop was never said (a review found).
    const plain = setup();
    for (let i = 0; i < 4; i++) plain.repair(6800);
    assert.equal(plain.out.length, 0, 'the usual window: no fight');
    const window = fightWindow(6800);
    assert.equal(window, 20_400);
    assert.equal(fightWindow(1000), FIGHT_WINDOW_MS, 'a subject looked at each second: the usual window');
    const run = setup();
    for (let i = 0; i < 3; i++) {
      run.pass(6800);
      run.f.repaired(run.subject, () => undefined, window);
    }
    assert.equal(run.out.length, 1);
    assert.match(run.out[0].msg, /repaired 3 times in 13\.6 s: something keeps undoing it/);
    assert.match(run.out[0].msg, /until 20 s pass without one/);
    assert.match(run.f.current()[0].text, /repaired 3 times or more within 20 s/);
    // Over a window after the last repair (not 10 s).
    run.pass(15_000);
    assert.equal(run.f.current().length, 1, 'still a fight 15 s after the last repair');
    run.pass(6000);
    assert.equal(run.f.current().length, 0, 'over 21 s after it');
    assert.match(run.out.at(-1)!.msg, /no repair needed for 20 s: the fight is over after 3 repairs/);
  });

  it('one subject counts one repair per pass', () => {
    const { f, out, said, subject } = setup();
    f.beginPass();
    for (let i = 0; i < 5; i++) f.repaired(subject, () => undefined);
    f.beginPass();
    f.repaired(subject, () => undefined);
    assert.equal(out.length, 0, 'two passes, two repairs: no fight');
    assert.equal(said(), 0);
    assert.equal(f.current().length, 0);
  });

  it('a fight summarises its repairs once per window and ends a window after the last one, once', () => {
    const { f, out, repair, pass, said } = setup();
    repair(0);
    repair(500);
    repair(500); // the fight
    for (let i = 0; i < 16; i++) repair(500); // 8 s of repairs: no line yet
    assert.equal(out.length, 1);
    repair(2500); // 10.5 s since the fight's line: one summary of the 16 since (this one is the next window's)
    assert.equal(out.length, 2);
    assert.match(out[1].msg, /: repaired 16 more times in the last 11 s \(19 since the fight began/);
    repair(500);
    pass(FIGHT_WINDOW_MS - 500);
    assert.equal(
      out.length,
      3,
      'not over before a window without a repair; the next summary (a window after the last)',
    );
    assert.match(out[2].msg, /: repaired 2 more times in the last 10 s \(21 since the fight began/);
    assert.equal(f.current().length, 1);
    f.takeChanged();
    pass(499);
    assert.equal(out.length, 3);
    pass(1);
    assert.equal(out.length, 4);
    assert.equal(out[3].level, 'info');
    assert.match(out[3].msg, /: no repair needed for 10 s: the fight is over after 21 repairs in 11\.0 s$/);
    assert.deepEqual([...f.takeChanged()], ['v5']);
    assert.equal(f.current().length, 0);
    pass(FIGHT_WINDOW_MS * 3);
    assert.equal(out.length, 4);
    // Over: the next repairs count from scratch.
    repair(0);
    assert.equal(said(), 3);
  });

  it('subjects are counted apart', () => {
    const { f, out, repair } = setup();
    const other: RepairSubject = { key: 'xdp|7', what: 'our XDP program on v7', interfaces: ['v7'] };
    repair(0);
    repair(100, other);
    repair(100);
    repair(100, other);
    assert.equal(out.length, 0);
    repair(100);
    assert.equal(out.length, 1);
    assert.deepEqual(
      f.current().map((x) => x.subject.key),
      ['gro|5|2@ns|0'],
    );
  });

  it("a subject's owners (rules, link directions) are told at both ends, apart from its interfaces", () => {
    const { f, repair, pass } = setup();
    const entry: RepairSubject = {
      key: 'entry|port index (map rule_ports, port 7813)',
      what: 'the kernel entry port index (map rule_ports, port 7813)',
      interfaces: [],
      rules: ['web'],
      links: ['v9'],
    };
    repair(0, entry);
    repair(500, entry);
    assert.equal(f.byRule().size, 0);
    repair(500, entry);
    assert.match(
      f.byRule().get('web')!,
      /^the kernel entry port index \(map rule_ports, port 7813\) keeps being undone/,
    );
    assert.match(f.byLink().get('v9')!, /keeps being undone/);
    assert.equal(f.linkFighting('v9'), true);
    assert.equal(f.byInterface().size, 0, 'no interface named');
    assert.deepEqual([...f.takeChangedRules()], ['web']);
    assert.deepEqual([...f.takeChangedRules()], []);
    // A rule that comes to own it during the fight is judged again, as the one that stops owning it.
    repair(500, { ...entry, rules: ['api'] });
    assert.deepEqual([...f.takeChangedRules()].sort(), ['api', 'web']);
    assert.equal(f.byRule().has('web'), false);
    pass(FIGHT_WINDOW_MS);
    assert.equal(f.byRule().size, 0);
    assert.equal(f.linkFighting('v9'), false);
    assert.deepEqual([...f.takeChangedRules()], ['api']);
  });
});
