#!/usr/bin/env node
// Runs every test/**/*.test.ts with Node's own test runner (TypeScript through
// tsx). Unit tests need no root; integration tests need root and a real kernel
// and, under CI=true, fail instead of skipping. Args narrow the set:
//   node scripts/run-tests.mjs unit        only test/unit
//   node scripts/run-tests.mjs test/integration/xconnect.test.ts
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
function find(dir) {
  return readdirSync(dir).flatMap((e) => {
    const p = join(dir, e);
    return statSync(p).isDirectory() ? find(p) : p.endsWith('.test.ts') ? [p] : [];
  });
}
const args = process.argv.slice(2);
let files = find(join(root, 'test')).sort();
if (args.length) files = files.filter((f) => args.some((a) => f.includes(a)));
if (files.length === 0) {
  console.error('run-tests: no test files matched');
  process.exit(1);
}
const r = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--test', '--test-reporter=spec', '--test-concurrency=2', ...files],
  { stdio: 'inherit', cwd: root },
);
process.exit(r.status ?? 1);
