/**
 * The rules' facts about each egress interface (Controller.egressUses): its "rule/NAME/egress" users, sorted,
 * and what the rules' statuses say against it (no native redirects, every redirected frame dropped, cannot be
 * verified, an MTU below an ingress's), each text once with the rules it is for, in the rules' order.
 *
 * Kept up to date from what changed (CoreState.egressRulesChanged: egresses whose users changed;
 * CoreState.egressNotesDirty: rules whose record, status or place changed), not made again from every rule
 * after each change: with 10 000 rules of 4 backends the walk over every rule after every change and pass was
 * 20-40 ms of CPU and most of the garbage an UpdateRule made. What it gives is what that walk gave
 * (test/unit/egress-notes.test.ts compares the two over random changes).
 */
import type { RuleRecord, RuleStatus } from './model.js';
import { isMtuUnverified, isMtuWarning } from './rule-status.js';
import type { CoreState } from './state.js';

/** Per egress: each text, with its users ("rule/NAME"), in order of their first note. */
export type EgressTexts = Map<string, Map<string, string[]>>;

export interface EgressNotes {
  problems: EgressTexts;
  unverified: EgressTexts;
  frames: EgressTexts;
}

const KINDS = ['problems', 'unverified', 'frames'] as const;
type Kind = 0 | 1 | 2;

/** One note of a rule: its kind, the egress it is about, its text. */
interface Item {
  kind: Kind;
  egress: string;
  text: string;
}

/** What a rule says about egresses, with what it was made from (its record, status and place). */
interface Said {
  rule: RuleRecord | undefined;
  status: RuleStatus | undefined;
  order: number | undefined;
  items: readonly Item[];
}

const NOTHING: readonly Item[] = [];

/** One user's text about an egress, once per user in a row. */
export function note(kind: EgressTexts, name: string, text: string, user: string): void {
  let m = kind.get(name);
  if (!m) kind.set(name, (m = new Map()));
  const users = m.get(text);
  if (!users) m.set(text, [user]);
  else if (users.at(-1) !== user) users.push(user);
}

/**
 * What one rule's status says about its egresses, in the order the walk over every rule noted them: its
 * backends (why one cannot take frames, or that it cannot be verified), then its MTU warnings.
 */
export function ruleItems(r: RuleRecord, s: RuleStatus | undefined): readonly Item[] {
  if (!s || s.state === 'failed') return NOTHING;
  let out: Item[] | undefined;
  const add = (kind: Kind, egress: string, text: string) => (out ??= []).push({ kind, egress, text });
  for (const b of s.backends) {
    if (!b.receiving && b.egress) add(0, b.interface, b.egress);
    else if (b.receiving && b.unverified && b.egressUnverified)
      add(1, b.interface, `cannot be verified: ${b.egressUnverified}`);
  }
  for (const w of s.warnings) {
    if (!isMtuWarning(w) && !isMtuUnverified(w)) continue;
    const b = r.backends.find(
      (x) =>
        w.startsWith(`backend ${x.ip}: egress ${x.interface} has MTU `) ||
        w.startsWith(`backend ${x.ip}: egress ${x.interface}'s veth peer `),
    );
    if (b) add(2, b.interface, w.slice(`backend ${b.ip}: `.length));
  }
  return out ?? NOTHING;
}

/** The notes made from every rule at once (what {@link EgressIndex} keeps; tests compare the two). */
export function notesOfAll(state: CoreState): EgressNotes {
  const notes: EgressNotes = { problems: new Map(), unverified: new Map(), frames: new Map() };
  for (const r of state.rules.values()) {
    const items = ruleItems(r, state.ruleKernel.get(r.name)?.status);
    for (const it of items) note(notes[KINDS[it.kind]], it.egress, it.text, `rule/${r.name}`);
  }
  return notes;
}

/** The egresses' users made from every rule at once (tests compare them with {@link EgressIndex.users}). */
export function usersOfAll(state: CoreState): Map<string, readonly string[]> {
  const byEgress = new Map<string, Set<string>>();
  for (const r of state.rules.values()) {
    for (const b of r.backends) {
      let u = byEgress.get(b.interface);
      if (!u) byEgress.set(b.interface, (u = new Set()));
      u.add(`rule/${r.name}/egress`);
    }
  }
  return new Map([...byEgress].map(([e, u]) => [e, [...u].sort()]));
}

