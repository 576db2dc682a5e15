/**
 * The repair subject (core/fights.ts) of a kernel entry the reconciler found changed and rewrote, from the record
 * the code that rewrote it hands over with its line ({@link EntryRepair}: execute.ts writeRepairs, kernel-check.ts,
 * dataplane/tables.ts checkPortUse and checkIfFlags): one subject per entry (its map and key, not the fields or
 * positions that differed, so that an entry rewritten in another way each time is still one fight), and the
 * objects that own it, which a fight over it makes DEGRADED (rules) or warned (link directions):
 *  - a rule's own entries (backend, backend table, rule entry, source prefixes, match entry): that rule;
 *  - the per-port index entry of a port (map rule_ports): the rules with a match entry on that port;
 *  - an interface's flags (if_flags, if_flags_big): the rules whose ingress it is, the link direction from it;
 *  - a link direction's counters' egress (xc_egress): that direction.
 * An entry no object holds (a match entry no rule wrote) has no owner: the fight is a datapath problem only.
 * The line is said, never read here: its wording is free to change. Reads the state, writes nothing.
 */
import type { RepairSubject } from './fights.js';
import type { CoreState } from './state.js';

/** What owns a rewritten kernel entry, as the code that rewrote it knows it ({@link entrySubject} finds the objects). */
export type EntryOwner =
  /** One of the rule's own entries. */
  | { kind: 'rule'; rule: string }
  /** The per-port index entry of `port`: the rules with a match entry on it. */
  | { kind: 'port'; port: number }
  /** An interface's flags word: the rules whose ingress it is (`name`: the interface's name, if known), its link direction. */
  | { kind: 'interface'; ifindex: number; name?: string }
  /** An entry of the link direction from `ifindex`. */
  | { kind: 'link'; ifindex: number }
  /** No object of the daemon holds it. */
  | { kind: 'none' };

/** One kernel entry found to differ from the desired state and rewritten. */
export interface EntryRepair {
  /** What differed, for the log and replies ("<entry>: kernel X, desired Y"). */
  line: string;
  /** The map (`rule_ring`, `if_flags`, ...). */
  map: string;
  /** The entry's key in `map`, unique within it (a rule slot, backend id, port, ifindex, match key). */
  key: string;
  /** The entry in words, as `line` names it: `rule web: backend table (map rule_ring, rule slot 3)`. */
  entry: string;
  owner: EntryOwner;
  /**
   * Set when the entry was written because a backend is out of its table for what the host shows now (its egress
   * missing, down, ...: the backend's status message), not because it differed from what was last written.
   */
  takenOut?: string;
}

/** The subject of the rewritten entry `r`, with its owners as `state` holds them now (`r.line` is not read). */
export function entrySubject(
  r: EntryRepair,
  state: Pick<CoreState, 'rules' | 'ruleKernel' | 'linkDirs'>,
): RepairSubject {
  const rules = new Set<string>();
  const links = new Set<string>();
  const o = r.owner;
  if (o.kind === 'rule') rules.add(o.rule);
  else if (o.kind === 'port') {
    for (const [name, k] of state.ruleKernel) if (k.matchKeys.some((x) => x.dport === o.port)) rules.add(name);
  } else if (o.kind === 'interface' || o.kind === 'link') {
    const dir = state.linkDirs.get(o.ifindex);
    if (dir) links.add(dir.from);
    const name = o.kind === 'interface' ? (dir?.from ?? o.name) : undefined;
    if (name) for (const [n, x] of state.rules) if (x.ingressInterfaces.includes(name)) rules.add(n);
  }
  return {
    key: `entry|${r.map}|${r.key}`,
    what: `the kernel entry ${r.entry}`,
    interfaces: [],
    ...(rules.size ? { rules: [...rules].sort() } : {}),
    ...(links.size ? { links: [...links].sort() } : {}),
  };
}
