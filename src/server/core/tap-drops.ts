/**
 * A backend behind a tap device whose reader (the process holding the tap's file descriptor: a VM's qemu, a
 * userspace stack) stops reading: the kernel queues the frames redirected to the tap for that process (up to
 * the tap's tx_queue_len), then drops every further one and counts it in the tap's tx_dropped (tun_net_xmit
 * for a frame that passed the stack, generic XDP; tun_xdp_xmit for a native XDP redirect, where it is also a
 * devmap transmit error). Nothing else changes: the tap stays up with carrier, its backend in its rule's
 * table. So at every reconciler pass the tx_dropped of each tap a rule names as a backend egress is read
 * (Dataplane.tapTxDropped), and while it rose within the last {@link TAP_DROP_WINDOW_MS} the backends behind it
 * say so ("tap T: N frames dropped in the last S s: its reader is not reading"), their rule DEGRADED (a backend
 * whose frames are dropped does not receive them); once it has not risen for that long they are as before.
 * Only what the kernel counted is said: a rise the daemon did not read (the tap re-created: a lower count) is
 * not counted. Pure: no I/O.
 */

/** How long a rise of a tap's tx_dropped is said after it was read (ms). */
export const TAP_DROP_WINDOW_MS = 5000;

/** What the reconciler keeps per tap (state.tapDrops). */
export interface TapDropWatch {
  /** tx_dropped as last read, and when (ms). */
  last: bigint;
  at: number;
  /** Each rise read within the window: the frames, and the interval between the two reads that saw it (ms). */
  rises: { n: bigint; from: number; to: number }[];
}

/** One pass's read of a tap's tx_dropped (`dropped`) at `now`: the watch to keep. */
export function stepTapDrops(prev: TapDropWatch | undefined, dropped: bigint, now: number): TapDropWatch {
  if (!prev) return { last: dropped, at: now, rises: [] };
  const rises = prev.rises.filter((r) => now - r.to < TAP_DROP_WINDOW_MS);
  // A lower count: the device was re-created (its counters start over); nothing observed between the reads.
  if (dropped > prev.last) rises.push({ n: dropped - prev.last, from: prev.at, to: now });
  return { last: dropped, at: now, rises };
}

/**
 * What a tap's watch says at `now` ({@link TAP_DROP_WINDOW_MS}): "tap T: N frames dropped in the last S s
 * (its tx_dropped): its reader is not reading ..."; undefined when its tx_dropped has not risen within it.
 */
export function tapDropText(tap: string, w: TapDropWatch | undefined, now: number): string | undefined {
  const rises = w?.rises.filter((r) => now - r.to < TAP_DROP_WINDOW_MS) ?? [];
  if (!rises.length) return undefined;
  const n = rises.reduce((a, r) => a + r.n, 0n);
  const from = Math.min(...rises.map((r) => r.from));
  const s = Math.max(0.1, Math.round((now - from) / 100) / 10);
  return (
    `tap ${tap}: ${n} frame${n === 1n ? '' : 's'} dropped in the last ${s} s (its tx_dropped counter): its reader ` +
    'is not reading (the queue to the process holding the tap is full, or no process holds it), so frames ' +
    'redirected to it are lost'
  );
}
