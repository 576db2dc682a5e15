/**
 * Forwarding loops of rules: a rule's backend whose redirected datagrams come back to the rule. Its egress is a
 * veth whose peer (in this namespace), directly or through links, is an ingress where the rewritten datagram
 * (destination the backend's address, source, protocol and port unchanged) is matched again, by the same rule
 * or by another rule whose backend leads on the same way, and so on around a cycle of any length (rule a ->
 * rule b -> rule a). Each such datagram would be redirected around the cycle again and again until its TTL ran
 * out: 63 redirects and 63 "matched" for one datagram, at 63 times the CPU.
 *
 * The one implementation of that check, used twice: a change that would make such a cycle is refused
 * (execute.ts backendsLoopingBack), and the reconciler finds the cycles the host makes after the rules were
 * accepted (a veth renamed, made again or moved: resync.ts judgeHostLoops), whose backends it keeps out of
 * their tables until the host changes back. The match is the datapath's (xdpctl.bpf.c find_rule): at an
 * ingress the rule with the datagram's destination wins, for the sources it allows, and the one with no
 * destination takes the others; sources are followed as prefixes, so two rules whose source prefixes share no
 * address make no cycle. A link direction runs before rules on its ingress. A peer in another network
 * namespace is not followed (where it leads is not this daemon's to see), and the frame's destination MAC is
 * not judged (a backend's MAC is usually the peer's own, or resolved from it).
 *
 * A peer that is a port of a bridge, a bond or a team (its IFLA_MASTER, of kind bridge/bond/team) hands what its
 * own XDP program passes to that master, where the master's XDP program runs on it again (__netif_receive_skb_core
 * runs generic XDP on the skb's device: br_pass_frame_up gives the bridge a new receive for a frame to its own
 * MAC, bond/team rx handlers make the master the skb's device for another round): so the datagrams that no rule
 * on the peer takes arrive on the master too, then on the master's master, and are matched there. A bridge takes
 * only frames to its own MAC up; a backend's MAC resolved by ARP on the bridge is that, and at change time it is
 * not known yet, so the bridge is followed whatever the MAC. What a bridge forwards out of its other ports is
 * transmitted there (no XDP program runs on a transmit) and is not followed further; nor is a link direction
 * whose ingress is a master. Pure: the veth peers and masters come from the caller.
 */
import { formatPrefix, parsePrefix, prefixCovers, type Prefix } from '../net/addr.js';
import { visible } from '../../shared/visible.js';
import type { BackendSpec, RuleSpec } from './model.js';

/** A set of source addresses: prefixes (none: no address), or null for every address. */
export type Sources = readonly Prefix[] | null;

/** A rule as the loop check follows it. */
export interface LoopRule {
  name: string;
  spec: RuleSpec;
  sources: Sources;
}

/** {@link LoopRule} of a rule's name and spec. */
export const loopRule = (name: string, spec: RuleSpec): LoopRule => ({
  name,
  spec,
  sources: spec.sourcePrefixes.length ? spec.sourcePrefixes.map(parsePrefix) : null,
});

/** What the check reads of the host and the rules. */
export interface LoopGraph {
  /** The veth peer of an interface when it is in this namespace; undefined otherwise (or not a veth). */
  peerOf(name: string): string | undefined;
  /** The device `name` is a port of and its kind (netlink IFLA_MASTER), in this namespace; undefined: none. */
  masterOf?(name: string): { name: string; kind?: string } | undefined;
  /** Link directions (ingress -> egress) as they are after the change (the reconciler: in force). */
  linkTo: ReadonlyMap<string, string>;
  /** Link directions in force now: one in `linkTo` that differs is a direction the change makes. */
  inForce: ReadonlyMap<string, string>;
  /** The rule that claims (ingress, port, destination) — state.ts claimKey `${ingress}|${port}|${destination}`. */
  ruleAt(key: string): LoopRule | undefined;
}

/** One step of a cycle: a rule's backend and the interfaces its datagrams cross, the last the ingress they reach. */
export interface LoopStep {
  rule: string;
  backend: string;
  iface: string;
  path: string[];
  /** The masters at the end of `path` the datagram went up to from the peer, in words ("bridge br0"). */
  masters?: string[];
}

/** A cycle back to a rule: its steps, and the first link direction on it that the change makes (if any). */
/** The kinds of master a port's received frames go up to, where XDP runs on them again. */
export const RECEIVING_MASTERS: ReadonlySet<string> = new Set(['bridge', 'bond', 'team']);

/** Where a datagram sent out of an egress arrives: the interfaces crossed to the veth peer, then its masters. */
export interface Arrival {
  path: string[];
  newLink?: string;
  /** The masters (bridge, bond, team) above the last of `path`, in the order the datagram goes up to them. */
  uppers: string[];
  /** `uppers` in words: "bridge br0". */
  upperWords: string[];
}

export interface RuleCycle {
  steps: LoopStep[];
  newLink?: string;
}

