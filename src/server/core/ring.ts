/**
 * Filling a rule's backend lookup table (the table the datapath indexes with
 * flow_hash % size, XDPCTL_RING_SIZE = 1031 slots). Like Maglev (Eisenbud et
 * al., NSDI 2016), every backend gets a share of the slots proportional to
 * its weight to within one slot; unlike Maglev's from-scratch population,
 * the table is updated from the previous one, so that removing or draining a
 * backend moves exactly the slots it held and nothing else.
 *
 * Shares (quotas): backend i with weight w_i of W in total should hold
 * e_i = size * w_i / W slots; it holds floor(e_i) or ceil(e_i), and at least
 * one slot when the table has room for one per backend (so weights up to
 * 1030:1 never starve a backend). With 64 equal backends that is 16 or 17 of
 * 1031 slots each: within -0.7 % / +5.5 % of a fair share.
 *
 * Which slots: each (backend, slot) pair has a rendezvous (highest random
 * weight) score w / -ln(u), u a hash of (backend identity, slot) in (0, 1).
 * A fresh table starts from each slot's best-scoring backend; an update
 * starts from the previous table with departed backends' slots freed. Then
 * a backend above its quota gives up its lowest-scoring slots, and free slots
 * go, in slot order, to the best-scoring backend still below its quota. When
 * a backend leaves, every other backend's quota can only grow, so nobody
 * gives up a slot: only the departed backend's slots change hands.
 * Deterministic: the same members and previous table give the same table on
 * every host and run.
 */

/** One candidate for the table. */
export interface RingMember<T> {
  /** Stable identity (e.g. "10.0.0.2@veth25"): what keeps its slots across updates. */
  key: string;
  weight: number;
  /** What the slot stores (e.g. the backend's kernel id). */
  value: T;
}

/** MurmurHash3's 32-bit finalizer (fmix32, Austin Appleby's SMHasher): full avalanche of a u32. */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** FNV-1a of a string, then mixed: the per-member seed. */
function seedOf(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return fmix32(h);
}

/** Per-slot salts of a table of `size` slots, computed once per size (every change filled them anew). */
const saltCache = new Map<number, Uint32Array>();
function saltsOf(size: number): Uint32Array {
  let salts = saltCache.get(size);
  if (!salts) {
    salts = Uint32Array.from({ length: size }, (_, s) => fmix32(Math.imul(s + 1, 0x9e3779b1)));
    saltCache.set(size, salts);
  }
  return salts;
}

/** Quotas: [lo, hi] slots per member (see the module comment). */
function quotas(weights: readonly number[], size: number): { lo: number[]; hi: number[] } {
  const total = weights.reduce((a, b) => a + b, 0);
  const exact = weights.map((w) => (size * w) / total);
  let lo = exact.map(Math.floor);
  let hi = exact.map((e) => Math.ceil(e));
  if (weights.length <= size && lo.reduce((a, b) => a + Math.max(1, b), 0) <= size) {
    lo = lo.map((x) => Math.max(1, x));
    hi = hi.map((x) => Math.max(1, x));
  }
  return { lo, hi };
}

/**
 * Fill a table of `size` slots. `previous` gives, per slot, the key of the
 * member that held it (undefined: free); omit it for a fresh table. Slots are
 * `empty` when no member has a positive weight.
 */
