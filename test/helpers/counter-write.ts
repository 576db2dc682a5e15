/**
 * Another tool writing the datapath's counters, as an operator would: `bpftool map update pinned
 * PIN/maps/<map> key ... value <zeros>` on a per-CPU counter map (rule_stats, backend_stats). The entry is found
 * by its count (bpftool -j dump), so that a test lowers exactly the object it counted traffic for.
 */
import assert from 'node:assert/strict';

import { sh } from './env.js';

const u32 = (n: number) => [0, 8, 16, 24].map((s) => String((n >>> s) & 0xff));

/** A per-CPU counter map's entry: its key and the size of its value. */
export interface CounterEntry {
  key: number;
  size: number;
}

/** The id of the entry of `map` (under `pinRoot`) whose per-CPU sum of its first u64 is `n`. */
export function counterEntryWith(pinRoot: string, map: string, n: bigint): CounterEntry {
  const path = `${pinRoot}/maps/${map}`;
  const size = (JSON.parse(sh('bpftool', ['-j', 'map', 'show', 'pinned', path])) as { bytes_value: number })
    .bytes_value;
  const dump = JSON.parse(sh('bpftool', ['-j', 'map', 'dump', 'pinned', path])) as {
    key: string[];
    values: { value: string[] }[];
  }[];
  const first = (v: string[]) => Buffer.from(v.slice(0, 8).map((b) => parseInt(b, 16))).readBigUInt64LE(0);
  const hit = dump.filter((e) => e.values.reduce((s, x) => s + first(x.value), 0n) === n);
  assert.equal(hit.length, 1, `one ${map} entry with ${n}`);
  return { key: Buffer.from(hit[0].key.map((b) => parseInt(b, 16))).readUInt32LE(0), size };
}

/** Zero the entry on every CPU with bpftool (another tool's write: the daemon did not make it). */
export function zeroCounterEntry(pinRoot: string, map: string, e: CounterEntry): void {
  sh('bpftool', [
    'map',
    'update',
    'pinned',
    `${pinRoot}/maps/${map}`,
    'key',
    ...u32(e.key),
    'value',
    ...Array<string>(e.size).fill('0'),
  ]);
}