/** The addresses in both `a` and `b` (as prefixes: of two overlapping prefixes, the longer). */
function intersectSources(a: Sources, b: Sources): Sources {
  if (a === null) return b;
  if (b === null) return a;
  const out = new Map<string, Prefix>();
  for (const x of a) {
    for (const y of b) {
      if (prefixCovers(x, y)) out.set(formatPrefix(y), y);
      else if (prefixCovers(y, x)) out.set(formatPrefix(x), x);
    }
  }
  return [...out.values()];
}

/** The addresses of `a` not in `b`, as far as prefixes tell: a prefix of `a` no prefix of `b` covers whole is kept whole. */
function subtractSources(a: Sources, b: Sources): Sources {
  if (b === null) return [];
  if (a === null) return null;
  return a.filter((x) => !b.some((y) => prefixCovers(y, x)));
}

/** Cycles of rules over one {@link LoopGraph}; where each egress leads is followed once. */
export class RuleLoops {
  private readonly arrivals = new Map<string, Arrival | undefined>();

  constructor(private readonly g: LoopGraph) {}

  /** Where a datagram sent out of `egress` arrives: the interfaces it crosses, the last the ingress it arrives on. */
  arrival(egress: string): Arrival | undefined {
    if (this.arrivals.has(egress)) return this.arrivals.get(egress);
    const out = this.follow(egress);
    this.arrivals.set(egress, out);
    return out;
  }

  private follow(egress: string): Arrival | undefined {
    const path = [egress];
    let newLink: string | undefined;
    for (const seen = new Set<string>(); !seen.has(egress);) {
      seen.add(egress);
      const peer = this.g.peerOf(egress);
      if (peer === undefined) return undefined;
      path.push(peer);
      const next = this.g.linkTo.get(peer);
      if (next === undefined) {
        const up = this.uppers(peer);
        return { path, newLink, uppers: up.map((m) => m.name), upperWords: up.map((m) => `${m.kind} ${m.name}`) };
      }
      if (this.g.inForce.get(peer) !== next) newLink ??= peer;
      path.push(next);
      egress = next;
    }
    return undefined; // a loop of links: refused as one (plan-links.ts)
  }

  /** The masters a frame received on `name` goes up to (bridge, bond, team), each once, nearest first. */
  private uppers(name: string): { name: string; kind?: string }[] {
    const out: { name: string; kind?: string }[] = [];
    for (let m = this.g.masterOf?.(name); m && RECEIVING_MASTERS.has(m.kind ?? ''); m = this.g.masterOf?.(m.name)) {
      if (m.name === name || out.some((x) => x.name === m!.name)) break;
      out.push(m);
    }
    return out;
  }

  /**
   * The rules that match a datagram to `dst` on `port` from `sources` arriving on the devices `at` in turn (a
   * peer, then its masters: what no rule takes on one goes up to the next), with the sources each takes and the
   * index in `at` of the device it is matched on.
   */
  private matches(at: readonly string[], port: number, dst: string, sources: Sources) {
    const out: { rule: LoopRule; sources: Sources; on: number }[] = [];
    let rest = sources;
    at.forEach((ingress, on) => {
      if (rest !== null && !rest.length) return;
      const exact = this.g.ruleAt(`${ingress}|${port}|${dst}`);
      if (exact) {
        const taken = intersectSources(rest, exact.sources);
        if (taken === null || taken.length) out.push({ rule: exact, sources: taken, on });
        rest = subtractSources(rest, exact.sources);
      }
      const any = this.g.ruleAt(`${ingress}|${port}|`);
      if (any && any !== exact && (rest === null || rest.length)) {
        const taken = intersectSources(rest, any.sources);
        if (taken === null || taken.length) out.push({ rule: any, sources: taken, on });
        rest = subtractSources(rest, any.sources);
      }
    });
    return out;
  }

  /** A cycle back to `start` from its backend `b`: the steps (each a rule's backend and where it arrives), or undefined. */
  cycleFrom(start: LoopRule, b: BackendSpec): RuleCycle | undefined {
    const visited = new Set<string>();
    const go = (
      rule: LoopRule,
      backend: BackendSpec,
      sources: Sources,
      steps: LoopStep[],
      newLink: string | undefined,
    ): RuleCycle | undefined => {
      const a = this.arrival(backend.interface);
      if (!a) return undefined;
      const viaNew = newLink ?? a.newLink;
      const at = [a.path[a.path.length - 1], ...a.uppers];
      for (const m of this.matches(at, rule.spec.port, backend.ip, sources)) {
        const path = [...a.path, ...a.uppers.slice(0, m.on)];
        const step: LoopStep = { rule: rule.name, backend: backend.ip, iface: backend.interface, path };
        if (m.on) step.masters = a.upperWords.slice(0, m.on);
        const here = [...steps, step];
        if (m.rule.name === start.name) return { steps: here, newLink: viaNew };
        const key = `${m.rule.name}|${m.sources?.map(formatPrefix).join(',') ?? '*'}`;
        if (visited.has(key)) continue;
        visited.add(key);
        for (const next of m.rule.spec.backends) {
          const found = go(m.rule, next, m.sources, here, viaNew);
          if (found) return found;
        }
      }
      return undefined;
    };
    return go(start, b, start.sources, [], undefined);
  }
}

