/**
 * Ends long-running calls when the daemon shuts down, so that a graceful
 * server shutdown does not wait for streams that never end on their own
 * (health Watch). A call opts in with `context.abortOnTerminate()` (the
 * TerminatorContext of nice-grpc's terminator middleware, which
 * nice-grpc-server-health's Watch already calls); `terminate()` then aborts
 * it and the client gets UNAVAILABLE "xdpctld is shutting down", the status
 * gRPC clients retry on. The npm package of that middleware is not in this
 * project's registry, hence these few lines with the same contract.
 */
import { ServerError, Status, type CallContext, type ServerMiddleware } from 'nice-grpc';

/** What a handler sees: mark the call as one to abort at shutdown. */
export type TerminatorContext = { abortOnTerminate(): void };

export interface Terminator {
  middleware: ServerMiddleware<TerminatorContext>;
  /** Abort every call that asked for it (and any that asks later) with UNAVAILABLE. */
  terminate(): void;
}

export const SHUTTING_DOWN = 'xdpctld is shutting down';

export function createTerminator(): Terminator {
  const calls = new Set<AbortController>();
  let terminated = false;
  const middleware: ServerMiddleware<TerminatorContext> = async function* terminator(call, context: CallContext) {
    const ac = new AbortController();
    const forward = () => ac.abort();
    // A signal aborted before this call got here (a deadline already passed on arrival: services/access.ts)
    // fires no 'abort' event any more: carried at once, or the handler would start a change its caller gave up.
    if (context.signal.aborted) ac.abort();
    else context.signal.addEventListener('abort', forward);
    let optedIn = false;
    const byShutdown = () => optedIn && ac.signal.aborted && !context.signal.aborted;
    try {
      const result = yield* call.next(call.request, {
        ...context,
        signal: ac.signal,
        abortOnTerminate() {
          optedIn = true;
          if (terminated) ac.abort();
          else calls.add(ac);
        },
      });
      if (byShutdown()) throw new ServerError(Status.UNAVAILABLE, SHUTTING_DOWN);
      return result;
    } catch (err) {
      if (byShutdown()) throw new ServerError(Status.UNAVAILABLE, SHUTTING_DOWN);
      throw err;
    } finally {
      calls.delete(ac);
      context.signal.removeEventListener('abort', forward);
    }
  };
  return {
    middleware,
    terminate() {
      terminated = true;
      for (const ac of calls) ac.abort();
      calls.clear();
    },
  };
}
