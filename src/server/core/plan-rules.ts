/**
 * Plan step for rules: from the current desired state, the requested
 * operations and the facts fetched before (interfaces, neighbours), compute
 * everything a transaction writes — or the error that refuses it — with no
 * I/O. Checks: no rule claims an (ingress, port, destination) a stored rule
 * holds (two rules of one request are refused before: matchClash); every
 * interface exists; the tables have room (rule slots, counters, backends,
 * match entries) before anything is written. Deterministic, so it is
 * unit-testable exhaustively.
 */
import { formatMac, nonUnicastMac, parseIp, parseMac, parsePrefix } from '../net/addr.js';
import type { MatchKey } from './dataplane.js';
import { CoreError, type FieldViolation } from './errors.js';
import { neighbourKey, type Facts } from './facts.js';
import type { BackendSpec, BackendStatus, RuleRecord, RuleSpec } from './model.js';
import { absentBackendStatus, backendStatus, egressProblem, mtuWarnings } from './rule-status.js';
import { loopBackendKey } from './rule-loops.js';
import { staticMacKey } from './static-mac.js';
import { backendKey, claimKey, matchId, type PrefixBytes } from './state.js';

const AF_INET = 2;
const IPPROTO_UDP = 17;
/** Rule flag: zero the UDP checksum instead of updating it (bpf/xdpctl.h XDPCTL_RULE_F_UDP_CSUM_ZERO). */
export const RULE_F_UDP_CSUM_ZERO = 0x4;

/** One operation of a transaction: with `next`, create or replace the rule; without, delete it. */
export interface RuleOp {
  name: string;
  next?: RuleSpec;
  /** The request field the rule came from ("rules[3]"), for error messages. */
  field?: string;
  /**
   * Resync and restore: a missing interface does not refuse the rule. A
   * missing ingress gets no match entry, a backend whose interface is missing
   * stays out of the table; both are recorded with ifindex -1 so that the rule
   * is written again when they return.
   */
  lenient?: boolean;
}

/** A backend as it will be written. */
export interface PlannedBackend {
  spec: BackendSpec;
  /** backendKey(spec). */
  key: string;
  ifindex: number;
  /** The egress interface's MAC. */
  smac: string;
  /** Destination MAC, canonical; '' when unresolved. */
  mac: string;
  resolved: boolean;
  /** In the backend table: resolved and its egress can transmit. */
  receiving: boolean;
  status: BackendStatus;
}

/** One rule as it will be written. */
export interface RulePlan {
  name: string;
  spec: RuleSpec;
  field: string;
  ingress: { name: string; ifindex: number }[];
  backends: PlannedBackend[];
  prefixes: PrefixBytes[];
  flags: number;
  /** Match entries to publish (one per ingress interface). */
  matchKeys: MatchKey[];
  /** Every interface the rule is written with -> ifindex. */
  ifindexes: Map<string, number>;
  /** What the rule's status warns about from the facts (rule-status mtuWarnings). */
  warnings: readonly string[];
}

export interface RulesPlan {
  plans: RulePlan[];
}

export interface PlanRulesInput {
  rules: ReadonlyMap<string, RuleRecord>;
  ops: readonly RuleOp[];
  facts: Facts;
  /** claimKey (ingress, port, destination) -> the rule that claims it now. */
  claims: ReadonlyMap<string, string>;
  /** Free ids now. */
  free: { slots: number; ruleStatsIds: number; backendIds: number };
  /** Entries in the kernel now: match keys (matchId -> slot) and source prefixes. */
  inUse: { matchIds: ReadonlyMap<string, number>; srcPrefixes: number };
  /** Capacity of the match table and of the source-prefix LPM trie. */
  capacity: { matches: number; srcPrefixes: number };
}

/**
 * Compute a rules transaction, or throw the CoreError that refuses it. The
 * work is proportional to the operations, not to the rules there are: the
 * checks read the state's indices.
 */
export function planRules(input: PlanRulesInput): RulesPlan {
  for (const _ of checkClaims(input));
  const plans: RulePlan[] = [];
  for (const op of input.ops) if (op.next) plans.push(planOp(op, input.facts));
  for (const _ of checkCapacity(input, plans));
  return { plans };
}

/**
 * {@link planRules} for large changes: the same plan, computed in steps that
 * await `pace` (a {@link pacer} from execute.ts) between rules, so that a
 * 10 000-rule plan does not hold the event loop (reads are answered meanwhile
 * from the state before the change, which planning does not touch).
 */