export class EgressIndex {
  /** Each egress's "rule/NAME/egress" users, sorted (one array per change of its users: conditions.ts keeps its text). */
  readonly users = new Map<string, readonly string[]>();
  /** What the rules' statuses say about each egress. */
  readonly notes: EgressNotes = { problems: new Map(), unverified: new Map(), frames: new Map() };
  /** What each rule said when last read (only rules that say something, or said something). */
  private readonly said = new Map<string, Said>();
  /** "kind|egress" -> the rules that say something of that kind about it. */
  private readonly sayers = new Map<string, Set<string>>();
  /** "kind|egress" whose texts are to be made again (kept here: an update left between two yields resumes them). */
  private readonly dirty = new Set<string>();

  constructor(private readonly state: CoreState) {}

  /** Whether nothing changed since the last {@link update}. */
  current(): boolean {
    const st = this.state;
    return st.egressRulesChanged.size === 0 && st.egressNotesDirty.size === 0 && this.dirty.size === 0;
  }

  /**
   * Bring users and notes up to date with what changed, yielding every 256 rules or egresses read (a large
   * change marks every rule). Whatever changes between two yields is marked and read before it ends.
   */
  *update(): Generator<void, void> {
    const st = this.state;
    let n = 0;
    for (const e of st.egressRulesChanged) {
      // (An egress of many users is sorted in a turn of its own: 10 000 names are several ms.)
      if ((++n & 15) === 0 || (st.egressRules.get(e)?.size ?? 0) >= 1024) yield;
      if (!st.egressRulesChanged.delete(e)) continue; // read by another update meanwhile
      const set = st.egressRules.get(e);
      if (!set) {
        this.users.delete(e);
        continue;
      }
      const next = [...set].sort();
      const old = this.users.get(e);
      if (!old || old.length !== next.length || old.some((u, i) => u !== next[i])) this.users.set(e, next);
    }
    const dirty = this.dirty;
    for (const name of st.egressNotesDirty) {
      if ((++n & 255) === 0) yield;
      if (!st.egressNotesDirty.delete(name)) continue; // read by another update meanwhile
      const rule = st.rules.get(name);
      const status = rule && st.ruleKernel.get(name)?.status;
      const order = rule && st.ruleOrder.get(name);
      const was = this.said.get(name);
      if (was && was.rule === rule && was.status === status && was.order === order) continue;
      const items = rule ? ruleItems(rule, status) : NOTHING;
      if (items.length === 0 && !was) continue;
      for (const it of was?.items ?? NOTHING) {
        const key = `${it.kind}|${it.egress}`;
        const s = this.sayers.get(key);
        s?.delete(name);
        if (s?.size === 0) this.sayers.delete(key);
        dirty.add(key);
      }
      for (const it of items) {
        const key = `${it.kind}|${it.egress}`;
        let s = this.sayers.get(key);
        if (!s) this.sayers.set(key, (s = new Set()));
        s.add(name);
        dirty.add(key);
      }
      if (items.length) this.said.set(name, { rule, status, order, items });
      else this.said.delete(name);
    }
    // Each egress's texts of a kind made again from the rules that say something of it, in the rules' order.
    for (const key of dirty) {
      if ((++n & 15) === 0 || (this.sayers.get(key)?.size ?? 0) >= 1024) yield;
      if (!dirty.delete(key)) continue; // made by another update meanwhile
      const bar = key.indexOf('|');
      const kind = Number(key.slice(0, bar)) as Kind;
      const egress = key.slice(bar + 1);
      const into = this.notes[KINDS[kind]];
      const names = this.sayers.get(key);
      if (!names) {
        into.delete(egress);
        continue;
      }
      const byOrder = [...names].sort((a, b) => this.said.get(a)!.order! - this.said.get(b)!.order!);
      const m: EgressTexts = new Map();
      for (const name of byOrder) {
        for (const it of this.said.get(name)!.items) {
          if (it.kind === kind && it.egress === egress) note(m, egress, it.text, `rule/${name}`);
        }
      }
      into.set(egress, m.get(egress)!);
    }
  }
}
