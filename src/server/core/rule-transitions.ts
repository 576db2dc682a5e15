/**
 * The log lines of rules' state transitions, said together for one reconciler pass (or one client's write): each
 * rule's transition is said once (CoreState.logged), a few in their own line each as before ("rule web is DEGRADED:
 * why"), but one host event seen by many rules (the carrier of the peer of an egress 3000 rules share) in one line
 * per state naming how many rules and the first few ("500 rules are INACTIVE: a, b, c, d, e and 495 more (e.g. a:
 * why)"): 3000 rules and 5 carrier flaps made 6006 lines, since the per-rule damper (log-damper.ts) bounds what one
 * rule says, not one event across rules. Each rule's own detail stays in its status (GetRule, ListRules).
 * Owns only what is logged; never the statuses.
 */
import type { Logger } from '../log.js';

import type { LogDamper } from './log-damper.js';
import type { RuleState, RuleStatus } from './model.js';

/** Rules of one state in one batch said each in its own line up to this many; more are said in one line. */
export const RULE_LINES = 5;
/** Rules a line about many of them names. */
export const NAMED_RULES = 5;

/** Rule transitions of one pass or write, logged at {@link flush}. */
export class RuleTransitions {
  private readonly pending: { name: string; s: RuleStatus }[] = [];

  constructor(
    private readonly o: {
      logged: Map<string, string>;
      damper: LogDamper;
      log: Pick<Logger, 'info' | 'warn'>;
      now: () => number;
    },
  ) {}

  /**
   * A rule's status as a read serves it: kept when it differs from what was last said of the rule (a first
   * ACTIVE says nothing: the usual start).
   */
  add(name: string, s: RuleStatus): void {
    const key = `rule/${name}`;
    const line = `${s.state}|${s.message}`;
    const before = this.o.logged.get(key);
    if (before === line) return;
    this.o.logged.set(key, line);
    if (s.state === 'active' && before === undefined) return;
    this.pending.push({ name, s });
  }

  /** Log what was added since the last flush: per rule for a few, per state for many. */
  flush(): void {
    if (!this.pending.length) return;
    const byState = new Map<RuleState, { name: string; s: RuleStatus }[]>();
    for (const t of this.pending) {
      const group = byState.get(t.s.state);
      if (group) group.push(t);
      else byState.set(t.s.state, [t]);
    }
    this.pending.length = 0;
    for (const [state, group] of byState) {
      if (group.length <= RULE_LINES) for (const t of group) this.one(t.name, t.s);
      else this.many(state, group);
    }
  }

  /** One rule's line; a rule that flaps (its egress renamed back and forth) is summarised (log-damper.ts). */
  private one(name: string, s: RuleStatus): void {
    const text = `rule ${name} is ${s.state.toUpperCase()}: ${s.message}`;
    this.say(
      `rule/${name}`,
      s.state,
      { rule: name, state: s.state.toUpperCase(), reason: s.message },
      text,
      (n, ms) =>
        `rule ${name}: ${n} more state changes in ${ms} s not logged one by one (flapping); the last of them: ${text}`,
    );
  }

  /** Many rules that went to one state at once: one line, damped as one subject while it flaps. */
  private many(state: RuleState, group: { name: string; s: RuleStatus }[]): void {
    const names = group.slice(0, NAMED_RULES).map((t) => t.name);
    const notListed = group.length - names.length;
    const reasons = new Set(group.map((t) => t.s.message)).size;
    const first = group[0];
    const fields = {
      state: state.toUpperCase(),
      rules: group.length,
      names,
      notListed,
      reason: first.s.message,
      reasons,
    };
    const text =
      `${group.length} rules are ${state.toUpperCase()}: ${names.join(', ')}${notListed ? ` and ${notListed} more` : ''} ` +
      `(${reasons === 1 ? 'each' : `e.g. ${first.name}`}: ${first.s.message})` +
      `${reasons === 1 ? '' : `; ${reasons} different reasons`}; each rule's status says its own (xdpctl rules list)`;
    this.say(
      `rules/${state}`,
      state,
      fields,
      text,
      (n, ms) =>
        `rules: ${n} more changes of many rules at once to ${state.toUpperCase()} in ${ms} s not logged one by ` +
        `one (flapping); the last of them: ${text}`,
    );
  }

  /**
   * A line about `subject` (info for ACTIVE, else a warning), damped while it flaps (log-damper.ts): `summary`
   * gives the line that says how many were not logged in how many seconds.
   */
  private say(
    subject: string,
    state: RuleState,
    fields: Record<string, unknown>,
    text: string,
    summary: (notLogged: number, seconds: number) => string,
  ): void {
    const log = state === 'active' ? this.o.log.info : this.o.log.warn;
    this.o.damper.line(
      subject,
      this.o.now(),
      () => log.call(this.o.log, fields, text),
      (n, ms) => log.call(this.o.log, { ...fields, notLogged: n, ms }, summary(n, Math.round(ms / 1000))),
    );
  }
}
