/**
 * Plan step for links: the kernel directions (ingress -> egress ifindex) a
 * link set wants, from the interface facts fetched before; no I/O. An
 * interface may forward to one other interface only.
 */
import type { InterfaceInfo } from './dataplane.js';
import { CoreError, type FieldViolation } from './errors.js';
import type { LinkSpec } from './model.js';

/** One wanted direction: ingress ifindex -> egress ifindex, and the egress name. */
export interface LinkDirection {
  from: number;
  to: number;
  toName: string;
}

/** The (from, to) interface names of a link's directions. */
export function directions(l: LinkSpec): [string, string][] {
  return l.direction === 'both'
    ? [
        [l.a, l.b],
        [l.b, l.a],
      ]
    : [[l.a, l.b]];
}

/** Interface names a link set needs. */
export function linkInterfaces(links: Iterable<LinkSpec>): string[] {
  const out: string[] = [];
  for (const l of links) out.push(l.a, l.b);
  return out;
}

/** Directions the link set wants, by ingress name; throws when two conflict or an interface is missing. */
export function planLinks(
  next: ReadonlyMap<string, LinkSpec>,
  interfaces: ReadonlyMap<string, InterfaceInfo | undefined>,
  field: string,
): Map<string, LinkDirection> {
  const dirs = new Map<string, string>();
  const violations: FieldViolation[] = [];
  for (const l of next.values()) {
    for (const [from, to] of directions(l)) {
      if (dirs.has(from) && dirs.get(from) !== to) {
        violations.push({ field, description: `${from} would forward to both ${dirs.get(from)} and ${to}` });
      }
      dirs.set(from, to);
    }
  }
  if (violations.length) throw new CoreError('precondition', violations[0].description, violations);
  const resolved = new Map<string, LinkDirection>();
  for (const [from, to] of dirs) {
    const a = interfaces.get(from);
    const b = interfaces.get(to);
    for (const [name, info] of [
      [from, a],
      [to, b],
    ] as const) {
      if (!info) {
        throw new CoreError('not-found', `${field}: interface "${name}" does not exist`, [
          { field, description: `interface "${name}" does not exist` },
        ]);
      }
    }
    resolved.set(from, { from: a!.ifindex, to: b!.ifindex, toName: to });
  }
  return resolved;
}

/** The directions in the kernel now (by ingress name), with today's egress ifindex. */
export function currentLinks(
  linkDirs: ReadonlyMap<number, { from: string; to: string }>,
  kernel: ReadonlyMap<number, number>,
): Map<string, { from: number; to: number }> {
  // What the kernel's devmap holds for each direction we wrote (by ingress ifindex), not what the names
  // resolve to now: the kernel removes an entry whose egress device is deleted, and an entry keyed by a
  // deleted ingress stays until it is removed (a device given that ifindex later would be cross-connected).
  const out = new Map<string, { from: number; to: number }>();
  for (const [ifindex, d] of linkDirs) {
    const to = kernel.get(ifindex);
    if (to !== undefined) out.set(d.from, { from: ifindex, to });
  }
  return out;
}

/**
 * A forwarding loop the link set would make, or undefined. A direction from -> to sends a frame out of
 * `to`; when `to` is a veth whose peer is in this namespace (`peerOf`), the frame arrives on that peer,
 * and if a link forwards from there too it goes on. Each interface forwards to one other at most, so
 * the chain from an ingress either ends or comes back to an interface it passed: then every frame that
 * enters it is redirected forever (in native mode a redirect is processed in the next NAPI poll: a
 * review saw 11.7 million redirects in 10 s from one frame). Returns the link that closes the loop (the
 * last one in `next`'s order among those on it) and the loop as text.
 */
export function forwardingLoop(
  next: ReadonlyMap<string, LinkSpec>,
  peerOf: (ifname: string) => string | undefined,
): { link: LinkSpec; path: string } | undefined {
  const out = new Map<string, [string, LinkSpec]>();
  for (const l of next.values()) for (const [from, to] of directions(l)) out.set(from, [to, l]);
  const order = [...next.values()];
  const done = new Set<string>();
  for (const start of out.keys()) {
    if (done.has(start)) continue;
    const at = new Map<string, number>(); // ingress -> its position on this chain
    const steps: { from: string; to: string; peer: string; link: LinkSpec }[] = [];
    for (let cur: string | undefined = start; cur !== undefined && out.has(cur);) {
      if (at.has(cur)) {
        const loop = steps.slice(at.get(cur));
        const link = loop.map((s) => s.link).sort((x, y) => order.indexOf(y) - order.indexOf(x))[0];
        const path = loop.map((s) => `${s.from} -> ${s.to} (whose veth peer is ${s.peer})`).join(', then ');
        return { link, path: `${path}: back to ${cur}` };
      }
      if (done.has(cur)) break; // a chain already followed, without a loop
      at.set(cur, steps.length);
      const [to, link] = out.get(cur)!;
      const peer = peerOf(to);
      if (peer === undefined) break;
      steps.push({ from: cur, to, peer, link });
      cur = peer;
    }
    for (const i of at.keys()) done.add(i);
  }
  return undefined;
}