export async function planRulesPaced(input: PlanRulesInput, pace: () => Promise<void>): Promise<RulesPlan> {
  for (const _ of checkClaims(input)) await pace();
  const plans: RulePlan[] = [];
  for (const op of input.ops) {
    if (op.next) plans.push(planOp(op, input.facts));
    await pace();
  }
  for (const _ of checkCapacity(input, plans)) await pace();
  return { plans };
}

/**
 * One rule's plan with no claim or capacity check: a start adopting rules
 * in place (restore.ts) writes no new slot, and the stored state's claims
 * are its own. Throws the CoreError that refuses the rule.
 */
export const planOne = (op: RuleOp, facts: Facts): RulePlan => planOp(op, facts);

const planOp = (op: RuleOp, facts: Facts): RulePlan =>
  planRule(op.name, op.next!, op.field ?? 'rule', facts, op.lenient ?? false);

/** What a rule matches on `ingress` ("UDP port 9100 to 192.0.2.1 on in0 and in1"), its sources aside. */
function matchText(r: RuleSpec, ingress: readonly string[]): string {
  const on = ingress.length > 1 ? `${ingress.slice(0, -1).join(', ')} and ${ingress.at(-1)}` : ingress[0];
  return `${r.protocol.toUpperCase()} port ${r.port}${r.destination ? ` to ${r.destination}` : ''} on ${on}`;
}

/** A rule's source prefixes as a set of canonical texts ("192.0.2.1" and "192.0.2.1/32" are one). */
function sourceSet(r: RuleSpec): string {
  return r.sourcePrefixes
    .map((t) => {
      const p = parsePrefix(t);
      return `${p.bytes.join('.')}/${p.length}`;
    })
    .sort()
    .join(' ');
}

/**
 * Rule `i` of one request's rule set (`specs[0..i]`, valid, interfaces by device name) against the rules
 * before it: a rule per (ingress, protocol, port, destination), so one that claims a key an earlier rule of
 * the set claims is the request's own mistake, INVALID_ARGUMENT on `rules[i].match` naming the first such rule
 * by index and name, and every ingress they share. `claimedBy` (claimKey -> index of its first claimer) is kept
 * across the calls for i = 0, 1, ... Source prefixes do not tell two rules apart (the datapath finds the rule
 * by the key, then filters by its sources), which the description says when theirs differ.
 */
export function matchClash(
  specs: readonly RuleSpec[],
  i: number,
  claimedBy: Map<string, number>,
): FieldViolation | undefined {
  const r = specs[i];
  let first: number | undefined;
  for (const iface of r.ingressInterfaces) {
    const k = claimKey(iface, r.port, r.destination);
    const j = claimedBy.get(k);
    if (j === undefined) claimedBy.set(k, i);
    else if (j !== i && (first === undefined || j < first)) first = j;
  }
  if (first === undefined) return undefined;
  const o = specs[first];
  const shared = r.ingressInterfaces.filter((x) => claimedBy.get(claimKey(x, r.port, r.destination)) === first);
  const same = sourceSet(r) === sourceSet(o);
  return {
    field: `rules[${i}].match`,
    description:
      `rule "${r.name}" has the same ${same ? 'match' : 'protocol, port and destination'} as rules[${first}] ` +
      `("${o.name}"): ${matchText(r, [...new Set(shared)])}` +
      (same
        ? ''
        : ' (source prefixes do not tell two rules apart: one rule per protocol, port, destination and ingress)'),
  };
}

/**
 * Two rules must not claim the same (ingress, port, destination) after the
 * change. Two rules of one request are the request's own clash, refused
 * before (Controller.ruleSet, {@link matchClash}: INVALID_ARGUMENT); what is
 * left is a rule that claims a key a stored rule the change leaves holds
 * (CreateRule, UpdateRule): PRECONDITION, naming both rules and every shared
 * ingress. The checks below are generators that yield every 256 rules, so
 * that a paced caller lets the event loop run between.
 */
