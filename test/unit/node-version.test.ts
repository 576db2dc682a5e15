/**
 * Every bin started on a Node older than package.json's engines.node stops at once with a message naming
 * the Node it needs and scripts/with-node — before any native addon is loaded (a system Node 20 used to
 * reach koffi and better-sqlite3 and stop with ERR_DLOPEN_FAILED, NODE_MODULE_VERSION 137 vs 115).
 *
 * The bins run as compiled (dist/, which scripts/run-tests.mjs builds) on this Node, told by a preloaded
 * module that it is Node 20.0.0; the same module records every process.dlopen (how Node loads a native
 * addon), so "nothing native was loaded" is observed, not assumed.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

import { engineMinimum, tooOldMessage, versionAtLeast } from '../../src/shared/node-version.js';

const ROOT = new URL('../../', import.meta.url).pathname;
const pkg = JSON.parse(readFileSync(`${ROOT}package.json`, 'utf8')) as {
  engines: { node: string };
  bin: Record<string, string>;
};

const OLD = '20.0.0';
const PRELOAD =
  'data:text/javascript,' +
  encodeURIComponent(
    `Object.defineProperty(process.versions, 'node', { value: '${OLD}' });` +
      'const dlopen = process.dlopen;' +
      'process.dlopen = function (m, f, ...r) { process.stderr.write("DLOPEN " + f + "\\n"); return dlopen.call(this, m, f, ...r); };',
  );

describe('bins on a Node older than engines.node', () => {
  const min = engineMinimum(pkg.engines.node);
  for (const [bin, file] of Object.entries(pkg.bin)) {
    it(`${bin} stops at once, names Node ${min} and scripts/with-node, loads no native addon`, () => {
      // Arguments it would otherwise act on: --help prints and exits 0 on a supported Node.
      const r = spawnSync(process.execPath, ['--import', PRELOAD, `${ROOT}${file}`, '--help'], {
        cwd: ROOT,
        encoding: 'utf8',
        timeout: 20_000,
      });
      assert.equal(r.stdout, '', 'nothing else ran');
      assert.doesNotMatch(r.stderr, /DLOPEN/, 'a native addon was loaded first');
      assert.equal(r.status, bin === 'xdpctl-health' ? 3 : 1, r.stderr);
      assert.equal(
        r.stderr,
        `${bin}: needs Node ${min} or later (package.json "engines": "${pkg.engines.node}"); this is Node ${OLD} ` +
          `(${process.execPath}). Run it on the project's pinned Node through ${ROOT}scripts/with-node ` +
          `(\`${ROOT}scripts/with-node ${ROOT}${file} ...\`), or put Node ${min} or later first on PATH.\n`,
      );
    });
  }

  it('the same bins on this Node run (the check lets a supported Node through)', () => {
    assert.ok(versionAtLeast(process.versions.node, min), `the tests run on Node ${process.versions.node}`);
    for (const file of Object.values(pkg.bin)) {
      const r = spawnSync(process.execPath, [`${ROOT}${file}`, '--help'], { cwd: ROOT, encoding: 'utf8' });
      assert.equal(r.status, 0, `${file}: ${r.stderr}`);
      assert.match(r.stdout, /Usage|usage/);
    }
  });
});

describe('node-version', () => {
  it('compares versions numerically per part', () => {
    assert.ok(versionAtLeast('22.15.0', '22.15.0'));
    assert.ok(versionAtLeast('22.15.1', '22.15.0'));
    assert.ok(versionAtLeast('24.0.0', '22.15.0'));
    assert.ok(versionAtLeast('22.100.0', '22.15.0'));
    assert.ok(!versionAtLeast('22.9.0', '22.15.0'));
    assert.ok(!versionAtLeast('20.20.2', '22.15.0'));
    assert.ok(!versionAtLeast('3.0.0', '22.15.0'));
  });

  it("reads package.json's engines.node (and refuses a form it cannot check)", () => {
    assert.equal(engineMinimum(pkg.engines.node), '22.15.0');
    assert.equal(engineMinimum('>= v24'), '24');
    assert.throws(() => engineMinimum('^22 || ^24'), /not of the form/);
    // The light client's package says the same.
    const client = JSON.parse(readFileSync(`${ROOT}packages/client/package.json`, 'utf8')) as typeof pkg;
    assert.equal(client.engines.node, pkg.engines.node);
  });

  it('without a checkout, the message says what to install', () => {
    assert.equal(
      tooOldMessage('xdpctl', '20.20.2', '>=22.15.0', '/usr/bin/node'),
      'xdpctl: needs Node 22.15.0 or later (package.json "engines": ">=22.15.0"); this is Node 20.20.2 ' +
        '(/usr/bin/node). Install Node 22.15.0 or later and run it with that.\n',
    );
    assert.equal(tooOldMessage('xdpctl', '22.15.0', '>=22.15.0', '/usr/bin/node'), undefined);
  });
});
