/**
 * The project's documents stand alone: every document a comment, script or doc cites
 * (`docs/<name>.md`, and `docs/kernel-notes.md, trap N`) exists in the repository, with the trap it names;
 * and nothing cites a document outside it (the KERNEL-NOTES.md that once lived beside the checkout).
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
  .concat(['README.md', 'Dockerfile', 'docker-compose.yml', 'CHANGELOG.md'].map((f) => join(ROOT, f)))
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

  it('nothing cites a document outside the repository', () => {
    const outside = sources
      .filter(({ text }) => /KERNEL-NOTES|\.\.\/shared\/[\w-]+\.md|\/work\/shared/.test(text))
      .map(({ path }) => path);
    assert.deepEqual(outside, []);
  });
});
