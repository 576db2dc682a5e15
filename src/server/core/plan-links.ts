/**
 * Plan step for links: the kernel directions (ingress -> egress ifindex) a
 * link set wants, from the interface facts fetched before; no I/O. An
 * interface may forward to one other interface only.
 */
import type { InterfaceInfo, PeerAway, TxLink, UpperLink } from './dataplane.js';
import { CoreError, type FieldViolation } from './errors.js';
import type { LinkSpec } from './model.js';
import { receiveTree } from './rule-loops.js';

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

/** What a link walk reads of the host besides veth peers (rule-loops.ts ReceiveGraph): uppers, a bridge's ports. */
export interface LinkWalkGraph {
  uppersOf?(name: string): readonly UpperLink[];
  portsOf?(name: string): readonly string[];
  /** How a device transmits (rule-loops.ts LoopGraph.deviceOf): a link egress that is no veth is followed. */
  deviceOf?(name: string): TxLink | undefined;
  /** A veth whose peer is in another namespace (LoopGraph.peerAway). */
  peerAway?(name: string): PeerAway | undefined;
}

/**
 * A forwarding loop the link set would make, or undefined. A direction from -> to sends every frame out of
 * `to`; when `to` is a veth whose peer is in this namespace (`peerOf`), the frame arrives on that peer, and
 * from there it reaches what the layer-2 graph leads it to (rule-loops.ts receiveTree: the devices above the
 * peer that receive it, and what a bridge the peer is a port of forwards out of its other ports to their veth
 * peers, and so on). A link forwards every frame (broadcasts, every MAC): each ingress of a link so reached
 * forwards it on. A chain that comes back to an ingress it passed makes every frame that enters it go round
 * forever (in native mode a redirect is processed in the next NAPI poll: a review saw 11.7 million redirects in
 * 10 s from one frame; through a bridge that floods, 14 million frames a direction in 40 s from one ARP
 * broadcast). Returns the link that closes the loop (the last one in `next`'s order among those on it) and the
 * loop as text. `unknown`, when given, is filled with what the walk from each ingress met and cannot follow (a
 * veth peer in another namespace that leads on there, a device whose transmit is not followed), in words.
 */
export function forwardingLoop(
  next: ReadonlyMap<string, LinkSpec>,
  peerOf: (ifname: string) => string | undefined,
  host: LinkWalkGraph = {},
  unknown?: Map<string, string[]>,
): { link: LinkSpec; path: string } | undefined {
  const out = new Map<string, [string, LinkSpec]>();
  for (const l of next.values()) for (const [from, to] of directions(l)) out.set(from, [to, l]);
  const linkTo = new Map([...out].map(([from, [to]]) => [from, to]));
  const order = [...next.values()];
  /** The ingresses a frame sent by the direction from `from` reaches, each with how it gets there in words. */
  const succ = new Map<string, { to: string; words: string }[]>();
  const successors = (from: string) => {
    let s = succ.get(from);
    if (s) return s;
    s = [];
    const to = out.get(from)![0];
    const peer = peerOf(to);
    const g = {
      peerOf,
      portsOf: host.portsOf,
      uppersOf: host.uppersOf ?? (() => []),
      ...(host.deviceOf ? { deviceOf: host.deviceOf } : {}),
      ...(host.peerAway ? { peerAway: host.peerAway } : {}),
      linkTo,
      inForce: linkTo,
    };
    const reached = (t: ReturnType<typeof receiveTree>, lead: string) => {
      if (t.unknown.length) unknown?.set(from, t.unknown);
      t.nodes.forEach((n, k) => {
        if (!out.has(n.name)) return;
        const words: string[] = [];
        for (let i = k; i >= 0; i = t.nodes[i].parent) words.unshift(t.nodes[i].words);
        const how = words.join(', itself ');
        s!.push({ to: n.name, words: `${how.startsWith('whose ') ? '' : lead}${how}` });
      });
    };
    if (peer !== undefined) {
      if (out.has(peer)) s.push({ to: peer, words: `whose veth peer is ${peer}` });
      else reached(receiveTree(peer, g, true), `whose veth peer is ${peer}, `);
    } else if (host.deviceOf || host.peerAway) {
      // No veth with a peer here: what sending out of it reaches (a macvlan's lower device and its peer...).
      reached(receiveTree(to, g, true, true), 'which is ');
    }
    succ.set(from, s);
    return s;
  };
  const done = new Set<string>();
  const onStack = new Map<string, number>(); // ingress -> its position on the chain followed now
  const steps: { from: string; to: string; words: string; link: LinkSpec }[] = [];
  const dfs = (cur: string): { link: LinkSpec; path: string } | undefined => {
    onStack.set(cur, steps.length);
    const [to, link] = out.get(cur)!;
    for (const n of successors(cur)) {
      steps.push({ from: cur, to, words: n.words, link });
      if (onStack.has(n.to)) {
        const loop = steps.slice(onStack.get(n.to));
        const closing = loop.map((x) => x.link).sort((x, y) => order.indexOf(y) - order.indexOf(x))[0];
        const path = loop.map((x) => `${x.from} -> ${x.to} (${x.words})`).join(', then ');
        return { link: closing, path: `${path}: back to ${n.to}` };
      }
      if (!done.has(n.to)) {
        const found = dfs(n.to);
        if (found) return found;
      }
      steps.pop();
    }
    onStack.delete(cur);
    done.add(cur);
    return undefined;
  };
  for (const start of out.keys()) {
    if (done.has(start)) continue;
    const found = dfs(start);
    if (found) return found;
  }
  return undefined;
}
