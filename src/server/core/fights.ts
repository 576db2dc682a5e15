/**
 * Repairs that do not hold: another tool undoing, again and again, what the daemon repairs (a loop of
 * `ip link set dev X xdp off`, of `ethtool -K PEER gro off`, a runtime re-applying its settings). Each repair
 * alone is logged as settling things; a fight is not settled, and saying "repaired" once a second while
 * statuses say ACTIVE hides it. Here every repair kind records "repaired <subject>" with a monotonic time
 * (core/clock.ts monotonicMs: a wall-clock step must not start or end a fight):
 *  - the {@link FIGHT_REPAIRS}rd repair of one subject within {@link FIGHT_WINDOW_MS} is a fight: one warning
 *    naming the subject and what keeps undoing it when that is known; while it lasts the rules and links
 *    using the subject's interfaces, and those that own it (a map entry's rules and link directions), are
 *    DEGRADED / warned with a message naming it (rule-status.ts judgeRule, resync.ts linkDirectionWarning),
 *    it is a datapath problem (`xdpctl.datapath` NOT_SERVING,
 *    GetStatus warnings), and its repairs are not logged one by one: one line per {@link FIGHT_WINDOW_MS}
 *    gives their count;
 *  - it ends when {@link FIGHT_WINDOW_MS} pass with no repair of the subject: one line says so (with the
 *    repairs not said yet), statuses come back.
 * A repair is recorded only where the kernel state was observed wrong and then written, once per subject per
 * reconciler pass ({@link RepairFights.beginPass}): one observed undo is one repair. The daemon sees the state
 * only when it looks (a pass, about once a second), so undos between two looks are one repair, and what is
 * said counts repairs, never undos.
 * Owns no kernel state and does no I/O but its log lines; the callers decide what a repair is.
 */
import { monotonicMs } from './clock.js';
import type { Logger } from '../log.js';

/** The window (ms): repairs of one subject within it count toward a fight; a fight ends after one without any. */
export const FIGHT_WINDOW_MS = 10_000;
/** The repair (within {@link FIGHT_WINDOW_MS} of the first counted) that makes a fight. */
export const FIGHT_REPAIRS = 3;

/**
 * The window for a subject the daemon looks at every `intervalMs` (a repair of it can come no more often):
 * {@link FIGHT_WINDOW_MS}, or longer when {@link FIGHT_REPAIRS} looks in a row do not fit in it (1.5 times
 * their span: a look may come late on a loaded machine). So an undo repeated as often as the daemon looks is a
 * fight whatever its cadence: what the full kernel comparison alone sees, every ~7 s with 10 000 rules, gets a
 * window of ~21 s (before, three repairs 6.8 s apart never fell within 10 s).
 */
export function fightWindow(intervalMs: number): number {
  return Math.max(FIGHT_WINDOW_MS, Math.ceil(1.5 * (FIGHT_REPAIRS - 1) * intervalMs));
}

/** What a repair repaired. */
export interface RepairSubject {
  /** Unique per subject: the kind and the device(s), by ifindex (e.g. `gro|12|2@nsid 1|4`). */
  key: string;
  /** In words, for the log and statuses: `our XDP program on eth0`, `GRO on eth0 in netns N, the veth peer of v1`. */
  what: string;
  /** The interfaces whose rules and links the fight touches (may be empty: a datapath problem only). */
  interfaces: readonly string[];
  /** The rules that own the subject (a kernel entry of theirs), DEGRADED while the fight lasts. */
  rules?: readonly string[];
  /** The link directions that own the subject, by ingress name (their devmap entry, flags): warned while it lasts. */
  links?: readonly string[];
  /** What keeps undoing it, when the daemon can know it. */
  by?: string;
}

interface Entry {
  subject: RepairSubject;
  /** Times (monotonic ms) of the counted repairs within the window (while no fight). */
  times: number[];
  /** The pass of the last counted repair. */
  pass: number;
  /** The last counted repair (monotonic ms). */
  last: number;
  /** Its window (ms): {@link FIGHT_WINDOW_MS} or, for a subject looked at less often, {@link fightWindow}. */
  window: number;
  fight?: {
    since: number;
    repairs: number;
    /** Repairs not said yet (since the fight's line or the last summary). */
    unsaid: number;
    saidAt: number;
  };
}

