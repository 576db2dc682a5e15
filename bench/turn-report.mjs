#!/usr/bin/env node
// What ran in each long interval bench/turn-probe.mjs recorded:
//   node bench/turn-report.mjs <XDPCTL_TURN_PROBE path>
// prints the intervals' CPU times, then, for each one inside the profile (if one was written), the functions
// with the most samples in it (self) and the daemon's own functions on those samples' stacks (inclusive).
import { readFileSync } from 'node:fs';

const [file] = process.argv.slice(2);
const longs = JSON.parse(readFileSync(`${file}.longs.json`, 'utf8'));
process.stdout.write(
  `${longs.length} intervals over the limit; CPU ms: ${longs.map((l) => l.cpu.toFixed(0)).join(' ')}\n`,
);
let p;
try {
  p = JSON.parse(readFileSync(file, 'utf8'));
} catch {
  process.exit(0); // no profile
}
const byId = new Map(p.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const name = (n) => {
  const cf = n.callFrame;
  const u = cf.url.replace(/^file:\/\/.*?\/(node_modules|src|dist)\//, '$1/');
  return `${cf.functionName || '(anonymous)'} ${u}:${cf.lineNumber + 1}`;
};
const samples = [];
let t = p.startTime;
p.samples.forEach((id, i) => {
  t += p.timeDeltas[i] ?? 0;
  samples.push([t, id, p.timeDeltas[i + 1] ?? 0]);
});
const top = (m, k) =>
  [...m]
    .sort((a, b) => b[1] - a[1])
    .slice(0, k)
    .map(([f, v]) => `    ${v.toFixed(1).padStart(7)} ${f}`)
    .join('\n');
for (const l of longs) {
  if (l.t1 < p.startTime) {
    process.stdout.write(`\n${l.cpu.toFixed(1)} ms CPU, before the profile\n`);
    continue;
  }
  const self = new Map();
  const ours = new Map();
  for (const [at, id, dt] of samples) {
    if (at < l.t0 || at > l.t1) continue;
    const stack = [];
    for (let x = id; x !== undefined; x = parent.get(x)) stack.push(byId.get(x));
    const k = name(stack[0]);
    self.set(k, (self.get(k) ?? 0) + dt / 1000);
    const seen = new Set();
    for (const f of stack) {
      if (!/(src|dist)\//.test(f.callFrame.url)) continue;
      const k2 = name(f);
      if (seen.has(k2)) continue;
      seen.add(k2);
      ours.set(k2, (ours.get(k2) ?? 0) + dt / 1000);
    }
  }
  process.stdout.write(
    `\n${l.cpu.toFixed(1)} ms CPU in ${((l.t1 - l.t0) / 1000).toFixed(1)} ms of wall time, ` +
      `${((l.t0 - p.startTime) / 1e6).toFixed(2)} s into the profile\n  self (ms sampled):\n${top(self, 6)}\n` +
      `  the daemon's own, inclusive:\n${top(ours, 8)}\n`,
  );
}