/** What a redirected datagram does in a cycle. */
export const LOOP_TAIL =
  'every redirected datagram would come back and be redirected again until its TTL ran out ' +
  '(up to 63 times each, each counted matched and redirected)';

/** A cycle found from the backend of rule `start` that a change adds, as its refusal says it (without the tail). */
export function changeLoopText(steps: readonly LoopStep[], start: string): string {
  const first = steps[0].path;
  const peer = first[1];
  const masters = steps[0].masters ?? [];
  const links = first.length - masters.length > 2;
  const last = first[first.length - 1];
  // Where the first step's datagrams arrive, up to the ingress that matches them ("..., an ingress").
  let reach = links ? `its veth peer ${peer} leads through links to ${first[first.length - 1 - masters.length]}` : '';
  if (masters.length) {
    reach =
      `${reach ? `${reach}, which` : `its veth peer ${peer}`} is a port of ${masters.join(', itself a port of ')}: ` +
      `a datagram no rule takes on the port goes up to ${last}, an ingress`;
  } else if (links) reach += ', an ingress';
  if (steps.length === 1) {
    if (masters.length) return `${reach} of this rule (${first.join(' -> ')})`;
    return links
      ? `its veth peer ${peer} leads through links back to ${last} (${first.join(' -> ')}), an ingress of this rule`
      : `its veth peer ${peer} is ingress of this rule`;
  }
  const via = steps.slice(1).map((s) => s.rule);
  const where = reach || `its veth peer ${peer} is ingress`;
  const trail = steps
    .map(
      (s, k) =>
        `${s.path.join(' -> ')} [${k + 1 < steps.length ? `rule ${steps[k + 1].rule}, backend ${steps[k + 1].backend}` : `rule ${start}`}]`,
    )
    .join(' -> ');
  return (
    `${where} of rule ${via[0]}, and the datagrams come back to this rule through ` +
    `${via.length > 1 ? 'rules' : 'rule'} ${via.join(', ')}: a loop of rules ${[start, ...via, start].join(' -> ')} (${trail})`
  );
}

/** The key of a rule's backend in the reconciler's host loops: "rule|ip@iface". */
export const loopBackendKey = (rule: string, b: { ip: string; interface: string }) => `${rule}|${b.ip}@${b.interface}`;

/** A forwarding loop the host made, as the reconciler found it. */
export interface HostLoop {
  /** The rules around it, from the first, back to it ("ra -> rb -> ra"), and the way ("E -> md [rule rb], ..."). */
  rules: string;
  through: string;
  /** Its backends ({@link loopBackendKey}), sorted: they are what identifies it. */
  backends: string[];
}

/** The cycles the host makes, by the backends that close them. */
export interface HostLoops {
  /** Backend ({@link loopBackendKey}) -> why it is kept out of its rule's table (names made visible). */
  backends: Map<string, string>;
  /** Each loop once, by its sorted backends joined with " ". */
  loops: Map<string, HostLoop>;
}

/**
 * The cycles the backends `starts` close on the host as it is now (`g`: the peers now, the links in force, the
 * rules in force): each backend on a cycle (a cycle back to its own rule), with the cycle in words.
 */
export function findHostLoops(g: LoopGraph, starts: Iterable<readonly [LoopRule, BackendSpec]>): HostLoops {
  const finder = new RuleLoops(g);
  const out: HostLoops = { backends: new Map(), loops: new Map() };
  for (const [rule, b] of starts) {
    const key = loopBackendKey(rule.name, b);
    if (out.backends.has(key)) continue;
    const c = finder.cycleFrom(rule, b);
    if (!c) continue;
    const members = [...new Set(c.steps.map((s) => loopBackendKey(s.rule, { ip: s.backend, interface: s.iface })))];
    const id = [...members].sort().join(' ');
    const rules = visible([rule.name, ...c.steps.slice(1).map((s) => s.rule), rule.name].join(' -> '));
    const through = visible(
      c.steps
        .map((s, k) => `${s.path.join(' -> ')} [rule ${k + 1 < c.steps.length ? c.steps[k + 1].rule : rule.name}]`)
        .join(', '),
    );
    if (!out.loops.has(id)) out.loops.set(id, { rules, through, backends: [...members].sort() });
    out.backends.set(key, `in a forwarding loop the host made, of rules ${rules} through ${through}: ${LOOP_TAIL}`);
  }
  return out;
}

/** A loop's backends in words: "rule ra's backend 198.18.2.1 on E, rule rb's backend ...". */
export function loopBackendsText(l: HostLoop): string {
  return visible(
    l.backends
      .map((k) => {
        const bar = k.indexOf('|');
        const at = k.indexOf('@', bar);
        return `rule ${k.slice(0, bar)}'s backend ${k.slice(bar + 1, at)} on ${k.slice(at + 1)}`;
      })
      .join(', '),
  );
}

/** A loop as the datapath's problems (health xdpctl.datapath, GetStatus datapath warnings) say it. */
export function hostLoopProblem(l: HostLoop): string {
  return (
    `forwarding loop made by the host: rules ${l.rules} through ${l.through}: the backends that close it are ` +
    `kept out of their tables (${loopBackendsText(l)})`
  );
}
