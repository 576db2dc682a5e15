/**
 * What the log says when our program, attached to `name` in mode `was` (as this daemon attached it or last saw
 * it), is found gone (no XDP program; this daemon did not detach it: its own detaches forget the attachment
 * first) and is attached again, in mode `now` (the reconciler's pass, resync.ts, or a client's change,
 * execute.ts). `unknown`: why a device made again in its place cannot be told from a detach
 * (core/device-identity.ts remadeSinceRead).
 */
export function reattachedText(name: string, was: string | undefined, now: string, unknown?: string): string {
  const how = unknown
    ? `detached by another tool, or the device deleted and made again with its name and ifindex: ${unknown}`
    : 'detached, not by this daemon';
  return `${name}: found no XDP program where ours ran${was ? ` in ${was} mode` : ''} (${how}): ours re-attached in ${now} mode`;
}
