#!/usr/bin/env node
// Runs every test/**/*.test.ts with Node's own test runner (test files are
// TypeScript, loaded through tsx; the programs they start run from dist/).
// Unit tests need no root; integration tests need root and a real kernel
// and, under CI=true, fail instead of skipping. It runs on the project's Node
// (re-executing itself through scripts/with-node when this one is older than
// package.json's engines) and compiles src/ to dist/ first (tsc -b,
// incremental), so it needs `npm run setup` (or one `npm test`) once. Args
// narrow the set:
//   node scripts/run-tests.mjs unit        only test/unit
//   node scripts/run-tests.mjs test/integration/xconnect.test.ts
//   node scripts/run-tests.mjs --cpu-hog access-backpressure   (the files under a CPU hog)
// The files in ALONE run after the others, by themselves: they judge a
// process-wide quantity of the daemon (its RSS), which the other files' work
// moves. Under CI=true they run once more, beside a busy child process that
// keeps one core at 100 %: the suite must pass on a loaded machine, and this
// keeps that true.
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Test files that run by themselves after the rest, and under CI once more with another core busy (they
 * wait on conditions, not on timing). access-backpressure bounds the RSS the daemon adds in 10 s (2 MB):
 * beside another test file, which creates and removes namespaces, veths and daemons the whole time,
 * unchanged code measured 4-8 MB there (CI of 2026-12-05: 4.0 MB; alone 0.0-1.3 MB, under the hog 0.1 MB).
 */
const ALONE = ['test/integration/access-backpressure.test.ts'];

/**
 * Test files that run one at a time after the rest (before ALONE), beside no other file: they hold a resource of
 * the whole host that no namespace isolates. neighbour-table-full fills the kernel's IPv4 neighbour table (one
 * table, one gc_thresh3, for every namespace): while it is full no other file could make a neighbour entry.
 */
const BY_ITSELF = ['test/integration/neighbour-table-full.test.ts'];

/**
 * The longest files start first, in this order; the others follow in alphabetical order. Two files run at a
 * time, so a long file that starts late runs on alone at the end. The CPU-bound ones (hostile-input,
 * concurrency, large-responses, rollback-property) are spaced out so that each runs beside files that mostly
 * wait for reconciler passes, not beside each other. Seconds each took in the CI run of 2026-12-05.
 */
const FIRST = [
  'test/integration/hostile-input.test.ts', // 122 s, CPU-bound
  'test/integration/tls.test.ts', // 56
  'test/integration/config-file.test.ts', // 30
  'test/integration/reconciler.test.ts', // 29
  'test/integration/concurrency.test.ts', // 98, CPU-bound (a 60 s soak)
  'test/integration/single-instance.test.ts', // 29
  'test/integration/adopt-unprivileged.test.ts', // 28
  'test/integration/large-responses.test.ts', // 67, CPU-bound
  'test/integration/static-mac.test.ts', // 24
  'test/integration/bench-smoke.test.ts', // 25
  'test/integration/kernel-drift.test.ts', // 23
  'test/unit/rollback-property.test.ts', // 31-41, CPU-bound
  'test/integration/package.test.ts', // 23
  'test/integration/reapply-truth.test.ts', // 23
  'test/integration/cli.test.ts', // 23
  'test/integration/egress-unverifiable.test.ts', // 21
  'test/integration/start-refused.test.ts', // 20
];

const root = fileURLToPath(new URL('..', import.meta.url));

