/**
 * What a change did, for its audit record (services/access.ts): a handler reports a change that changed nothing
 * (`unchanged`: an UpdateRule with the rule's own specification, an ApplyRules or ApplyLinks whose every item
 * was unchanged) or that only rewrote kernel entries another tool had changed (`repaired`). The access
 * middleware puts a box on the call's context; a handler run without it (a unit test) reports to nothing.
 * Before, every change that returned OK was audited `"applied":true`, a no-op alike (a review's finding).
 */
export const AUDIT_OUTCOME = Symbol('xdpctl.auditOutcome');

/** `unchanged`: nothing was written; `repaired`: the specification was unchanged, kernel entries were rewritten. */
export type AuditOutcome = 'unchanged' | 'repaired';

export interface OutcomeBox {
  value?: AuditOutcome;
}

/** Report what this call's change did (see {@link AUDIT_OUTCOME}). */
export function reportOutcome(context: object, outcome: AuditOutcome): void {
  const box = (context as { [AUDIT_OUTCOME]?: OutcomeBox })[AUDIT_OUTCOME];
  if (box) box.value = outcome;
}
