/**
 * What a change did, for its audit record (services/access.ts): a handler reports a change that changed nothing
 * (`unchanged`: an UpdateRule with the rule's own specification, an ApplyRules or ApplyLinks whose every item
 * was unchanged) or that only rewrote kernel entries another tool had changed (`repaired`). The access
 * middleware puts a box on the call's context; a handler run without it (a unit test) reports to nothing.
 * Before, every change that returned OK was audited `"applied":true`, a no-op alike (a review's finding).
 * ApplyRules and ApplyLinks also report what they changed ({@link reportChanges}): the record's `resources`.
 */
export const AUDIT_OUTCOME = Symbol('xdpctl.auditOutcome');

/** `unchanged`: nothing was written; `repaired`: the specification was unchanged, kernel entries were rewritten. */
export type AuditOutcome = 'unchanged' | 'repaired';

/** What an ApplyRules or ApplyLinks changed (or, under validate_only, would change), by action: names per group. */
export type AuditChanges = Partial<Record<'create' | 'update' | 'delete' | 'repaired', string[]>>;

export interface OutcomeBox {
  value?: AuditOutcome;
  /** The rules or links the change created, updated, deleted or repaired (its record's `resources`). */
  changed?: { kind: 'rules' | 'links'; changes: AuditChanges };
}

/** Report what this call's change did (see {@link AUDIT_OUTCOME}). */
export function reportOutcome(context: object, outcome: AuditOutcome): void {
  const box = (context as { [AUDIT_OUTCOME]?: OutcomeBox })[AUDIT_OUTCOME];
  if (box) box.value = outcome;
}

/**
 * Report what an ApplyRules or ApplyLinks changed, from its executed plan: the audit record names those resources,
 * not what the request listed (an item left out of the request is deleted; a listed one may be unchanged).
 */
export function reportChanges(
  context: object,
  kind: 'rules' | 'links',
  items: readonly { name: string; action: string; repaired?: boolean }[],
): void {
  const box = (context as { [AUDIT_OUTCOME]?: OutcomeBox })[AUDIT_OUTCOME];
  if (!box) return;
  const changes: AuditChanges = {};
  for (const { name, action, repaired } of items) {
    const group = action === 'unchanged' ? (repaired ? 'repaired' : undefined) : (action as keyof AuditChanges);
    if (group) (changes[group] ??= []).push(name);
  }
  box.changed = { kind, changes };
}
