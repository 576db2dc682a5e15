/**
 * LogDamper (core/log-damper.ts): a flapping subject's transition lines, the first ones as they come, the
 * rest counted into one summary per window; a quiet subject's first line always logged at once.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { DAMP_BURST, DAMP_WINDOW_MS, LogDamper } from '../../src/server/core/log-damper.js';
import { LOGGED_PROBLEMS, loggedProblems } from '../../src/server/daemon.js';

describe('LogDamper', () => {
  const run = () => {
    const out: string[] = [];
    const d = new LogDamper();
    const line = (subject: string, t: number, text: string) =>
      d.line(
        subject,
        t,
        () => out.push(`${subject}: ${text}`),
        (n, ms) => out.push(`${subject}: ${n} not logged in ${ms} ms, last ${text}`),
      );
    return { out, d, line };
  };

  it('logs the first lines of a window, then one summary with the count and the last line', () => {
    const { out, d, line } = run();
    // 2 flips a second for 9.5 s: 20 lines.
    for (let i = 0; i < 20; i++) line('rule/t3', i * 500, i % 2 ? 'ACTIVE' : 'INACTIVE');
    assert.equal(out.length, DAMP_BURST, 'the first ones, as they came');
    assert.equal(out[0], 'rule/t3: INACTIVE');
    d.flush(DAMP_WINDOW_MS - 1);
    assert.equal(out.length, DAMP_BURST, 'no summary before the window ends');
    d.flush(DAMP_WINDOW_MS);
    assert.deepEqual(out.slice(DAMP_BURST), [
      `rule/t3: ${20 - DAMP_BURST} not logged in ${DAMP_WINDOW_MS} ms, last ACTIVE`,
    ]);
  });

  it('a subject that keeps flapping gets one summary per window; once quiet, its next line shows at once', () => {
    const { out, d, line } = run();
    let t = 0;
    for (; t < 3 * DAMP_WINDOW_MS; t += 500) {
      line('datapath', t, `p${t}`);
      d.flush(t);
    }
    // Window 1: DAMP_BURST lines and a summary; windows 2 and 3: a summary each (the third at the flush below).
    d.flush(t);
    assert.equal(out.length, DAMP_BURST + 3, out.join('\n'));
    assert.match(out[DAMP_BURST + 1], /^datapath: 20 not logged in 10000 ms, last p19500$/);
    assert.match(out[DAMP_BURST + 2], /^datapath: 20 not logged in 10000 ms, last p29500$/);
    // A quiet window ends the damping: the next line is logged as it comes.
    d.flush(t + DAMP_WINDOW_MS);
    line('datapath', t + DAMP_WINDOW_MS + 1, 'again');
    assert.equal(out.at(-1), 'datapath: again');
  });

  it('subjects are damped apart', () => {
    const { out, line } = run();
    for (let i = 0; i < DAMP_BURST + 1; i++) line('rule/a', i, `a${i}`);
    line('rule/b', DAMP_BURST + 1, 'b0');
    assert.equal(out.length, DAMP_BURST + 1);
    assert.equal(out.at(-1), 'rule/b: b0');
  });
});

describe('"datapath not as desired": the problems it lists', () => {
  it('all of them up to LOGGED_PROBLEMS; past that the first ones, with how many there are and are not listed', () => {
    const few = Array.from({ length: LOGGED_PROBLEMS }, (_, i) => `p${i}`);
    assert.deepEqual(loggedProblems(few), { problems: few });
    const many = Array.from({ length: 10_000 }, (_, i) => `rule r${i} is DEGRADED: x`);
    const l = loggedProblems(many);
    assert.deepEqual(l.problems, many.slice(0, LOGGED_PROBLEMS));
    assert.equal(l.problemCount, 10_000);
    assert.equal(l.notListed, 10_000 - LOGGED_PROBLEMS);
  });
});
