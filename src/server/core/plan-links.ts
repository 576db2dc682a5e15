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
  interfaces: ReadonlyMap<string, InterfaceInfo | undefined>,
): Map<string, { from: number; to: number }> {
  const out = new Map<string, { from: number; to: number }>();
  for (const [ifindex, d] of linkDirs) {
    const to = interfaces.get(d.to);
    if (to) out.set(d.from, { from: ifindex, to: to.ifindex });
  }
  return out;
}
