/**
 * The project's documents stand alone: every document a comment, script or doc cites
 * (`docs/<name>.md`, and `docs/kernel-notes.md, trap N`) exists in the repository, with the trap it names;
 * every promise cited as `docs/architecture.md, promise N` is there; and nothing cites what a reader of the
 * repository cannot open: a document outside it (the KERNEL-NOTES.md that once lived beside the checkout, a
 * HOUSE_STYLE.md), a path on the machine it was written on (/work/...), or an item of an issue tracker or a
 * review that is not in it ("issue 16 item 5", "review 17", "rev18 finding 4"). CHANGELOG.md is history and
 * may name what a change answered; everything else says it in words or cites docs/.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, it } from 'node:test';

const ROOT = new URL('../../', import.meta.url).pathname;
const SKIP = new Set(['node_modules', 'dist', 'build', '.git', 'gen']);
const SELF = 'test/unit/docs-cited.test.ts';

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((e) => {
    if (SKIP.has(e)) return [];
    const p = join(dir, e);
    if (statSync(p).isDirectory()) return files(p);
    return /\.(ts|mjs|js|c|h|sh|md|ya?ml|json)$|^Dockerfile$/.test(e) ? [p] : [];
  });
}
const sources = ['src', 'bpf', 'bench', 'scripts', 'test', 'deploy', 'docs', 'examples', 'proto']
  .filter((d) => existsSync(join(ROOT, d)))
  .flatMap((d) => files(join(ROOT, d)))
  .concat(
    ['README.md', 'BENCHMARKS.md', 'Dockerfile', 'docker-compose.yml', 'CHANGELOG.md', 'eslint.config.js'].map((f) =>
      join(ROOT, f),
    ),
  )
  .filter((f) => existsSync(f) && relative(ROOT, f) !== SELF)
  .map((f) => ({ path: relative(ROOT, f), text: readFileSync(f, 'utf8') }));

describe('documents cited', () => {
  it('every docs/*.md that is cited exists; every kernel-notes trap that is cited is there', () => {
    const traps = new Set(
      [...readFileSync(join(ROOT, 'docs/kernel-notes.md'), 'utf8').matchAll(/^(\d+)\. /gm)].map((m) => m[1]),
    );
    const missing: string[] = [];
    let cites = 0;
    for (const { path, text } of sources) {
      for (const m of text.matchAll(/docs\/([\w./-]+\.md)(?:,\s+traps?\s+(\d+))?/g)) {
        cites++;
        if (!existsSync(join(ROOT, 'docs', m[1]))) missing.push(`${path}: docs/${m[1]}`);
        if (m[2] && m[1] === 'kernel-notes.md' && !traps.has(m[2])) missing.push(`${path}: kernel-notes trap ${m[2]}`);
      }
    }
    assert.ok(cites >= 5, `citations found (${cites})`);
    assert.deepEqual(missing, []);
  });

  it('every architecture promise that is cited is there', () => {
    const arch = readFileSync(join(ROOT, 'docs/architecture.md'), 'utf8');
    const section = arch.slice(arch.indexOf("## Observe, don't assume"));
    const promises = new Set([...section.matchAll(/^(\d+)\. \*\*/gm)].map((m) => m[1]));
    assert.ok(promises.size >= 7, `promises found (${promises.size})`);
    const missing: string[] = [];
    let cites = 0;
    for (const { path, text } of sources) {
      for (const m of text.matchAll(
        /docs\/architecture\.md,\s+(?:\*\s+)?promises?\s+((?:\d+(?:,\s*|\s+and\s+|\s*\n\s*\*\s*)?)+)/g,
      )) {
        cites++;
        for (const n of m[1].match(/\d+/g)!) if (!promises.has(n)) missing.push(`${path}: promise ${n}`);
      }
    }
    assert.ok(cites >= 20, `citations found (${cites})`);
    assert.deepEqual(missing, []);
  });

  it('nothing cites a document, a path or a tracker item outside the repository', () => {
    const kinds: [string, RegExp][] = [
      ['a document outside the repository', /KERNEL-NOTES|HOUSE_STYLE|\.\.\/shared\/[\w-]+\.md/],
      ['a path on the machine it was written on', /\/work\/|\.slot\d*\.lock|LOAD RULE/],
      ['an issue or review item', /\b(?:issues?|reviews?)\s+#?\d+|\brev\d+\b/i],
    ];
    const outside: string[] = [];
    for (const { path, text } of sources) {
      text.split('\n').forEach((line, i) => {
        for (const [kind, re] of kinds) {
          if (kind === 'an issue or review item' && path === 'CHANGELOG.md') continue;
          if (re.test(line)) outside.push(`${path}:${i + 1}: ${kind}: ${line.trim().slice(0, 120)}`);
        }
      });
    }
    assert.deepEqual(outside, []);
  });
});
