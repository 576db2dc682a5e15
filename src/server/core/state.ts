/**
 * The core's in-memory state: the desired state users asked for (rules,
 * links) and the kernel resources it holds (rule slots, counter ids, backend
 * ids, attachments, link directions). Plain data and id pools, no I/O; the
 * execute step is the only writer during a transaction.
 */
import type { Dataplane, MatchKey } from './dataplane.js';
import { ConditionStore } from './conditions.js';
import { IdPool } from './ids.js';
import type { LinkSpec, RuleRecord, RuleStatus } from './model.js';
import { STATE_VERSION, type StoredState } from './store.js';

/** A source prefix as the datapath stores it. */
export interface PrefixBytes {
  length: number;
  addr: Uint8Array;
}

/** Kernel resources held by one rule. */
export interface RuleKernel {
  slot: number;
  statsId: number;
  matchKeys: MatchKey[];
  prefixes: PrefixBytes[];
  /** backend identity (ip@iface) -> kernel ids. */
  backends: Map<string, { id: number; statsId: number }>;
  /** ifindex of every interface the rule was written with (ingress and egress); -1 while missing. */
  ifindexes: Map<string, number>;
  /** As written by the last transaction; `status` is this lowered by what resync observes since. */
  status: RuleStatus;
  /** The written status while `status` shows an observed problem (set by resync). */
  written?: RuleStatus;
  /** Problems of its ingress interfaces the last resync pass saw (missing, foreign program). */
  ingressProblems?: string[];
}

/** An interface the program is attached to by us, with who needs it. */
export interface Attachment {
  ifindex: number;
  users: Set<string>;
  /** Why the last detach (no users left) failed; the attachment stays listed and is retried. */
  detachError?: string;
}

/** The identity of a backend within a rule: its address and egress interface. */
export const backendKey = (b: { ip: string; interface: string }) => `${b.ip}@${b.interface}`;

/** A match key as a string (map key for "who holds this entry"). */
export function matchId(k: MatchKey): string {
  return `${k.ifindex}|${k.dport}|${k.proto}|${Array.from(k.daddr).join('.')}`;
}

export class CoreState {
  readonly rules = new Map<string, RuleRecord>();
  readonly ruleKernel = new Map<string, RuleKernel>();
  readonly links = new Map<string, LinkSpec>();
  readonly slots: IdPool;
  readonly ruleStatsIds: IdPool;
  readonly backendIds: IdPool;
  readonly backendStatsIds: IdPool;
  /** Interfaces we attached, with who uses them. */
  readonly attached = new Map<string, Attachment>();
  /** Interfaces we need that another XDP program occupies (name -> its program id): left alone, reported. */
  readonly foreign = new Map<string, number>();
  /** Last status logged per rule or interface ("state|message"), so each transition is logged once. */
  readonly logged = new Map<string, string>();
  /** Rules the datapath refused at start or resync: when to try again (ms since epoch). */
  readonly failed = new Map<string, number>();
  /** Conditions of rules, links and interfaces with their transition times. */
  readonly conditions = new ConditionStore();
  /** Link directions in the kernel: ingress ifindex -> names. */
  readonly linkDirs = new Map<number, { from: string; to: string }>();

  constructor(capacity: Dataplane['capacity']) {
    this.slots = new IdPool(1, capacity.ruleSlots);
    this.ruleStatsIds = new IdPool(1, capacity.statsIds);
    this.backendIds = new IdPool(1, capacity.backends);
    this.backendStatsIds = new IdPool(1, capacity.backends);
  }

  /** Interfaces a desired state needs the program on, with their users ("rule/web", "link/a:b"). */
  interfaceUsers(
    rules: ReadonlyMap<string, { name: string; ingressInterfaces: string[] }> = this.rules,
    links: ReadonlyMap<string, LinkSpec> = this.links,
  ): Map<string, Set<string>> {
    const out = new Map<string, Set<string>>();
    const add = (name: string, user: string) => {
      if (!out.has(name)) out.set(name, new Set());
      out.get(name)!.add(user);
    };
    for (const r of rules.values()) for (const i of r.ingressInterfaces) add(i, `rule/${r.name}`);
    for (const l of links.values()) {
      add(l.a, `link/${l.a}:${l.b}`);
      if (l.direction === 'both') add(l.b, `link/${l.a}:${l.b}`);
    }
    return out;
  }

  /** The desired state with the kernel ids that keep counters across restarts. */
  stored(): StoredState {
    return {
      version: STATE_VERSION,
      rules: [...this.rules.values()].map((r) => {
        const k = this.ruleKernel.get(r.name);
        return {
          ...r,
          kernel: k && {
            slot: k.slot,
            statsId: k.statsId,
            backends: Object.fromEntries(k.backends),
          },
        };
      }),
      links: [...this.links.values()],
    };
  }
}