function* checkClaims({ ops, claims }: PlanRulesInput): Generator<void> {
  let n = 0;
  const changing = new Set(ops.map((o) => o.name));
  const newClaims = new Map<string, string>();
  const violations: FieldViolation[] = [];
  for (const op of ops) {
    const r = op.next;
    if (!r) continue;
    const shared = new Map<string, string[]>();
    for (const i of r.ingressInterfaces) {
      const k = claimKey(i, r.port, r.destination);
      const held = claims.get(k);
      const other = newClaims.get(k) ?? (held !== undefined && !changing.has(held) ? held : undefined);
      if (other && other !== op.name) shared.set(other, [...(shared.get(other) ?? []), i]);
      newClaims.set(k, op.name);
    }
    for (const [other, on] of shared) {
      violations.push({
        field: `${op.field ?? `rule(${op.name})`}.match`,
        description: `rule "${op.name}" and rule "${other}" both match ${matchText(r, on)}`,
      });
    }
    if ((++n & 255) === 0) yield;
  }
  if (violations.length) {
    const v = violations[0];
    throw new CoreError('precondition', `${v.field}: ${v.description}`, violations);
  }
}

/** Capacity, before anything is written: EXHAUSTED naming the full table otherwise. */
function* checkCapacity({ rules, free, inUse, capacity }: PlanRulesInput, plans: RulePlan[]): Generator<void> {
  // Capacity, before anything is written. New rules go into fresh slots while
  // the slots they replace still hold theirs (shadow copies): the peak is
  // what is in the kernel now plus everything the change writes.
  const needSlots = plans.length;
  const needBackends = plans.reduce((n, p) => n + p.backends.length, 0);
  const newRules = plans.filter((p) => !rules.has(p.name)).length;
  const needPrefixes = plans.reduce((n, p) => n + p.prefixes.length, 0);
  const newKeys = new Set<string>();
  let n = 0;
  for (const p of plans) {
    for (const k of p.matchKeys) if (!inUse.matchIds.has(matchId(k))) newKeys.add(matchId(k));
    if ((++n & 255) === 0) yield;
  }
  const peakMatches = inUse.matchIds.size + newKeys.size;
  const full = (what: string, need: number, have: number) =>
    new CoreError('exhausted', `${what} table full: the change needs ${need}, ${have} free`);
  if (needSlots > free.slots) throw full('rule slot', needSlots, free.slots);
  if (newRules > free.ruleStatsIds) throw full('rule counter', newRules, free.ruleStatsIds);
  if (needBackends > free.backendIds) throw full('backend', needBackends, free.backendIds);
  if (peakMatches > capacity.matches) {
    throw full('match', newKeys.size, Math.max(0, capacity.matches - inUse.matchIds.size));
  }
  if (inUse.srcPrefixes + needPrefixes > capacity.srcPrefixes) {
    throw full('source prefix', needPrefixes, Math.max(0, capacity.srcPrefixes - inUse.srcPrefixes));
  }
}

/** Canonical texts of MACs seen lately (a start plans 40 000 backends that name a few MACs, or one each). */
const canonical = new Map<string, string>();

/** `formatMac(parseMac(text))` (throws as parseMac does), remembered for the next few thousand texts. */
function canonicalMac(text: string): string {
  let c = canonical.get(text);
  if (c === undefined) {
    c = formatMac(parseMac(text));
    if (canonical.size >= 4096) canonical.clear();
    canonical.set(text, c);
  }
  return c;
}

/**
 * Why a MAC a neighbour entry holds for a backend given without a MAC is never written (the broadcast, a
 * multicast or the all-zero MAC, which the API refuses as a static MAC: an entry set by hand may hold one),
 * naming the MAC that answered an ARP request of ours for the address (`answered`), if any; undefined: a
 * unicast MAC.
 */
export function nonUnicastNeighbour(ip: string, iface: string, mac: string, answered?: string): string | undefined {
  let why: string | undefined;
  try {
    why = nonUnicastMac(parseMac(mac));
  } catch {
    return undefined;
  }
  if (!why) return undefined;
  return (
    `the neighbour entry for ${ip} on ${iface} holds ${mac}, which ${why}: never written to the datapath (` +
    (answered && !nonUnicastMac(parseMac(answered))
      ? `${ip} answers ARP requests of ours from ${answered.toLowerCase()}; replace the entry or give that MAC)`
      : `no ARP request of ours for ${ip} answered yet)`)
  );
}

