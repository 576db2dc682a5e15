#!/usr/bin/env node
/**
 * npm run bench: run the benchmarks and write bench/results.json and
 * BENCHMARKS.md. `--smoke` runs tiny counts and writes only the JSON given by
 * --out (the test suite uses it so that the benchmark code cannot rot).
 */
import { execFileSync } from 'node:child_process';
import { cpus, release } from 'node:os';
import { writeFileSync } from 'node:fs';

import { benchDatapath, type Figure } from './datapath.js';

const smoke = process.argv.includes('--smoke');
const outArg = process.argv.indexOf('--out');
const ROOT = new URL('..', import.meta.url).pathname;
const jsonPath = outArg > 0 ? process.argv[outArg + 1] : `${ROOT}bench/results.json`;

const opts = smoke
  ? { repeat: 1000, runs: 3, scaling: [1, 1000] }
  : { repeat: 1_000_000, runs: 7, scaling: [1, 1000, 100_000] };

const started = new Date();
const datapath = benchDatapath(opts);
const result = {
  date: started.toISOString(),
  kernel: release(),
  cpus: cpus().length,
  cpuModel: cpus()[0]?.model ?? 'unknown',
  command: smoke ? 'npm run bench -- --smoke' : 'npm run bench',
  datapath,
};
writeFileSync(jsonPath, JSON.stringify(result, null, 1));

const fmt = (n: number | undefined, d = 0) => (n === undefined ? '' : n.toFixed(d));
const row = (f: Figure) =>
  `| ${f.name} | ${fmt(f.median)} | ${fmt(f.min)}–${fmt(f.max)} | ${f.baseline ?? ''} | ${fmt(f.ratio, 2)}${f.ratio !== undefined ? 'x' : ''} | ${f.target !== undefined ? `≤ ${f.target}x: ${f.met ? 'met' : '**missed**'}` : ''} |`;
const md = `# Benchmarks

Measured ${started.toISOString().slice(0, 10)} on kernel ${result.kernel}, ${result.cpus} CPUs (${result.cpuModel}),
with \`${result.command}\`. Every figure is the median of ${opts.runs} runs with its range; baselines are
measured in the same run on the same frames, and ratios are against them (these machines are noisy:
compare ratios, not absolute numbers across runs).

## Datapath: per-packet cost (BPF_PROG_TEST_RUN, ${opts.repeat.toLocaleString('en')} repeats per run)

| path | ns/packet (median) | range | baseline | ratio | target |
| --- | --- | --- | --- | --- | --- |
${datapath.map(row).join('\n')}

Notes: test runs repeat on the frame the previous run left (kernel behaviour), so a rewritten UDP frame
is matched through the "any destination" entry from the second run on — the same two lookups a rule
without a destination always does. Not measured yet: live-frame delivery rates into a veth, the Linux
stack's own forwarding for comparison, and the control-plane figures (see the issue tracker).
`;
if (!smoke) writeFileSync(`${ROOT}BENCHMARKS.md`, md);
process.stdout.write(md);
void execFileSync;
