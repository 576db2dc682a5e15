/**
 * The repair subject (core/fights.ts) of a kernel entry the reconciler found changed and rewrote, from the line
 * that says it ("<entry>: kernel X, desired Y"; execute.ts writeRepairs, kernel-check.ts, dataplane/tables.ts
 * checkPortUse and checkIfFlags): one subject per entry (not per field or per position that differed, so that an
 * entry rewritten in another way each time is still one fight), and the objects that own it, which a fight over
 * it makes DEGRADED (rules) or warned (link directions):
 *  - a rule's own entries ("rule NAME: ...": backend, backend table, rule entry, source prefixes, match entry):
 *    that rule;
 *  - the per-port index entry of a port (map rule_ports): the rules with a match entry on that port;
 *  - an interface's flags (if_flags, if_flags_big): the rules whose ingress it is, the link direction from it;
 *  - a link direction's counters' egress (xc_egress): that direction.
 * An entry no object holds (a match entry or link entry no rule or link wrote) has no owner: the fight is a
 * datapath problem only. Reads the state, writes nothing.
 */
import type { RepairSubject } from './fights.js';
import type { CoreState } from './state.js';

/** The maps whose entry is named by its first argument only (the rest says which part of it differed). */
const BY_FIRST_ARG = new Set(['rule_ring', 'src_allow']);

/** The subject of the rewritten entry `line` says, with its owners as `state` holds them now. */
export function entrySubject(line: string, state: Pick<CoreState, 'rules' | 'ruleKernel' | 'linkDirs'>): RepairSubject {
  const m = /\(map (\w+)([,:] )([^)]*)\)/.exec(line);
  if (!m) {
    const at = line.indexOf(': kernel ');
    const entry = at > 0 ? line.slice(0, at) : line;
    return { key: `entry|${entry}`, what: `the kernel entry ${entry}`, interfaces: [] };
  }
  const [, map, sep, args] = m;
  const prefix = line.slice(0, m.index);
  const id = BY_FIRST_ARG.has(map) ? args.split(/[,:] /)[0] : args;
  const entry = `${prefix}(map ${map}${sep}${id})`;
  const rules = new Set<string>();
  const links = new Set<string>();
  const rule = /^rule ([a-z0-9-]+): /.exec(prefix);
  if (rule) rules.add(rule[1]);
  else if (map === 'rule_ports') {
    const port = /^port (\d+)$/.exec(args);
    if (port) {
      const p = Number(port[1]);
      for (const [name, k] of state.ruleKernel) if (k.matchKeys.some((x) => x.dport === p)) rules.add(name);
    }
  } else if (map === 'if_flags' || map === 'if_flags_big' || map === 'xc_egress') {
    const ifindex = /ifindex (\d+)$/.exec(args);
    const dir = ifindex ? state.linkDirs.get(Number(ifindex[1])) : undefined;
    if (dir) links.add(dir.from);
    const name = map === 'xc_egress' ? undefined : (dir?.from ?? /^interface flags of (\S+) $/.exec(prefix)?.[1]);
    if (name) for (const [n, r] of state.rules) if (r.ingressInterfaces.includes(name)) rules.add(n);
  }
  return {
    key: `entry|${entry}`,
    what: `the kernel entry ${entry}`,
    interfaces: [],
    ...(rules.size ? { rules: [...rules].sort() } : {}),
    ...(links.size ? { links: [...links].sort() } : {}),
  };
}