function planRule(name: string, spec: RuleSpec, field: string, facts: Facts, lenient: boolean): RulePlan {
  const absent = (iface: string) => lenient && !facts.interfaces.get(iface);
  const ingress = spec.ingressInterfaces.flatMap((iface, i) => {
    if (absent(iface)) return [];
    const info = facts.interfaces.get(iface);
    if (!info) {
      throw new CoreError('not-found', `${field}.ingress_interfaces[${i}]: interface "${iface}" does not exist`, [
        { field: `${field}.ingress_interfaces[${i}]`, description: `interface "${iface}" does not exist` },
      ]);
    }
    return [{ name: iface, ifindex: info.ifindex }];
  });
  const backends = spec.backends.map((b, i): PlannedBackend => {
    if (absent(b.interface)) {
      const status = absentBackendStatus(b, facts.movedEgresses?.get(b.interface));
      return {
        spec: b,
        key: backendKey(b),
        ifindex: -1,
        smac: '',
        mac: b.mac,
        resolved: false,
        receiving: false,
        status,
      };
    }
    const info = facts.interfaces.get(b.interface);
    if (!info) {
      throw new CoreError('not-found', `${field}.backends[${i}].interface: interface "${b.interface}" does not exist`, [
        { field: `${field}.backends[${i}].interface`, description: `interface "${b.interface}" does not exist` },
      ]);
    }
    // The egress's own MAC becomes the frame's source: a device without an Ethernet address (lo, a
    // tun or WireGuard device: all zeros) cannot send the rewritten Ethernet frame.
    if (/^(00:){5}00$/.test(info.mac)) {
      const description = `interface "${b.interface}" has no Ethernet address (its MAC is ${info.mac}): a rewritten frame cannot leave through it`;
      throw new CoreError('invalid', `${field}.backends[${i}].interface: ${description}`, [
        { field: `${field}.backends[${i}].interface`, description },
      ]);
    }
    const nkey = neighbourKey(b.ip, b.interface);
    const neighbour = b.mac === '' ? facts.neighbours.get(nkey) : undefined;
    // No neighbour entry (not a failed one) for a backend the datapath forwards to: its MAC is kept, said so.
    const kept = b.mac === '' && !neighbour ? facts.keptMacs?.get(nkey) : undefined;
    const raw = b.mac === '' ? (neighbour ?? kept ?? '') : b.mac;
    const resolved = raw !== '';
    const mac = raw && canonicalMac(raw);
    const napi = facts.napi.get(b.interface);
    const egress =
      egressProblem(b.interface, facts.links.get(b.interface)) ?? (napi && !napi.ok ? napi.detail : undefined);
    const conflict =
      (b.mac !== ''
        ? facts.macConflicts.get(staticMacKey(b.ip, b.interface, b.mac))
        : mac
          ? nonUnicastNeighbour(b.ip, b.interface, mac, facts.answeredMacs?.get(nkey))
          : undefined) ?? (facts.hostLoops?.size ? facts.hostLoops.get(loopBackendKey(name, b)) : undefined);
    const status = backendStatus({
      ip: b.ip,
      interface: b.interface,
      givenMac: b.mac,
      mac,
      resolved,
      egress,
      conflict,
      kept: !!kept,
    });
    return {
      spec: b,
      key: backendKey(b),
      ifindex: info.ifindex,
      smac: info.mac,
      mac,
      resolved,
      receiving: status.receiving,
      status,
    };
  });
  const daddr = spec.destination ? parseIp(spec.destination).bytes : new Uint8Array(4);
  const warnings = mtuWarnings(
    ingress.map((i) => i.name),
    backends.filter((b) => b.receiving).map((b) => b.spec),
    (i) => facts.links.get(i)?.mtu,
    (i) => facts.peers.get(i),
  );
  return {
    name,
    spec,
    field,
    ingress,
    backends,
    warnings,
    prefixes: spec.sourcePrefixes.map((s) => {
      const x = parsePrefix(s);
      return { length: x.length, addr: x.bytes };
    }),
    flags: spec.udpChecksum === 'zero' ? RULE_F_UDP_CSUM_ZERO : 0,
    matchKeys: ingress.map((i) => ({
      ifindex: i.ifindex,
      dport: spec.port,
      proto: IPPROTO_UDP,
      family: AF_INET,
      daddr,
    })),
    ifindexes: ifindexesOf(spec, ingress, backends),
  };
}

/**
 * Every interface a rule is written with -> its ifindex: -1 for an ingress missing now (lenient), then
 * the ingress and backend interfaces found (in this order, a later one replacing an earlier). Built with
 * loops: a start plans 10 000 rules.
 */
function ifindexesOf(
  spec: RuleSpec,
  ingress: readonly { name: string; ifindex: number }[],
  backends: readonly PlannedBackend[],
): Map<string, number> {
  const out = new Map<string, number>();
  for (const i of spec.ingressInterfaces) out.set(i, -1);
  for (const i of ingress) out.set(i.name, i.ifindex);
  for (const b of backends) out.set(b.spec.interface, b.ifindex);
  return out;
}
