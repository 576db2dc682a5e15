#!/usr/bin/env node
/**
 * Only the control-plane benchmarks (for working on them and profiling):
 *   node --import tsx bench/cp-run.ts [--smoke] [--only change,apply,watch,start,scale] [--sizes 1,100] [--watchers 1,1000] [--watch-modes full,changes]
 *     [--scale-sizes 10,10000] [--scale-changes 100] [--start-runs 1] [--out file.json]
 * `npm run bench` runs them with everything else.
 */
import { writeFileSync } from 'node:fs';

import { benchControl, renderControl } from './control.js';

const smoke = process.argv.includes('--smoke');
const outArg = process.argv.indexOf('--out');
const onlyArg = process.argv.indexOf('--only');
const only = onlyArg > 0 ? process.argv[onlyArg + 1].split(',') : undefined;
const sizesArg = process.argv.indexOf('--sizes');
const applySizes = sizesArg > 0 ? process.argv[sizesArg + 1].split(',').map(Number) : undefined;
const watchersArg = process.argv.indexOf('--watchers');
const watchers = watchersArg > 0 ? process.argv[watchersArg + 1].split(',').map(Number) : undefined;
const modesArg = process.argv.indexOf('--watch-modes');
const watchModes = modesArg > 0 ? (process.argv[modesArg + 1].split(',') as ('full' | 'changes')[]) : undefined;
const scaleArg = process.argv.indexOf('--scale-sizes');
const scaleSizes = scaleArg > 0 ? process.argv[scaleArg + 1].split(',').map(Number) : undefined;
const scaleChangesArg = process.argv.indexOf('--scale-changes');
const scaleChanges = scaleChangesArg > 0 ? Number(process.argv[scaleChangesArg + 1]) : undefined;
const startRunsArg = process.argv.indexOf('--start-runs');
const startRuns = startRunsArg > 0 ? Number(process.argv[startRunsArg + 1]) : undefined;
const figs = await benchControl({ smoke, only, applySizes, watchers, watchModes, scaleSizes, scaleChanges, startRuns });
if (outArg > 0) writeFileSync(process.argv[outArg + 1], JSON.stringify(figs, null, 1));
process.stdout.write(renderControl(figs, smoke));
