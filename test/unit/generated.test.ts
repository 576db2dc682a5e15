/**
 * src/gen must be exactly what `buf generate` makes from proto/: regenerate
 * into a temporary directory and compare file by file.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { describe, it } from 'node:test';

const ROOT = new URL('../..', import.meta.url).pathname;

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((e) => {
    const p = join(dir, e);
    return statSync(p).isDirectory() ? files(p) : [p];
  });
}

describe('generated code', () => {
  it('matches the protos', () => {
    execFileSync('bash', [join(ROOT, 'scripts/buf.sh'), 'lint'], { cwd: ROOT, stdio: 'pipe' });
    const out = mkdtempSync(join(tmpdir(), 'xdpctl-gen-'));
    try {
      execFileSync('bash', [join(ROOT, 'scripts/buf.sh'), 'generate', '--output', out], { cwd: ROOT, stdio: 'pipe' });
      const fresh = files(join(out, 'src/gen'))
        .map((f) => relative(join(out, 'src/gen'), f))
        .sort();
      const committed = files(join(ROOT, 'src/gen'))
        .map((f) => relative(join(ROOT, 'src/gen'), f))
        .sort();
      assert.deepEqual(committed, fresh, 'same files');
      for (const f of fresh) {
        assert.equal(
          readFileSync(join(ROOT, 'src/gen', f), 'utf8'),
          readFileSync(join(out, 'src/gen', f), 'utf8'),
          `src/gen/${f} differs from buf generate: run npm run generate`,
        );
      }
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});
