/**
 * The supported runtime is stated truthfully: package.json's `engines.node` (a minimum) is accepted by
 * every package in the lockfile that states its own `engines.node` (npm warns EBADENGINE otherwise),
 * and the pinned version (.node-version: what setup fetches, the Docker image and CI run) satisfies
 * ours and theirs. The tests themselves run on a Node that satisfies engines (scripts/run-tests.mjs).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

import semver from 'semver';

const ROOT = new URL('../../', import.meta.url).pathname;
const pkg = JSON.parse(readFileSync(`${ROOT}package.json`, 'utf8')) as { engines: { node: string } };
const lock = JSON.parse(readFileSync(`${ROOT}package-lock.json`, 'utf8')) as {
  packages: Record<string, { version?: string; engines?: { node?: string } | string[] }>;
};
const pin = readFileSync(`${ROOT}.node-version`, 'utf8').trim();

/** Every lockfile package with an engines.node range: [path@version, range]. */
const ranges = Object.entries(lock.packages)
  .filter(([p, v]) => p !== '' && v.engines && !Array.isArray(v.engines) && v.engines.node)
  .map(([p, v]) => [`${p.replace(/^.*node_modules\//, '')}@${v.version}`, (v.engines as { node: string }).node]);

describe('runtime', () => {
  it('engines.node is a minimum that every dependency in the lockfile accepts', () => {
    const m = /^>=\s*(\d+\.\d+\.\d+)$/.exec(pkg.engines.node);
    assert.ok(m, `engines.node is ">=x.y.z" (${pkg.engines.node})`);
    const min = m[1];
    assert.ok(ranges.length > 20, `the lockfile states engines for many packages (${ranges.length})`);
    const refused = ranges.filter(([, r]) => !semver.satisfies(min, r, { includePrerelease: true }));
    assert.deepEqual(refused, [], `packages that need more than Node ${min}`);
  });

  it('the pinned Node (.node-version) is a current LTS that satisfies engines and every dependency', () => {
    assert.ok(semver.valid(pin), `.node-version is a version (${pin})`);
    assert.ok(semver.satisfies(pin, pkg.engines.node), `${pin} satisfies ${pkg.engines.node}`);
    assert.equal(semver.major(pin) % 2, 0, 'an even major: an LTS line');
    assert.ok(semver.major(pin) >= 22, 'Node 20 reached end of life in April 2026');
    const refused = ranges.filter(([, r]) => !semver.satisfies(pin, r, { includePrerelease: true }));
    assert.deepEqual(refused, []);
  });

  it('runs on a Node that satisfies engines', () => {
    assert.ok(semver.satisfies(process.versions.node, pkg.engines.node), process.version);
  });
});
