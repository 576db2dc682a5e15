/**
 * An undo log: each step of a transaction that changed something pushes how
 * to take it back; on failure the steps run newest first, and one failing
 * undo step does not stop the others (it is logged).
 */
import type { Logger } from '../log.js';

export class UndoLog {
  private readonly steps: (() => void)[] = [];

  push(step: () => void): void {
    this.steps.push(step);
  }

  get length(): number {
    return this.steps.length;
  }

  /** Run every step, newest first; keep going past failures. */
  rollback(log: Logger): void {
    for (let i = this.steps.length - 1; i >= 0; i--) {
      try {
        this.steps[i]();
      } catch (u) {
        log.error({ err: u }, 'undo step failed');
      }
    }
    this.steps.length = 0;
  }
}
