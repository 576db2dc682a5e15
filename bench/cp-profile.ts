#!/usr/bin/env node
/**
 * Summarise V8 CPU profiles (node --cpu-prof): the functions with the most
 * self time, summed over every profile given.
 *   node --import tsx bench/cp-profile.ts <file.cpuprofile>... [--top 20]
 */
import { readFileSync } from 'node:fs';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
}

const args = process.argv.slice(2);
const topArg = args.indexOf('--top');
const top = topArg >= 0 ? Number(args[topArg + 1]) : 20;
const files = args.filter((a, i) => a.endsWith('.cpuprofile') && i !== topArg + 1);
const self = new Map<string, number>();
let total = 0;
for (const f of files) {
  const p = JSON.parse(readFileSync(f, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  p.samples.forEach((id, i) => {
    const cf = byId.get(id)!.callFrame;
    const where = cf.url ? `${cf.url.replace(/^file:\/\/.*?\/(node_modules|src)\//, '$1/')}:${cf.lineNumber + 1}` : '';
    const key = `${cf.functionName || '(anonymous)'} ${where}`.trim();
    const dt = (p.timeDeltas[i] ?? 0) / 1000;
    self.set(key, (self.get(key) ?? 0) + dt);
    total += dt;
  });
}
const busy = [...self].filter(([k]) => k !== '(idle)').reduce((a, [, v]) => a + v, 0);
process.stdout.write(`${files.length} profile(s): ${total.toFixed(0)} ms sampled, ${busy.toFixed(0)} ms not idle\n`);
process.stdout.write('self ms   % busy  function\n');
for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) {
  process.stdout.write(`${v.toFixed(0).padStart(7)}  ${((v / busy) * 100).toFixed(1).padStart(6)}  ${k}\n`);
}
