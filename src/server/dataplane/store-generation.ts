/**
 * The state store's generation as the pinned datapath knows it: a one-entry array map pinned at
 * <pinRoot>/store_generation (created by the daemon, not part of the program: the object's layout is
 * unchanged), holding the generation of the last state-store commit whose change the datapath holds. The
 * store counts its commits (meta `generation`); each committed change writes its number here after the
 * commit. A start compares the two: a store behind the pins (a previous --state-dir, a restored copy) is
 * refused instead of taken as the truth over rules it never knew. `bpftool map dump pinned
 * <pinRoot>/store_generation` shows it.
 */
import { existsSync, unlinkSync } from 'node:fs';
import { constants } from 'node:os';
import { join } from 'node:path';

import { BpfMap, mapInfo, openPinnedMap } from './bpf-map.js';
import { matchKey, u32, u64, type GenMatchKey, type MatchKey } from './codec.js';
import { KernelError } from './errors.js';
import { check, closeFd, lib } from './libbpf.js';

/** Where the generation map is pinned. */
export const generationPinPath = (pinRoot: string) => join(pinRoot, 'store_generation');

const BPF_MAP_TYPE_ARRAY = 2;
const MAP_NAME = 'xdpctl_gen';

/**
 * What the pins say of the store they were written from: `generation` (a number), or `absent` (nothing
 * pinned: a datapath of an xdpctld before this one, a fresh pin root, or one written with --no-state), or
 * `unreadable` with why (another object pinned there).
 */
export type PinnedGeneration =
  { kind: 'generation'; generation: number } | { kind: 'absent' } | { kind: 'unreadable'; why: string };

/** Read the pinned generation (nothing written). */
export function readPinnedGeneration(pinRoot: string): PinnedGeneration {
  const path = generationPinPath(pinRoot);
  if (!existsSync(path)) return { kind: 'absent' };
  let m: BpfMap<number, bigint> | undefined;
  try {
    m = openPinnedMap(path, u32, u64);
    const v = m.get(0);
    if (v === undefined) return { kind: 'unreadable', why: `${path} has no entry 0` };
    return { kind: 'generation', generation: Number(v) };
  } catch (e) {
    return { kind: 'unreadable', why: `${path}: ${(e as Error).message}` };
  } finally {
    m?.close();
  }
}

/**
 * The pinned rule match entries the datapath looks up (key -> slot: those of the active rule generation, map
 * rule_gen; all of them for pins from before generations), or undefined when they cannot be read with this layout.
 */
export function readPinnedMatches(pinRoot: string): [MatchKey, number][] | undefined {
  const path = join(pinRoot, 'maps', 'rule_match');
  if (!existsSync(path)) return [];
  let m: BpfMap<GenMatchKey, number> | undefined;
  let g: BpfMap<number, number> | undefined;
  try {
    const genPath = join(pinRoot, 'maps', 'rule_gen');
    let gen = 0;
    if (existsSync(genPath)) {
      g = openPinnedMap(genPath, u32, u32);
      gen = (g.get(0) ?? 0) & 1;
    }
    m = openPinnedMap(path, matchKey, u32);
    return m.entriesBatch().flatMap(([k, slot]) => {
      if ((k.gen ?? 0) !== gen) return [];
      const { gen: _gen, ...key } = k;
      return [[key, slot] as [MatchKey, number]];
    });
  } catch {
    return undefined;
  } finally {
    m?.close();
    g?.close();
  }
}

/** Remove the generation pin (a --no-state start: no store describes this datapath any more). */
export function removeGenerationPin(pinRoot: string): void {
  const path = generationPinPath(pinRoot);
  if (existsSync(path)) unlinkSync(path);
}

/**
 * The running daemon's generation map: opened (or created and pinned) at the first write, its descriptor
 * kept, so that a pin removed or replaced under the daemon is put back ({@link repair}) and the map is
 * among the objects a second daemon finds held by this one.
 */
export class GenerationPin {
  private map?: BpfMap<number, bigint>;
  /** The last generation written. */
  written?: number;

  constructor(readonly pinRoot: string) {}

  get path(): string {
    return generationPinPath(this.pinRoot);
  }

  /** Write `generation` (creating and pinning the map when none is pinned). Throws a KernelError. */
  write(generation: number): void {
    if (!this.map) this.map = this.openOrCreate();
    this.map.put(0, BigInt(generation));
    this.written = generation;
  }

  /**
   * Pin this daemon's map again when the path holds none or another object (`rm` of the pin, the pin root
   * removed and made again): returns true when it re-pinned. Throws a KernelError when it cannot, also when the
   * pin cannot be opened for another reason than its absence (EMFILE: the open-files limit): what it holds is
   * then not known, and it is left as it is.
   */
  repair(): boolean {
    if (!this.map) return false;
    const ours = this.map.info.id;
    const fd = lib.bpf_obj_get(this.path) as number;
    if (fd < 0 && fd !== -constants.errno.ENOENT) throw new KernelError(`open pin ${this.path}`, -fd);
    if (fd >= 0) {
      try {
        if (mapInfo(fd, this.path).id === ours) return false;
      } catch {
        /* not a map: ours goes in its place */
      } finally {
        closeFd(fd);
      }
      unlinkSync(this.path);
    }
    check(`pin map ${MAP_NAME} at ${this.path}`, lib.bpf_obj_pin(this.map.fd, this.path) as number);
    if (this.written !== undefined) this.map.put(0, BigInt(this.written));
    return true;
  }

  close(): void {
    this.map?.close();
    this.map = undefined;
  }

  private openOrCreate(): BpfMap<number, bigint> {
    const path = this.path;
    if (existsSync(path)) {
      try {
        return openPinnedMap(path, u32, u64);
      } catch {
        unlinkSync(path); // another object under our name: ours replaces it
      }
    }
    const fd = check(
      `create map ${MAP_NAME}`,
      lib.bpf_map_create(BPF_MAP_TYPE_ARRAY, MAP_NAME, 4, 8, 1, null) as number,
    );
    try {
      check(`pin map ${MAP_NAME} at ${path}`, lib.bpf_obj_pin(fd, path) as number);
      return new BpfMap(mapInfo(fd, MAP_NAME), fd, u32, u64);
    } catch (e) {
      closeFd(fd);
      if (e instanceof KernelError) throw e;
      throw new KernelError(`create map ${MAP_NAME}`, 22, [], (e as Error).message);
    }
  }
}
