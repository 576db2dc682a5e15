/**
 * A check the daemon could not make is "cannot be verified", never a negative verdict.
 * Inspecting an egress starts children (`ethtool`, `nsenter`, `ip`) and opens netlink sockets: under a pids
 * limit (spawn EAGAIN), a descriptor limit (EMFILE) or with a child that does not answer (children.ts: killed
 * at its deadline) the inspection fails, and nothing about the egress was learnt. Before, such a failure was
 * the verdict "cannot receive": every backend was taken out of its table (a total outage the daemon made
 * itself), and a start under the limit wrote zeroed backend entries over a forwarding datapath.
 *
 * Now: the last verdict observed on that egress is kept when it was a negative one (its words say it is as
 * last checked); otherwise the egress stays in its tables, `unverified`, its status saying "cannot be
 * verified: cannot check X: <why>", judged by traffic (egress-watch.ts: taken out only when the kernel drops
 * what is redirected to it).
 */
import type { RedirectTarget } from './dataplane.js';

/** The mark of an egress verdict made from a failed check (resync.ts words the log for it). */
export const UNCHECKED_KEY = 'unchecked';

/** Whether `r` is a verdict {@link uncheckedTarget} made (no check was made). */
export function isUnchecked(r: RedirectTarget | undefined): boolean {
  return !!r && r.unverified === true && r.key === UNCHECKED_KEY;
}

/**
 * The verdict for `name` when its check failed with `e`; `last`: the last verdict a check made on it (not one
 * made by this function), if any.
 */
export function uncheckedTarget(name: string, e: unknown, last: RedirectTarget | undefined): RedirectTarget {
  const why = `cannot check ${name}: ${e instanceof Error ? e.message : String(e)}`;
  if (last && !last.ok) {
    return {
      ok: false,
      detail: `${last.detail ?? `${name} cannot take native XDP redirects`} (as last checked; ${why})`,
      ...(last.waitsForPeer ? { waitsForPeer: true } : {}),
    };
  }
  // A peer that cannot be inspected at all (another namespace): its own verdict, judged by traffic, goes on.
  if (last?.unverified) return last;
  return { ok: true, unverified: true, key: UNCHECKED_KEY, detail: why };
}

/**
 * Whether `name` is no device now, asked after its check failed: it went away (deleted, renamed) between the
 * pass's reading of the interfaces and the check (the check's own error is then ENODEV, or whatever the
 * command it ran said of a device it could not find). That is an observation, not a check the daemon could
 * not make: the verdict is "does not exist", as the next pass will find (before, one pass said "could not be
 * checked (… ENODEV)" and the next "does not exist": two transitions for one rename). A lookup that fails
 * itself (not "no such device") tells nothing: false.
 */
function vanished(name: string, lookup: ((name: string) => unknown) | undefined): boolean {
  if (!lookup) return false;
  try {
    return lookup(name) === undefined;
  } catch {
    return false;
  }
}

/**
 * `dp.redirectTarget(name, fix)`, with a failed check made {@link uncheckedTarget} from the last verdict
 * (`verdicts`: name -> the last verdict a check made, kept here). With `lookup` (the reconciler's pass, which
 * treats such an egress as missing as its next pass would): a device gone during the check is `gone`, not ok,
 * "egress X does not exist". Without it (a change's checks: an egress missing at plan time is accepted and
 * waits, so one that vanishes during the check is not refused either) it stays "cannot be verified".
 */
export async function inspectTarget(
  dp: { redirectTarget(name: string, fix: boolean): Promise<RedirectTarget> },
  verdicts: Map<string, RedirectTarget>,
  name: string,
  fix: boolean,
  lookup?: (name: string) => unknown,
): Promise<RedirectTarget> {
  try {
    const r = await dp.redirectTarget(name, fix);
    verdicts.set(name, r);
    return r;
  } catch (e) {
    if (vanished(name, lookup)) {
      return { ok: false, gone: true, detail: `egress ${name} does not exist` };
    }
    return uncheckedTarget(name, e, verdicts.get(name));
  }
}