export function fillRing<T>(
  members: readonly RingMember<T>[],
  size: number,
  empty: T,
  previous?: readonly (string | undefined)[],
): T[] {
  const byKey = new Map<string, RingMember<T>>();
  for (const m of members) if (m.weight > 0 && !byKey.has(m.key)) byKey.set(m.key, m);
  const live = [...byKey.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const table: T[] = new Array<T>(size).fill(empty);
  if (live.length === 0) return table;
  // One member: its quotas are the whole table (lo = hi = size), whatever held it before. What the steps
  // below arrive at, without scoring 1 031 slots (~100 µs of every change to a one-backend rule).
  if (live.length === 1) return table.fill(live[0].value);
  const n = live.length;
  const seeds = live.map((m) => seedOf(m.key));
  const salts = saltsOf(size);
  const score = (i: number, s: number) => {
    const u = (fmix32(seeds[i] ^ salts[s]) + 0.5) / 4294967296; // in (0, 1)
    return live[i].weight / -Math.log(u);
  };
  const best = (s: number, ok: (i: number) => boolean) => {
    let b = -1;
    let bs = -Infinity;
    for (let i = 0; i < n; i++) {
      if (!ok(i)) continue;
      const x = score(i, s);
      if (x > bs) {
        b = i;
        bs = x;
      }
    }
    return b;
  };

  const index = new Map(live.map((m, i) => [m.key, i]));
  const owner = new Int32Array(size).fill(-1);
  for (let s = 0; s < size; s++) {
    owner[s] = previous ? (index.get(previous[s] ?? '') ?? -1) : best(s, () => true);
  }
  const { lo, hi } = quotas(
    live.map((m) => m.weight),
    size,
  );
  const held: number[][] = Array.from({ length: n }, () => []);
  for (let s = 0; s < size; s++) if (owner[s] >= 0) held[owner[s]].push(s);

  // Give up the lowest-scoring slots: above hi always; above lo while the
  // quotas below lo could not otherwise be met (sum of max(held, lo) > size).
  const release = (i: number, keep: number) => {
    if (held[i].length <= keep) return;
    const ranked = held[i].map((s) => [score(i, s), s] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    for (const [, s] of ranked.slice(keep)) owner[s] = -1;
    held[i] = ranked.slice(0, keep).map(([, s]) => s);
  };
  for (let i = 0; i < n; i++) release(i, hi[i]);
  let need = 0;
  for (let i = 0; i < n; i++) need += Math.max(held[i].length, lo[i]);
  for (let i = 0; i < n && need > size; i++) {
    const give = Math.min(held[i].length - lo[i], need - size);
    if (give > 0) {
      release(i, held[i].length - give);
      need -= give;
    }
  }

  // Free slots, in slot order: to the best-scoring member below lo, else below hi.
  for (let s = 0; s < size; s++) {
    if (owner[s] >= 0) continue;
    let i = best(s, (j) => held[j].length < lo[j]);
    if (i < 0) i = best(s, (j) => held[j].length < hi[j]);
    owner[s] = i;
    held[i].push(s);
  }
  for (let s = 0; s < size; s++) table[s] = live[owner[s]].value;
  return table;
}

/**
 * Whether `table` is a table {@link fillRing} leaves as it is when given it
 * as the previous one: every slot holds a member with a positive weight (all
 * `empty` when there is none) and each member holds between its quotas. A
 * start adopting a rule's table from the kernel checks this in O(size)
 * instead of refilling it; members' values must be distinct.
 */
export function ringHolds<T>(members: readonly RingMember<T>[], size: number, empty: T, table: ArrayLike<T>): boolean {
  if (table.length !== size) return false;
  return holds(members, size, empty, table, 1);
}

/**
 * {@link ringHolds} for a table of ids whose slot `s` is `table[s * stride]`:
 * the values of a memory-mapped BPF array (8 bytes apart) checked where they
 * are, instead of copied out first (10 000 tables of 1 031 slots at every start).
 */
export function idRingHolds(
  members: readonly RingMember<number>[],
  size: number,
  empty: number,
  table: Uint32Array,
  stride: number,
): boolean {
  if (stride === 1) return ringHolds(members, size, empty, table);
  if (table.length < (size - 1) * stride + 1) return false;
  return holds(members, size, empty, table, stride);
}

function holds<T>(
  members: readonly RingMember<T>[],
  size: number,
  empty: T,
  table: ArrayLike<T>,
  stride: number,
): boolean {
  const byKey = new Map<string, RingMember<T>>();
  for (const m of members) if (m.weight > 0 && !byKey.has(m.key)) byKey.set(m.key, m);
  const live = [...byKey.values()];
  if (live.length === 0) {
    for (let s = 0; s < size; s++) if (table[s * stride] !== empty) return false;
    return true;
  }
  const values = live.map((m) => m.value);
  if (new Set(values).size !== values.length) return false;
  if (table instanceof Uint32Array) return holdsIds(live, values as number[], size, table, stride);
  // Strides other than 1 come only with Uint32Array tables (idRingHolds).
  const held = new Array<number>(live.length).fill(0);
  // A linear search from the previous slot's member: rules have a few backends, and 10 000 tables are
  // checked at every start (10 million slots).
  let i = 0;
  for (let s = 0; s < size; s++) {
    const v = table[s];
    if (values[i] !== v) {
      i = values.indexOf(v);
      if (i < 0) return false;
    }
    held[i]++;
  }
  const { lo, hi } = quotas(
    live.map((m) => m.weight),
    size,
  );
  return held.every((h, i) => h >= lo[i] && h <= hi[i]);
}

/**
 * {@link ringHolds} for a table of ids as read from the kernel: typed arrays,
 * and each slot's member found by indexing a scratch table by id (ids are
 * small: the kernel's backend ids) instead of searching the members
 * (27 -> ~8 -> ~2 ns a slot; 10 000 tables of 1 031 slots at every start).
 */
function holdsIds(
  live: readonly RingMember<unknown>[],
  values: number[],
  size: number,
  table: Uint32Array,
  stride: number,
): boolean {
  const n = values.length;
  let top = 0;
  for (const v of values) {
    if (!Number.isInteger(v) || v < 0) return holdsIdsBySearch(live, values, size, compact(table, size, stride));
    top = Math.max(top, v);
  }
  if (top >= 1 << 24) return holdsIdsBySearch(live, values, size, compact(table, size, stride));
  if (memberOf.length <= top) memberOf = new Int32Array(Math.max(top + 1, memberOf.length * 2)).fill(-1);
  const held = new Int32Array(n);
  for (let k = 0; k < n; k++) memberOf[values[k]] = k;
  let ok = true;
  try {
    const len = memberOf.length;
    for (let s = 0, at = 0; s < size; s++, at += stride) {
      const v = table[at];
      const k = v < len ? memberOf[v] : -1;
      if (k < 0) {
        ok = false;
        break;
      }
      held[k]++;
    }
  } finally {
    for (let k = 0; k < n; k++) memberOf[values[k]] = -1;
  }
  return ok && withinQuotas(live, size, held);
}

/** The `size` slots of a strided table, one after the other. */
function compact(table: Uint32Array, size: number, stride: number): Uint32Array {
  if (stride === 1) return table;
  const out = new Uint32Array(size);
  for (let s = 0; s < size; s++) out[s] = table[s * stride];
  return out;
}

/** id -> index of the member holding it while {@link holdsIds} runs, else -1. */
let memberOf = new Int32Array(0);

/** {@link holdsIds} for ids too large to index by (none the kernel hands out). */
function holdsIdsBySearch(
  live: readonly RingMember<unknown>[],
  values: number[],
  size: number,
  table: Uint32Array,
): boolean {
  const n = values.length;
  const ids = Uint32Array.from(values);
  const held = new Int32Array(n);
  let i = 0;
  let cur = ids[0];
  for (let s = 0; s < size; s++) {
    const v = table[s];
    if (v !== cur) {
      i = 0;
      while (i < n && ids[i] !== v) i++;
      if (i === n) return false;
      cur = v;
    }
    held[i]++;
  }
  return withinQuotas(live, size, held);
}

/** Whether each member holds between its quotas. */
function withinQuotas(live: readonly RingMember<unknown>[], size: number, held: Int32Array): boolean {
  const { lo, hi } = quotas(
    live.map((m) => m.weight),
    size,
  );
  for (let k = 0; k < held.length; k++) if (held[k] < lo[k] || held[k] > hi[k]) return false;
  return true;
}

/** Whether a table of `size` ids (every `stride`th of `ring`) holds one id throughout. */
export function oneIdOf(ring: ArrayLike<number>, size: number, stride = 1): boolean {
  for (let s = 1; s < size; s++) if (ring[s * stride] !== ring[0]) return false;
  return true;
}
