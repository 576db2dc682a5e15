/**
 * Transition logs damped while one subject flaps (a rule's state, the datapath's problems, the reconciler's
 * re-applies): an egress renamed back and forth every 0.15 s flipped three rules 27 and 26 times each in
 * 14 s, every flip a log line (a review found it). Each transition is still said once, but not one line each
 * while they come faster than anyone reads them:
 *  - the first {@link DAMP_BURST} lines of a subject within {@link DAMP_WINDOW_MS} are logged as they come
 *    (a subject that was quiet is never damped: its first line always shows);
 *  - further lines in that window are counted, not logged; when the window ends (checked at every
 *    reconciler pass, {@link LogDamper.flush}), one summary line says how many there were and gives the last
 *    one (what was observed last);
 *  - a window that needed a summary is followed by one where every line goes into the summary (a subject
 *    that keeps flapping gets one line per window), until a window passes without any.
 */

/**
 * Lines of one subject logged as they come within one window: one a second on average, more than a rule
 * changed by hand or by a host event goes through (a few transitions), fewer than a flapping one (2 a second).
 */
export const DAMP_BURST = 10;
/** The window (ms). */
export const DAMP_WINDOW_MS = 10_000;

/** One summary: how many lines were not logged in the window that ended (and how long it was, ms); says the last one. */
export type DampSummary = (suppressed: number, windowMs: number) => void;

interface Subject {
  /** When its window started (the caller's clock, ms). */
  start: number;
  /** Lines in this window so far. */
  lines: number;
  /** Of those, not logged. */
  suppressed: number;
  /** The previous window needed a summary: this one logs none one by one. */
  damped: boolean;
  /** The summary of the last line not logged. */
  summary?: DampSummary;
}

export class LogDamper {
  private readonly subjects = new Map<string, Subject>();

  constructor(
    private readonly burst = DAMP_BURST,
    private readonly windowMs = DAMP_WINDOW_MS,
  ) {}

  /**
   * A transition line of `subject` at `now`: `log` is called when it is to be logged now; otherwise it is
   * counted and `summary` (the line as the summary will give it) kept as the last one.
   */
  line(subject: string, now: number, log: () => void, summary: DampSummary): void {
    let s = this.subjects.get(subject);
    if (s && (now - s.start >= this.windowMs || now < s.start)) {
      this.end(s, now);
      if (!s.damped) s = undefined;
    }
    if (!s) {
      s = { start: now, lines: 0, suppressed: 0, damped: false };
      this.subjects.set(subject, s);
    } else if (s.lines === 0) s.start = now;
    s.lines++;
    if (!s.damped && s.lines <= this.burst) {
      log();
      return;
    }
    s.suppressed++;
    s.summary = summary;
  }

  /** Every window that ended by `now`: its summary, if it had lines not logged; quiet subjects forgotten. */
  flush(now: number): void {
    for (const [subject, s] of this.subjects) {
      if (now - s.start < this.windowMs && now >= s.start) continue;
      this.end(s, now);
      if (!s.damped) this.subjects.delete(subject);
      else s.start = now;
    }
  }

  /** End a subject's window: its summary said; the next one damped if this one needed a summary. */
  private end(s: Subject, now: number): void {
    const needed = s.suppressed > 0;
    if (needed) s.summary?.(s.suppressed, Math.max(0, now - s.start));
    s.damped = needed;
    s.lines = 0;
    s.suppressed = 0;
    s.summary = undefined;
  }
}
