/**
 * One problem line per rule not ACTIVE ("rule NAME is DEGRADED: why"), in the order of the rules' kernel records
 * (what the walk over every rule gave), kept up to date from what changed (CoreState.problemsDirty: rules whose
 * status, record or place may have changed) instead of made again after every reconciler pass: with 10 000 rules
 * not ACTIVE that walk made 10 000 lines (and their garbage) after every pass, and the report compared them all.
 * The list is a new array only when a line changed, so that an unchanged list compares as the same object.
 * test/unit/rule-problems.test.ts compares it with the walk over random changes.
 */
import type { LinkSpec, RuleStatus } from './model.js';
import { shadowedStatus } from './shadow.js';
import type { CoreState } from './state.js';

/** A rule's problem line, or undefined when it is ACTIVE (its status as a read shows it: links that shadow it taken in). */
export function problemLine(name: string, s: RuleStatus): string | undefined {
  return s.state !== 'active' ? `rule ${name} is ${s.state.toUpperCase()}: ${s.message}` : undefined;
}

/** The rules' problem lines made from every rule at once (what {@link RuleProblems} keeps; tests compare them). */
export function problemsOfAll(state: CoreState, shadows: Map<string, LinkSpec>): string[] {
  const out: string[] = [];
  for (const [name, k] of state.ruleKernel) {
    const r = state.rules.get(name);
    const line = problemLine(name, r && shadows.size ? shadowedStatus(r, k.status, shadows) : k.status);
    if (line !== undefined) out.push(line);
  }
  return out;
}

/** From how many rules to read an update takes the lines out and puts them in as a whole. */
const BULK = 256;

interface Line {
  name: string;
  order: number;
  line: string;
}

export class RuleProblems {
  /** What each rule's line was made from (its status, record, place), for every rule with a kernel record read. */
  private readonly seen = new Map<
    string,
    { status: RuleStatus; rule: unknown; order: number; shadows: number; line?: Line }
  >();
  /** Counts the changes of {@link shadows}: a line made under others is made again. */
  private shadowsSeen = 0;
  /** The lines, in the kernel records' order. */
  private readonly sorted: Line[] = [];
  private out: readonly string[] = [];
  /** Whether {@link sorted} changed since {@link out} was made from it. */
  private outOfDate = false;
  /** The links that shadowed an ingress when the lines were made (a change of them makes every line again). */
  private shadows: Map<string, LinkSpec> = new Map();

  constructor(private readonly state: CoreState) {}

  /**
   * Read what changed (yielding every 1 024 rules read: a large change or a sweep marks every rule) and give
   * the lines. `shadows`: the links that shadow an ingress now (shadow.ts activeLinkSources).
   */
  *update(shadows: Map<string, LinkSpec>): Generator<void, readonly string[]> {
    const st = this.state;
    if (!sameShadows(shadows, this.shadows)) {
      this.shadows = shadows;
      this.shadowsSeen++;
      for (const name of this.seen.keys()) st.problemsDirty.add(name);
    }
    let n = 0;
    // Many lines at once (a large change, a sweep): taken out and put in as a whole, then sorted once (one
    // splice each was quadratic in the lines).
    this.flush(); // (another update under way between two of its slices: what it took out and put in first)
    if (st.problemsDirty.size > BULK) this.bulk = { gone: new Set(), added: [] };
    for (const name of st.problemsDirty) {
      if ((++n & 1023) === 0) yield;
      if (!st.problemsDirty.delete(name)) continue; // read by another update meanwhile
      const k = st.ruleKernel.get(name);
      const rule = st.rules.get(name);
      const was = this.seen.get(name);
      if (!k) {
        if (was) {
          this.seen.delete(name);
          if (was.line) this.remove(was.line);
        }
        continue;
      }
      const order = st.kernelOrder.get(name)!;
      const seen = this.shadowsSeen;
      if (was && was.status === k.status && was.rule === rule && was.order === order && was.shadows === seen) continue;
      const s = rule && this.shadows.size ? shadowedStatus(rule, k.status, this.shadows) : k.status;
      const text = problemLine(name, s);
      if (was?.line && was.line.line === text && was.line.order === order) {
        this.seen.set(name, { status: k.status, rule, order, shadows: seen, line: was.line });
        continue;
      }
      if (was?.line) this.remove(was.line);
      const line = text === undefined ? undefined : { name, order, line: text };
      if (line) this.insert(line);
      this.seen.set(name, { status: k.status, rule, order, shadows: seen, line });
    }
    this.flush();
    if (this.outOfDate) {
      this.out = this.sorted.map((l) => l.line);
      this.outOfDate = false;
    }
    return this.out;
  }

  /** {@link update} in one piece. */
  lines(shadows: Map<string, LinkSpec>): readonly string[] {
    const it = this.update(shadows);
    for (;;) {
      const r = it.next();
      if (r.done) return r.value;
    }
  }

  private at(order: number): number {
    let lo = 0;
    let hi = this.sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.sorted[mid].order < order) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** What an update of many took out and put in, into {@link sorted}: sorted once. */
  private flush(): void {
    const bulk = this.bulk;
    if (!bulk) return;
    this.bulk = undefined;
    const kept = this.sorted.filter((l) => !bulk.gone.has(l));
    for (const l of bulk.added) kept.push(l);
    kept.sort((a, b) => a.order - b.order);
    this.sorted.length = 0;
    for (const l of kept) this.sorted.push(l);
    this.outOfDate = true;
  }

  /** Lines taken out and put in by an update of many ({@link BULK}), applied at its end. */
  private bulk?: { gone: Set<Line>; added: Line[] };

  private insert(l: Line): void {
    if (this.bulk) {
      this.bulk.added.push(l);
      return;
    }
    this.sorted.splice(this.at(l.order), 0, l);
    this.outOfDate = true;
  }

  private remove(l: Line): void {
    if (this.bulk) {
      const i = this.bulk.added.indexOf(l);
      if (i >= 0) this.bulk.added.splice(i, 1);
      else this.bulk.gone.add(l);
      return;
    }
    const i = this.at(l.order);
    if (this.sorted[i] !== l) return;
    this.sorted.splice(i, 1);
    this.outOfDate = true;
  }
}

function sameShadows(a: Map<string, LinkSpec>, b: Map<string, LinkSpec>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}