/** One fight as {@link RepairFights.current} gives it. */
export interface Fight {
  subject: RepairSubject;
  /** The status text: what is being repaired, how often, since when, by whom if known. */
  text: string;
}

export class RepairFights {
  private readonly entries = new Map<string, Entry>();
  private pass = 0;
  /** Interfaces whose fight started or ended since {@link takeChanged}. */
  private changed = new Set<string>();
  /** Rules whose fight (as owners of its subject) started or ended since {@link takeChangedRules}. */
  private changedRules = new Set<string>();

  /** Where the fight lines go (the controller's log; set when it starts). */
  log?: Logger;

  constructor(private readonly now: () => number = monotonicMs) {}

  /** A reconciler pass begins: a subject counts at most one repair per pass. */
  beginPass(): void {
    this.pass++;
  }

  /**
   * `subject` was observed wrong and written back. `line` logs the repair's own line: called unless the repair
   * is the one that makes a fight (its warning says it) or is one within a fight (counted, summarised).
   */
  repaired(subject: RepairSubject, line: () => void, windowMs = FIGHT_WINDOW_MS): void {
    const t = this.now();
    let e = this.entries.get(subject.key);
    if (e && e.pass === this.pass) {
      // Already counted in this pass (a second check of the same observation).
      if (!e.fight) line();
      return;
    }
    if (!e) {
      e = { subject, times: [], pass: this.pass, last: t, window: windowMs };
      this.entries.set(subject.key, e);
    }
    if (e.fight && !sameOwners(e.subject, subject)) {
      // Its owners changed during the fight (a rule added or removed): both the old and the new judged again.
      this.touch(e.subject);
      this.touch(subject);
    }
    e.subject = subject;
    e.pass = this.pass;
    e.last = t;
    // (Kept for a fight going on: its status text names the window, and must not change at every repair.)
    if (!e.fight) e.window = Math.max(FIGHT_WINDOW_MS, windowMs);
    if (e.fight) {
      e.fight.repairs++;
      e.fight.unsaid++;
      this.summarise(e, t);
      return;
    }
    e.times = e.times.filter((x) => t - x < e.window);
    e.times.push(t);
    this.log?.debug(
      { subject: subject.what, key: subject.key, within: e.times.length },
      `repair counted: ${subject.what}`,
    );
    if (e.times.length < FIGHT_REPAIRS) {
      line();
      return;
    }
    const span = t - e.times[0];
    e.fight = { since: t, repairs: e.times.length, unsaid: 0, saidAt: t };
    e.times = [];
    this.touch(subject);
    this.log?.warn(
      { subject: subject.what, repairs: e.fight.repairs, withinMs: Math.round(span), by: subject.by ?? 'unknown' },
      `${subject.what}: repaired ${e.fight.repairs} times in ${(span / 1000).toFixed(1)} s: something keeps ` +
        `undoing it (${subject.by ?? 'what, the kernel does not say'}); the daemon repairs it each time it finds ` +
        'it undone (it looks about once a second: undos in between are not seen), and repairs of it are ' +
        `counted, not logged one by one, until ${seconds(e.window)} s pass without one`,
    );
  }

  /**
   * At every reconciler pass: summaries due, and fights whose subject saw no repair for {@link FIGHT_WINDOW_MS}
   * ended (one line each). Forgets subjects quiet for a window.
   */
  tick(): void {
    const t = this.now();
    for (const [key, e] of this.entries) {
      if (!e.fight) {
        if (t - e.last >= e.window) this.entries.delete(key);
        continue;
      }
      if (t - e.last < e.window) {
        this.summarise(e, t);
        continue;
      }
      const f = e.fight;
      this.entries.delete(key);
      this.touch(e.subject);
      this.log?.info(
        { subject: e.subject.what, repairs: f.repairs, unsaid: f.unsaid, lastedMs: Math.round(e.last - f.since) },
        `${e.subject.what}: no repair needed for ${seconds(e.window)} s: the fight is over after ` +
          `${f.repairs} repairs in ${((e.last - f.since) / 1000).toFixed(1)} s` +
          (f.unsaid ? ` (${f.unsaid} since the last line)` : ''),
      );
    }
  }

