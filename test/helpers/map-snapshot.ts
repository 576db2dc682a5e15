/**
 * Byte-exact snapshots of every map of a datapath, for "a rejected request
 * changes nothing" checks repeated thousands of times. Raw key and value
 * bytes (padding included) are read with BPF_MAP_LOOKUP_BATCH where the map
 * type has it (hash and array maps: one syscall per map) and key by key for
 * the others (LPM trie, devmap hash), then reduced to one SHA-256 per map, so
 * that a comparison is cheap and a difference names the map. bpftool dumps
 * (DaemonProcess.dumpMaps) are the readable, slower equivalent.
 */
import { createHash } from 'node:crypto';

import type { BpfMap } from '../../src/server/dataplane/bpf-map.js';
import { MapType } from '../../src/server/dataplane/bpf-map.js';
import type { DatapathMaps } from '../../src/server/dataplane/datapath.js';
import { check, lib, MapBatchOpts, possibleCpus, sizeOf } from '../../src/server/dataplane/libbpf.js';

const ENOENT = 2;
const BATCH = new Set<number>([MapType.HASH, MapType.PERCPU_HASH, MapType.ARRAY, MapType.PERCPU_ARRAY]);
const PERCPU = new Set<number>([MapType.PERCPU_HASH, MapType.PERCPU_ARRAY]);
const opts = { sz: sizeOf(MapBatchOpts), elem_flags: 0n, flags: 0n };

/** Map name -> digest of its whole content (with the number of entries, for messages). */
export type MapSnapshot = Record<string, string>;

interface Reader {
  name: string;
  read(): string;
}

function reader(m: BpfMap<unknown, unknown>): Reader {
  const { name, type, keySize, valueSize, maxEntries } = m.info;
  const stride = PERCPU.has(type) ? ((valueSize + 7) & ~7) * possibleCpus() : valueSize;
  if (BATCH.has(type)) {
    // One buffer for the whole map: a single batch call reads it all.
    const keys = Buffer.alloc(maxEntries * keySize);
    const vals = Buffer.alloc(maxEntries * stride);
    const cursor = Buffer.alloc(Math.max(keySize, 4));
    return {
      name,
      read() {
        const h = createHash('sha256');
        let inBatch: Buffer | null = null;
        let total = 0;
        for (;;) {
          const count = [maxEntries - total];
          const r = lib.bpf_map_lookup_batch(
            m.fd,
            inBatch,
            cursor,
            keys.subarray(total * keySize),
            vals.subarray(total * stride),
            count,
            opts,
          ) as number;
          if (r < 0 && r !== -ENOENT) check(`snapshot map ${name}`, r);
          total += count[0];
          if (r === -ENOENT || total >= maxEntries) break;
          inBatch = Buffer.from(cursor);
        }
        h.update(keys.subarray(0, total * keySize));
        h.update(vals.subarray(0, total * stride));
        return `${total}:${h.digest('hex').slice(0, 32)}`;
      },
    };
  }
  const key = Buffer.alloc(keySize);
  const val = Buffer.alloc(stride);
  return {
    name,
    read() {
      // Key order of an LPM trie / devmap hash is the kernel's, stable for the same content.
      const entries: Buffer[] = [];
      let prev: Buffer | null = null;
      for (;;) {
        const r = lib.bpf_map_get_next_key(m.fd, prev, key) as number;
        if (r === -ENOENT) break;
        check(`snapshot map ${name}`, r);
        prev = Buffer.from(key);
        const l = lib.bpf_map_lookup_elem(m.fd, prev, val) as number;
        if (l === -ENOENT) continue;
        check(`snapshot map ${name}`, l);
        entries.push(Buffer.concat([prev, val]));
      }
      entries.sort(Buffer.compare);
      const h = createHash('sha256');
      for (const e of entries) h.update(e);
      return `${entries.length}:${h.digest('hex').slice(0, 32)}`;
    },
  };
}

/** A snapshotter for every map of a datapath (buffers allocated once). */
export function mapSnapshotter(maps: DatapathMaps): () => MapSnapshot {
  const readers = Object.values(maps).map((m) => reader(m as BpfMap<unknown, unknown>));
  return () => Object.fromEntries(readers.map((r) => [r.name, r.read()]));
}

/** Names of the maps whose content differs between two snapshots. */
export function changedMaps(a: MapSnapshot, b: MapSnapshot): string[] {
  return Object.keys({ ...a, ...b }).filter((k) => a[k] !== b[k]);
}
