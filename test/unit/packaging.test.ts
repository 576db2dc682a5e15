/**
 * What `npm pack` ships, without packing (test/integration/package.test.ts packs and installs):
 * - prepack removes compiled files whose source is gone (tsc -b only ever writes: a stale
 *   dist/server/<old>.js used to be packed), and keeps the ones the sources produce;
 * - the light client packs from a fresh clone with a message that says what to do, not exit 127;
 * - every relative link in a README that a package ships points at a file that package ships
 *   (the root README links docs/*.md; the light client's README linked ../../README.md).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, normalize } from 'node:path';
import { after, describe, it } from 'node:test';

const ROOT = new URL('../../', import.meta.url).pathname;
const tmp = mkdtempSync(join(tmpdir(), 'xdpctl-packaging-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

interface Pkg {
  files: string[];
  scripts: Record<string, string>;
}
const readPkg = (p: string) => JSON.parse(readFileSync(join(ROOT, p), 'utf8')) as Pkg;

const write = (p: string, text = '') => {
  mkdirSync(dirname(p), { recursive: true });
  writeFileSync(p, text);
};

describe('packaging', () => {
  it('clean-dist removes compiled files without a source and keeps the others', () => {
    const d = join(tmp, 'clean');
    for (const s of ['src/a.ts', 'src/x/b.ts']) write(join(d, s));
    const keep = ['out/a.js', 'out/a.d.ts', 'out/x/b.js', 'out/x/b.d.ts', 'out/x/b.js.map', 'out/build.tsbuildinfo'];
    const gone = ['out/stale.js', 'out/stale.d.ts', 'out/x/old.d.ts.map', 'out/old/only.js'];
    for (const f of [...keep, ...gone]) write(join(d, f), 'x');
    const r = spawnSync(process.execPath, [join(ROOT, 'scripts/clean-dist.mjs'), 'out', 'src'], {
      cwd: d,
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, r.stderr);
    for (const f of keep) assert.ok(existsSync(join(d, f)), `${f} kept`);
    for (const f of gone) assert.ok(!existsSync(join(d, f)), `${f} removed`);
    assert.ok(!existsSync(join(d, 'out/old')), 'an emptied directory is removed');
    assert.match(r.stdout, /removed out\/stale\.js \(no source\)/);
  });

  it('both packages clean their compiled output in prepack', () => {
    assert.match(readPkg('package.json').scripts.prepack, /scripts\/clean-dist\.mjs dist src/);
    assert.equal(readPkg('packages/client/package.json').scripts.prepack, 'bash ../../scripts/pack-client.sh');
    assert.match(
      readFileSync(join(ROOT, 'scripts/pack-client.sh'), 'utf8'),
      /clean-dist\.mjs packages\/client\/dist src/,
    );
  });

  it('the light client from a fresh clone (no node_modules): a message naming the step, not exit 127', () => {
    const clone = join(tmp, 'clone');
    mkdirSync(join(clone, 'scripts'), { recursive: true });
    copyFileSync(join(ROOT, 'scripts/pack-client.sh'), join(clone, 'scripts/pack-client.sh'));
    const r = spawnSync('bash', ['../../scripts/pack-client.sh'], {
      cwd: (mkdirSync(join(clone, 'packages/client'), { recursive: true }), join(clone, 'packages/client')),
      encoding: 'utf8',
    });
    assert.equal(r.status, 1, r.stderr);
    assert.equal(
      r.stderr,
      `packages/client: no TypeScript compiler at ${clone}/node_modules/.bin/tsc: the light client is compiled by ` +
        `the repository's; run \`npm run setup\` (or \`npm ci\`) at ${clone} first, then pack again\n`,
    );
  });

  // What npm packs: the `files` entries, and README, LICENSE and package.json always.
  const shipped = (pkgDir: string, path: string) => {
    const files = readPkg(join(pkgDir, 'package.json')).files.filter((f) => !f.startsWith('!'));
    return (
      ['README.md', 'LICENSE', 'package.json'].includes(path) ||
      files.some((f) => (f.endsWith('/') ? path.startsWith(f) : path === f))
    );
  };
  for (const pkgDir of ['.', 'packages/client']) {
    it(`${pkgDir === '.' ? 'xdpctl' : '@xdpctl/client'}: every relative link in its README is shipped with it`, () => {
      const readme = readFileSync(join(ROOT, pkgDir, 'README.md'), 'utf8');
      const links = [...readme.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1]).filter((l) => !/^[a-z]+:|^#/.test(l));
      const notShipped = links
        .map((l) => normalize(l.split('#')[0]))
        .filter((p) => p.startsWith('..') || !shipped(pkgDir, p) || !existsSync(join(ROOT, pkgDir, p)));
      assert.deepEqual(notShipped, []);
    });
  }
});
