/**
 * The client's deadlines: nice-grpc-client-middleware-deadline's contract ({ deadline: Date | ms from now },
 * DEADLINE_EXCEEDED when it passes), for any length. That middleware (2.0.20, the newest) arms one
 * `setTimeout` for the whole wait, and Node fires a timer past 2^31-1 ms (~24.8 days) after 1 ms: a call with
 * a 30-day deadline was cancelled at once and reported DEADLINE_EXCEEDED while the daemon, which had its
 * request, applied the change. Here the wait is made of timers of at most that length.
 *
 * A deadline that is no time (an Invalid Date, NaN) is refused before anything is sent. A deadline that has
 * passed sends nothing and ends in DEADLINE_EXCEEDED.
 */
import { ClientError, Status, type ClientMiddleware } from 'nice-grpc';

/** The longest delay a Node timer takes (2^31-1 ms): a longer one fires after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export type DeadlineOptions = {
  /** Deadline of the call: a `Date`, or milliseconds from now. None by default. */
  deadline?: Date | number;
};

/** Client middleware: cancel the call at its deadline and throw a ClientError DEADLINE_EXCEEDED. */
export const deadlineMiddleware: ClientMiddleware<DeadlineOptions> = async function* deadlineMiddleware(call, options) {
  if (options.deadline == null || options.signal?.aborted) return yield* call.next(call.request, options);
  const { deadline, signal: callerSignal, ...rest } = options;
  const at = deadline instanceof Date ? deadline.getTime() : Date.now() + deadline;
  if (!Number.isFinite(at)) {
    throw new RangeError(`${call.method.path}: the deadline (${String(deadline)}) is not a time; nothing was sent`);
  }
  const ac = new AbortController();
  const forward = () => ac.abort();
  callerSignal?.addEventListener('abort', forward);
  let timedOut = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const arm = () => {
    const left = at - Date.now();
    if (left <= 0) {
      timedOut = true;
      ac.abort();
      return;
    }
    timer = setTimeout(arm, Math.min(left, MAX_TIMER_MS));
  };
  arm();
  try {
    const result = yield* call.next(call.request, { ...rest, signal: ac.signal });
    if (!timedOut) return result;
  } catch (err) {
    if (!timedOut) throw err;
  } finally {
    callerSignal?.removeEventListener('abort', forward);
    clearTimeout(timer);
  }
  throw new ClientError(call.method.path, Status.DEADLINE_EXCEEDED, 'Deadline exceeded');
};
