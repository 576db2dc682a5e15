#!/usr/bin/env node
// Remove from a compiled output directory every file whose TypeScript source no longer exists, so that
// `npm pack` (prepack) never ships a stale module that tsc -b left behind (tsc only writes, never deletes).
// Files the current sources produce are kept as they are: tests running beside a pack keep their dist/.
//   node scripts/clean-dist.mjs <outDir> <rootDir>     e.g. dist src
import { readdirSync, rmSync, existsSync } from 'node:fs';
import { join, relative } from 'node:path';

const [outDir, rootDir] = process.argv.slice(2);
if (!outDir || !rootDir) {
  process.stderr.write('usage: node scripts/clean-dist.mjs <outDir> <rootDir>\n');
  process.exit(2);
}

/** The source a compiled file comes from: a.js, a.d.ts, a.js.map, a.d.ts.map -> a.ts. */
export const sourceOf = (file) => file.replace(/(\.d)?\.(js|ts)(\.map)?$/, '.ts');

const removed = [];
function walk(dir) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      walk(p);
      if (readdirSync(p).length === 0) rmSync(p, { recursive: true });
    } else if (e.name.endsWith('.tsbuildinfo')) {
      continue;
    } else if (!existsSync(join(rootDir, sourceOf(relative(outDir, p))))) {
      rmSync(p);
      removed.push(p);
    }
  }
}
if (existsSync(outDir)) walk(outDir);
for (const p of removed) process.stdout.write(`clean-dist: removed ${p} (no source)\n`);
