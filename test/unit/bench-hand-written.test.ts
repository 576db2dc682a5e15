/**
 * `npm run bench` rewrites BENCHMARKS.md's tables and keeps what was written by hand below the marker
 * (before, every run threw the analysis sections away).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

import { HAND_WRITTEN, handWritten } from '../../bench/hand-written.js';

describe('BENCHMARKS.md hand-written part', () => {
  it('is everything from the marker line on, and nothing without one', () => {
    const doc = `# Benchmarks\n\n## Table\n| a |\n\n${HAND_WRITTEN}\n\n## Analysis\ntext\n`;
    assert.equal(handWritten(doc), `${HAND_WRITTEN}\n\n## Analysis\ntext\n`);
    assert.equal(handWritten('# Benchmarks\n\n## Table\n'), '');
  });
  it("the repository's BENCHMARKS.md has the marker, after every generated section", () => {
    const md = readFileSync(new URL('../../BENCHMARKS.md', import.meta.url), 'utf8');
    const kept = handWritten(md);
    assert.ok(kept.length > 0, 'marker present');
    const generated = md.slice(0, md.length - kept.length);
    for (const heading of [
      '## Datapath: per-packet cost',
      '## Datapath: live frames',
      '## Control plane (a real xdpctld',
    ]) {
      assert.ok(generated.includes(heading), `${heading} is above the marker`);
      assert.ok(!kept.includes(heading), `${heading} is not below the marker`);
    }
  });
});
