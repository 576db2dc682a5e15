/**
 * Filling a rule's backend lookup table (the "ring" the datapath indexes with
 * flow_hash % size). Maglev-style in shape, filled with weighted rendezvous
 * (highest random weight) hashing: each slot goes to the backend with the
 * highest score weight / -ln(u), where u is a hash of (backend identity,
 * slot) mapped into (0, 1). This gives, exactly rather than approximately:
 *  - removing (or draining) a backend moves only the slots it held: every
 *    other slot keeps its winner, so flows on other backends stay put;
 *  - weight 0 means no slots at all (drain);
 *  - each backend's expected share is proportional to its weight.
 * Deterministic: the same members give the same table on every host and run.
 */

/** One candidate for the table. */
export interface RingMember<T> {
  /** Stable identity (e.g. "10.0.0.2@veth25"): what keeps its slots across updates. */
  key: string;
  weight: number;
  /** What the slot stores (e.g. the backend's kernel id). */
  value: T;
}

function fmix32(h: number): number {
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

/**
 * Fill a table of `size` slots. Slots are `empty` when no member has a
 * positive weight.
 */
export function fillRing<T>(members: readonly RingMember<T>[], size: number, empty: T): T[] {
  const live = members.filter((m) => m.weight > 0);
  const seeds = live.map((m) => seedOf(m.key));
  const table: T[] = new Array<T>(size).fill(empty);
  if (live.length === 0) return table;
  for (let slot = 0; slot < size; slot++) {
    const salt = fmix32(Math.imul(slot + 1, 0x9e3779b1));
    let best = -1;
    let bestScore = -Infinity;
    for (let i = 0; i < live.length; i++) {
      const h = fmix32(seeds[i] ^ salt);
      const u = (h + 0.5) / 4294967296; // in (0, 1)
      const score = live[i].weight / -Math.log(u);
      // Ties (practically impossible) break on the key so the result is total.
      if (score > bestScore || (score === bestScore && live[i].key < live[best].key)) {
        best = i;
        bestScore = score;
      }
    }
    table[slot] = live[best].value;
  }
  return table;
}
