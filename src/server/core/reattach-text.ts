/**
 * What the log says when our program, attached to `name` in mode `was` (as this daemon attached it or last saw
 * it), is found gone (no XDP program; this daemon did not detach it: its own detaches forget the attachment
 * first) and is attached again, in mode `now` (the reconciler's pass, resync.ts, or a client's change,
 * execute.ts).
 */
export function reattachedText(name: string, was: string | undefined, now: string): string {
  return (
    `${name}: found no XDP program where ours ran${was ? ` in ${was} mode` : ''} (detached, not by this daemon): ` +
    `ours re-attached in ${now} mode`
  );
}