// The project's Node: engines' minimum, else re-run through scripts/with-node (the pinned version).
const min = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).engines.node.replace(/^>=/, '');
const older = (a, b) => {
  const [x, y] = [a, b].map((v) => v.split('.').map(Number));
  for (let i = 0; i < 3; i++) if (x[i] !== y[i]) return x[i] < y[i];
  return false;
};
if (older(process.versions.node, min)) {
  const r = spawnSync(join(root, 'scripts/with-node'), ['node', ...process.argv.slice(1)], { stdio: 'inherit' });
  process.exit(r.status ?? 1);
}
// dist/ up to date with src/ (what the tests' daemons and CLIs run).
const tsc = spawnSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-b', 'tsconfig.build.json'], {
  stdio: 'inherit',
  cwd: root,
});
if (tsc.status !== 0) {
  console.error('run-tests: tsc -b tsconfig.build.json failed');
  process.exit(1);
}
// The reflection descriptor (and the HTTP/JSON listener's JSON mapping) up to date with proto/, as setup makes it: a
// descriptor older than a .proto maps JSON without the fields added since (a test then sees them missing).
const newest = (dir) =>
  Math.max(
    ...readdirSync(dir, { withFileTypes: true }).map((e) =>
      e.isDirectory() ? newest(join(dir, e.name)) : statSync(join(dir, e.name)).mtimeMs,
    ),
  );
const descriptor = join(root, 'build/descriptor.binpb');
if (!existsSync(descriptor) || statSync(descriptor).mtimeMs < newest(join(root, 'proto'))) {
  const buf = spawnSync('bash', [join(root, 'scripts/buf.sh'), 'build', '-o', descriptor], {
    stdio: 'inherit',
    cwd: root,
  });
  if (buf.status !== 0) {
    console.error('run-tests: buf build -o build/descriptor.binpb failed');
    process.exit(1);
  }
}
chmodSync(join(root, 'dist/server/main.js'), 0o755);
chmodSync(join(root, 'dist/client/cli.js'), 0o755);
chmodSync(join(root, 'dist/client/health-probe.js'), 0o755);
function find(dir) {
  return readdirSync(dir).flatMap((e) => {
    const p = join(dir, e);
    return statSync(p).isDirectory() ? find(p) : p.endsWith('.test.ts') ? [p] : [];
  });
}
let args = process.argv.slice(2);
const hogAll = args.includes('--cpu-hog');
args = args.filter((a) => a !== '--cpu-hog');
const rank = (f) => {
  const i = FIRST.findIndex((l) => f.endsWith(l));
  return i < 0 ? FIRST.length : i;
};
let files = find(join(root, 'test'))
  .sort()
  .sort((a, b) => rank(a) - rank(b));
if (args.length) files = files.filter((f) => args.some((a) => f.includes(a)));
if (files.length === 0) {
  console.error('run-tests: no test files matched');
  process.exit(1);
}
const alone = hogAll ? [] : files.filter((f) => ALONE.some((u) => f.endsWith(u)));
const byItself = hogAll ? [] : files.filter((f) => BY_ITSELF.some((u) => f.endsWith(u)));
const loaded = hogAll ? files : process.env.CI === 'true' ? alone : [];
const plain = hogAll ? [] : files.filter((f) => !alone.includes(f) && !byItself.includes(f));

const run = (set, concurrency = 2) =>
  spawnSync(
    process.execPath,
    ['--import', 'tsx', '--test', '--test-reporter=spec', `--test-concurrency=${concurrency}`, ...set],
    { stdio: 'inherit', cwd: root },
  ).status ?? 1;

let status = plain.length ? run(plain) : 0;
if (byItself.length) {
  console.log(`run-tests: one at a time: ${byItself.map((f) => f.slice(root.length)).join(' ')}`);
  status = run(byItself, 1) || status;
}
if (alone.length) {
  console.log(`run-tests: by themselves: ${alone.map((f) => f.slice(root.length)).join(' ')}`);
  status = run(alone) || status;
}
if (loaded.length) {
  // A busy loop in its own process: the scheduler gives it a core, as a second workload would. It
  // exits by itself if this runner dies (its parent changes) so that it never outlives the run.
  const loop = `const p = process.ppid; for (let i = 1; ; i++) if ((i & 0xffffff) === 0 && process.ppid !== p) process.exit();`;
  const hog = spawn(process.execPath, ['-e', loop], { stdio: 'ignore' });
  console.log(`run-tests: under a CPU hog (pid ${hog.pid}): ${loaded.map((f) => f.slice(root.length)).join(' ')}`);
  try {
    const s = run(loaded);
    status = status || s;
  } finally {
    hog.kill('SIGKILL');
  }
}
process.exit(status);
