/**
 * Backend egresses whose ability to take native XDP redirects xdpctld cannot
 * inspect, judged by what the datapath observes instead. The case: a veth
 * whose peer is in a namespace the daemon cannot enter (unnamed, or no
 * CAP_SYS_ADMIN) while the kernel announces ndo-xmit for it. The kernel keeps
 * announcing it when the peer's GRO was switched off while the peer was down
 * (measured on 6.18: every frame redirected into the veth is then dropped,
 * veth_xdp_xmit finds no NAPI), so the flag alone proves nothing. What the
 * datapath does see is each backend's counters: a frame the kernel drops
 * after the redirect is moved from `packets` into `redirect_errors` by the
 * tracepoint programs (bpf/xdpctl-trace.bpf.c, xdp_devmap_xmit and
 * xdp_redirect_err). So, per egress, from the counters of the backends
 * behind it, read on each reconciler pass:
 *  - `unknown`: nothing observed yet (a new egress, a peer that went down and
 *    up, a backend put back on trial). Its backends stay in their tables (the
 *    kernel's flag says they may receive) and their status says it cannot be
 *    verified (the rule is DEGRADED, not ACTIVE);
 *  - `verified`: the kernel took frames redirected to it (`packets` rose):
 *    a veth takes a frame only into a peer's ring that has NAPI;
 *  - `failing`: at least {@link FAIL_MIN_ERRORS} redirect errors and no frame
 *    taken since the last one taken. Its backends leave their tables (their
 *    flows move to the others), the reason names the observation, and they
 *    are put back on trial (`unknown`) after a back-off of
 *    {@link RETRY_BASE_MS} doubling per failed trial up to {@link RETRY_MAX_MS}
 *    (the ejection of an outlier, as Envoy's outlier detection does), or at
 *    once when what the kernel reports about the egress changes (its ifindex,
 *    features, peer, or the peer going down and up). A trial costs the flows
 *    hashed to those backends until the next pass sees the errors again
 *    (about a second): nothing short of traffic can show the peer works.
 * Frames of both kinds in one window (some taken, some dropped: frames larger
 * than the peer's MTU) count as taken: the peer has NAPI. When the peer's MTU
 * is known to be below what the ingress accepts, a window of drops alone may
 * be those frames: the `failing` reason names both causes, never only NAPI.
 * Pure: no I/O.
 */

/** Redirect errors, with no frame taken, that make an egress `failing`. */
export const FAIL_MIN_ERRORS = 4n;
/** First back-off before a failing egress's backends are tried again (ms); doubles per failed trial. */
export const RETRY_BASE_MS = 10_000;
/** Longest back-off (ms). */
export const RETRY_MAX_MS = 300_000;

export type EgressVerdict = 'unknown' | 'verified' | 'failing';

/** What the reconciler keeps per watched egress (state.egressWatch). */
export interface EgressWatch {
  /** What the kernel reported about the egress when the verdict was made (the adapter's identity key). */
  key: string;
  verdict: EgressVerdict;
  /** Counters last read per backend stats id. */
  base: Map<number, { packets: bigint; errors: bigint }>;
  /** Frames taken and redirect errors since the window opened (the last frame taken, or the verdict). */
  taken: bigint;
  errors: bigint;
  /** When the verdict was made (ms, monotonic: core/clock.ts). */
  since: number;
  /** Failed trials in a row (the back-off's exponent). */
  ejections: number;
  /** `failing`: when its backends are tried again. */
  retryAt?: number;
  /** `failing`: the observation, for the status and the log. */
  why?: string;
}

/** A backend's counters as read this pass, by stats id. */
export type BackendCounters = ReadonlyMap<number, { packets: bigint; redirectErrors: bigint }>;

/**
 * One pass for one egress: the counters of the backends behind it now
 * (`ids`: their stats ids; those out of the table count nothing), the
 * adapter's identity key, the time. Returns the watch to keep (a new object
 * when the verdict changed, else `w` updated in place).
 */
export function stepEgress(
  w: EgressWatch | undefined,
  key: string,
  ids: readonly number[],
  counters: BackendCounters,
  now: number,
  iface: string,
  retry = true,
  source = 'redirect errors',
  peerMtu = '',
): EgressWatch {
  const fresh = (ejections: number): EgressWatch => {
    const base = new Map<number, { packets: bigint; errors: bigint }>();
    for (const id of ids) {
      const c = counters.get(id);
      if (c) base.set(id, { packets: c.packets, errors: c.redirectErrors });
    }
    return { key, verdict: 'unknown', base, taken: 0n, errors: 0n, since: now, ejections };
  };
  // The egress changed under us: what was observed says nothing about it now.
  if (!w || w.key !== key) return fresh(0);
  // Backends out of their tables get no traffic: only a trial can show anything. Without `retry` (a link
  // direction: its frames keep coming whatever is reported), a frame taken shows it again.
  if (w.verdict === 'failing' && retry) {
    return w.retryAt !== undefined && now >= w.retryAt ? fresh(w.ejections) : w;
  }
  for (const id of ids) {
    const c = counters.get(id);
    if (!c) continue;
    const b = w.base.get(id);
    if (b) {
      // A counter reset in between (a backend re-created): count from the new value.
      if (c.packets > b.packets) w.taken += c.packets - b.packets;
      if (c.redirectErrors > b.errors) w.errors += c.redirectErrors - b.errors;
    }
    w.base.set(id, { packets: c.packets, errors: c.redirectErrors });
  }
  if (w.taken > 0n) {
    const verdict: EgressVerdict = 'verified';
    const next = w.verdict === verdict ? w : { ...w, verdict, since: now, ejections: 0 };
    next.taken = 0n;
    next.errors = 0n;
    return next;
  }
  if (w.errors >= FAIL_MIN_ERRORS && w.verdict !== 'failing') {
    const wait = Math.min(RETRY_BASE_MS * 2 ** w.ejections, RETRY_MAX_MS);
    return {
      ...w,
      verdict: 'failing',
      since: now,
      ejections: w.ejections + 1,
      retryAt: retry ? now + wait : undefined,
      why:
        `the kernel dropped all of the last ${w.errors} frames redirected to ${iface} (${source}) and took ` +
        `none: ${
          peerMtu
            ? `either it cannot receive native XDP redirects (a veth whose peer has no NAPI) or the frames ` +
              `were larger than ${peerMtu} lets through`
            : 'it cannot receive native XDP redirects (a veth whose peer has no NAPI)'
        }` +
        (retry ? `; tried again ${wait / 1000} s later` : ''),
      taken: 0n,
      errors: 0n,
    };
  }
  return w;
}

/**
 * The egress check as the plan and the status use it, from the adapter's
 * result and the verdict: failing is not ok (its backends leave their tables);
 * unknown is ok and `unverified` (the status says it cannot be verified);
 * verified is ok.
 */
export function judgedEgress(
  inspected: { ok: boolean; detail?: string; unverified?: boolean; key?: string },
  w: EgressWatch | undefined,
): { ok: boolean; detail?: string; unverified?: boolean; key?: string } {
  if (!inspected.unverified || !w || w.key !== inspected.key) return inspected;
  if (w.verdict === 'failing') return { ok: false, detail: w.why, key: inspected.key };
  if (w.verdict === 'verified') {
    return {
      ok: true,
      key: inspected.key,
      detail: `${inspected.detail}; frames redirected to it were taken by the kernel: verified by traffic`,
    };
  }
  return inspected;
}