  private summarise(e: Entry, t: number): void {
    const f = e.fight!;
    if (!f.unsaid || t - f.saidAt < e.window) return;
    this.log?.warn(
      { subject: e.subject.what, repairs: f.unsaid, total: f.repairs },
      `${e.subject.what}: repaired ${f.unsaid} more times in the last ${((t - f.saidAt) / 1000).toFixed(0)} s ` +
        `(${f.repairs} since the fight began; still undone by something else)`,
    );
    f.unsaid = 0;
    f.saidAt = t;
  }

  /** A fight's status text: stable while it lasts (a status that changed at every repair would be a transition each time). */
  private textOf(e: Entry): string {
    return (
      `${e.subject.what} keeps being undone (${e.subject.by ?? 'not by this daemon'}): found undone and ` +
      `repaired ${FIGHT_REPAIRS} times or more within ${seconds(e.window)} s, each repair holding only ` +
      'until the next undo'
    );
  }

  /** The fights going on now, with their status texts. */
  current(): Fight[] {
    const out: Fight[] = [];
    for (const e of this.entries.values()) {
      if (!e.fight) continue;
      out.push({ subject: e.subject, text: this.textOf(e) });
    }
    return out;
  }

  /** Interface -> the fights on it now (their texts, joined), for rule and link statuses. */
  byInterface(): ReadonlyMap<string, string> {
    const m = new Map<string, string>();
    for (const f of this.current()) {
      for (const i of f.subject.interfaces) m.set(i, m.has(i) ? `${m.get(i)}; ${f.text}` : f.text);
    }
    return m;
  }

  /** Rule -> the fights over what it owns now (their texts, joined), for rule statuses. */
  byRule(): ReadonlyMap<string, string> {
    return this.byOwner((s) => s.rules);
  }

  /** Link direction (by ingress name) -> the fights over what it owns now (their texts, joined). */
  byLink(): ReadonlyMap<string, string> {
    return this.byOwner((s) => s.links);
  }

  private byOwner(owners: (s: RepairSubject) => readonly string[] | undefined): ReadonlyMap<string, string> {
    const m = new Map<string, string>();
    for (const e of this.entries.values()) {
      if (!e.fight || !owners(e.subject)?.length) continue;
      const text = this.textOf(e);
      for (const o of owners(e.subject)!) m.set(o, m.has(o) ? `${m.get(o)}; ${text}` : text);
    }
    return m;
  }

  /** Whether `iface` is in a fight now (no text built). */
  fighting(iface: string): boolean {
    for (const e of this.entries.values()) if (e.fight && e.subject.interfaces.includes(iface)) return true;
    return false;
  }

  /** Whether the link direction from `from` owns a subject in a fight now (no text built). */
  linkFighting(from: string): boolean {
    for (const e of this.entries.values()) if (e.fight && e.subject.links?.includes(from)) return true;
    return false;
  }

  /** The interfaces whose fight began or ended since the last call (their rules are judged again). */
  takeChanged(): Set<string> {
    const c = this.changed;
    this.changed = new Set();
    return c;
  }

  /** The rules whose fight (as owners) began or ended since the last call (judged again). */
  takeChangedRules(): Set<string> {
    const c = this.changedRules;
    this.changedRules = new Set();
    return c;
  }

  private touch(s: RepairSubject): void {
    for (const i of s.interfaces) this.changed.add(i);
    for (const r of s.rules ?? []) this.changedRules.add(r);
  }
}

const seconds = (ms: number) => String(Math.round(ms / 1000));

const sameList = (a: readonly string[] | undefined, b: readonly string[] | undefined) =>
  (a?.length ?? 0) === (b?.length ?? 0) && (a ?? []).every((x, i) => x === b![i]);

function sameOwners(a: RepairSubject, b: RepairSubject): boolean {
  return sameList(a.interfaces, b.interfaces) && sameList(a.rules, b.rules) && sameList(a.links, b.links);
}
