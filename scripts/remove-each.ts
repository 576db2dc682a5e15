/**
 * Remove each of a list of things (the demo's namespaces and veths), trying each a few times: under load
 * `ip netns del` can fail for a moment (a process in the namespace still exiting). Says what was removed and
 * what was left with the last error, so that a clean-up never reports more than it did.
 */
export interface RemoveResult {
  removed: string[];
  /** What still exists after the tries, with the last error. */
  left: { name: string; error: string }[];
}

export async function removeEach(
  names: string[],
  remove: (name: string) => void,
  exists: (name: string) => boolean,
  o: { tries?: number; delayMs?: number } = {},
): Promise<RemoveResult> {
  const tries = o.tries ?? 10;
  const out: RemoveResult = { removed: [], left: [] };
  for (const name of names) {
    if (!exists(name)) continue; // never made (an interruption right after it was recorded), or gone with another
    let error = '';
    for (let i = 0; i < tries && exists(name); i++) {
      if (i) await new Promise((r) => setTimeout(r, o.delayMs ?? 200));
      try {
        remove(name);
      } catch (e) {
        const stderr = (e as { stderr?: Buffer | string }).stderr;
        error = (stderr ? String(stderr) : (e as Error).message).trim();
      }
    }
    if (exists(name)) out.left.push({ name, error: error || 'still there' });
    else out.removed.push(name);
  }
  return out;
}
