/**
 * Rule status: what a rule's status says, derived only from what the plan
 * observed (interfaces, neighbour entries, weights) and what resync sees.
 * Pure functions; no I/O.
 */
import type { BackendStatus, RuleStatus } from './model.js';

/** The status of one planned backend. */
export function backendStatus(b: {
  ip: string;
  interface: string;
  givenMac: string;
  mac: string;
  resolved: boolean;
}): BackendStatus {
  return {
    ip: b.ip,
    interface: b.interface,
    mac: b.mac,
    resolved: b.resolved,
    message: b.resolved
      ? b.givenMac === ''
        ? 'MAC resolved from the neighbour table'
        : ''
      : `no neighbour entry for ${b.ip} on ${b.interface}: backend gets no traffic until its MAC is known`,
  };
}

/** A written rule's status from its backends' statuses and how many can take traffic. */
export function writtenRuleStatus(backends: BackendStatus[], live: number): RuleStatus {
  const unresolved = backends.filter((b) => !b.resolved).length;
  return {
    state: live === 0 ? 'inactive' : unresolved ? 'degraded' : 'active',
    message:
      live === 0
        ? 'no backend can take traffic (all drained or unresolved): matching packets are dropped'
        : unresolved
          ? `${unresolved} backend(s) without a MAC address`
          : `forwarding to ${live} backend(s)`,
    backends,
    warnings: [],
  };
}

/** A stored rule adopted at start, before it is written again. */
export function restoringStatus(): RuleStatus {
  return { state: 'inactive', message: 'restoring', backends: [], warnings: [] };
}

/** A stored rule whose interfaces do not exist (yet). */
export function waitingStatus(): RuleStatus {
  return { state: 'inactive', message: 'waiting for its interfaces to exist', backends: [], warnings: [] };
}

/** The warning a rule carries while interfaces it was written with are gone. */
export function missingInterfacesWarning(gone: readonly string[]): string {
  return `interface(s) ${gone.join(', ')} missing: the rule is written again when they return`;
}
