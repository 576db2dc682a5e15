/**
 * The daemon's two clocks. Every age, interval, window, timeout and deadline is measured on the monotonic
 * clock ({@link monotonicMs}): the wall clock steps (an NTP step, `date -s`, a VM resumed), and an age
 * measured on it goes negative or jumps by the step, a window never ends or ends at once. The wall clock
 * (`Date.now()`) is only for the times shown to people and clients: a condition's lastTransitionTime, a
 * rule's createTime, a counter snapshot's time, a log line's time.
 *
 * A monotonic instant is never shown as a time: {@link wallAt} turns one into the wall time it was (now,
 * minus its age), for a log line or message that says when.
 */

/**
 * Monotonic milliseconds (CLOCK_MONOTONIC, as `performance.now()`), counted from the wall time of the
 * process's start, so that 0 and -Infinity stay "long ago" for the windows that start from them. Only
 * differences between two values mean anything.
 */
export function monotonicMs(): number {
  // Whole ms, as Date.now(): durations built from it are said and passed on as integers (a fraction in "took
  // nothing for 1014.0083 ms", or in AbortSignal.timeout, which refuses one).
  return Math.floor(performance.timeOrigin + performance.now());
}

/** A clock: ms, by the monotonic clock in the daemon; a test gives its own. */
export type Clock = () => number;

/**
 * The wall time (ms since the epoch) at the monotonic instant `mono` of `clock`: now by the wall clock,
 * minus how long ago it was. For saying when something observed on the monotonic clock happened.
 */
export function wallAt(mono: number, clock: Clock = monotonicMs, wallNow = Date.now()): number {
  return wallNow - (clock() - mono);
}

/** The longest delay a Node timer takes (2^31-1 ms, ~24.8 days): past it, setTimeout fires after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Run `fn` once, `ms` from now by the monotonic clock, for any `ms` (a deadline of 30 days included): a timer
 * past {@link MAX_TIMER_MS} would fire at once, so the wait is made of timers of at most that length, each
 * re-armed for what is left. Unref'd (a pending deadline keeps no process alive). Returns the cancel.
 */
export function setLongTimeout(fn: () => void, ms: number): () => void {
  const at = monotonicMs() + ms;
  let timer: NodeJS.Timeout | undefined;
  const arm = () => {
    const left = at - monotonicMs();
    if (left <= 0) {
      timer = undefined;
      fn();
      return;
    }
    timer = setTimeout(arm, Math.min(Math.ceil(left), MAX_TIMER_MS));
    timer.unref();
  };
  arm();
  return () => {
    if (timer) clearTimeout(timer);
    timer = undefined;
  };
}
