/**
 * What another writer changed in the state store (the sqlite3 CLI, a script, a restored backup's rows) compared
 * with the desired state this daemon accepted: rows removed, changed or added. Pure: the rows are read by
 * StateStore.readIfChanged and written back by the controller (Controller.checkStore), which says what this
 * found. A rule's kernel ids are not compared (the daemon itself may not have saved rewritten ones); they
 * are written back with a row that is.
 */
import { isDeepStrictEqual } from 'node:util';

import { linkKey, type LinkSpec } from './model.js';
import type { StoredRule, StoredState } from './store.js';

/** A rule's row as SQLite returns it. */
export interface RuleRow {
  name: string;
  spec: string;
  generation: number;
  create_time: number;
  update_time: number;
  kernel: string | null;
}

/** A link's row as SQLite returns it. */
export interface LinkRow {
  key: string;
  a: string;
  b: string;
  direction: string;
}

/** The rows of a store, read whole. */
export interface StoreRows {
  rules: RuleRow[];
  links: LinkRow[];
}

/** What to write to make the store hold the desired state again, and one line per difference. */
export interface StoreDrift {
  putRules: StoredRule[];
  deleteRules: string[];
  putLinks: LinkSpec[];
  deleteLinks: string[];
  /** "rule X was removed from the state store by another writer; row restored", one per difference. */
  said: string[];
}

/** Whether a rule's row holds `r` (its specification, generation and times; JSON compared as values). */
function sameRule(r: StoredRule, row: RuleRow): boolean {
  const { name: _n, generation, createTime, updateTime, kernel: _k, ...spec } = r;
  let stored: unknown;
  try {
    stored = JSON.parse(row.spec);
  } catch {
    return false;
  }
  return (
    row.generation === generation &&
    row.create_time === createTime &&
    row.update_time === updateTime &&
    isDeepStrictEqual(stored, JSON.parse(JSON.stringify(spec)))
  );
}

/** The differences between the desired state `want` and the store's rows `have`. */
export function storeDrift(want: StoredState, have: StoreRows): StoreDrift {
  const d: StoreDrift = { putRules: [], deleteRules: [], putLinks: [], deleteLinks: [], said: [] };
  const rows = new Map(have.rules.map((r) => [r.name, r]));
  for (const r of want.rules) {
    const row = rows.get(r.name);
    if (!row) {
      d.putRules.push(r);
      d.said.push(`rule ${r.name} was removed from the state store by another writer; row restored`);
    } else if (!sameRule(r, row)) {
      d.putRules.push(r);
      d.said.push(`rule ${r.name} was changed in the state store by another writer; row restored`);
    }
  }
  const wanted = new Set(want.rules.map((r) => r.name));
  for (const name of rows.keys()) {
    if (wanted.has(name)) continue;
    d.deleteRules.push(name);
    d.said.push(
      `rule ${name} was added to the state store by another writer (not a rule this daemon accepted: a restart ` +
        'would have applied it); row removed',
    );
  }
  const links = new Map(have.links.map((l) => [l.key, l]));
  for (const l of want.links) {
    const key = linkKey(l);
    const row = links.get(key);
    const name = `link ${l.a}-${l.b}`;
    if (!row) {
      d.putLinks.push(l);
      d.said.push(`${name} was removed from the state store by another writer; row restored`);
    } else if (row.a !== l.a || row.b !== l.b || row.direction !== l.direction) {
      d.putLinks.push(l);
      d.said.push(`${name} was changed in the state store by another writer; row restored`);
    }
  }
  const wantedLinks = new Set(want.links.map(linkKey));
  for (const [key, row] of links) {
    if (wantedLinks.has(key)) continue;
    d.deleteLinks.push(key);
    d.said.push(
      `link ${row.a}-${row.b} was added to the state store by another writer (not a link this daemon ` +
        'accepted: a restart would have applied it); row removed',
    );
  }
  return d;
}
