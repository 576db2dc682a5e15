/**
 * `s` as one flat string, for a key kept as long as its rule lives. A template literal of pieces is, once it is
 * 13 characters or longer, a V8 "cons string": a tree of 32-byte nodes over its pieces, kept as it is by every
 * map that holds it (flattening one in place keeps the node and adds a flat copy). `${ip}@${iface}|${mac}` is
 * four such nodes; with 10 000 rules of 4 static-MAC backends, the backends' keys were ~7 MB of those nodes
 * (heap snapshot at rest, BENCHMARKS.md "Memory at rest"). JSON's round trip makes one flat copy and is exact for
 * every string (lone surrogates included); ~0.3 µs a key, made once per backend spec (facts.ts backendKeys).
 */
export function flat(s: string): string {
  return JSON.parse(JSON.stringify(s)) as string;
}
