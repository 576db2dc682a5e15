/**
 * Interfaces moved to another network namespace under the running daemon (`ip link set dev X netns
 * OTHER`): the device keeps the XDP program it ran, out of sight of this namespace (ListInterfaces would
 * say it does not exist, and --cleanup-on-exit would not find it). Each reconciler pass that has reason to
 * (a managed interface missing or gone since the last pass, a move already known, and every
 * STRAY_SCAN_EVERY passes as a safety net) looks for our program on the devices of other namespaces
 * (Dataplane.strayAttachments: rtnetlink, IFLA_TARGET_NETNSID), removes it and puts back the settings we
 * changed there (Dataplane.removeStray), or says exactly where it was left and the command that removes
 * it. The interface is reported (its condition, the rules and links that use it) as moved until its name
 * is in this namespace again; then it is managed as any other.
 */
import type { ExecContext } from './execute.js';
import type { CoreState } from './state.js';

/** A look in other namespaces at least every this many passes, whatever else happened. */
export const STRAY_SCAN_EVERY = 10;
/** A removal that failed is retried after this long (ms): it spawns a process in the other namespace. */
const RETRY_MS = 10_000;

/** Why an interface the desired state names is not in this namespace, as status, conditions and logs say it. */
export function missingText(state: CoreState, name: string): string {
  return (
    state.moved.get(name)?.text ??
    (state.egressMoved.get(name)?.text || state.altnames.get(name) || `interface ${name} does not exist`)
  );
}

/** The egresses known to be in another namespace: name -> where ({@link followMovedEgresses}). */
export function movedEgresses(state: CoreState): Map<string, string> {
  const out = new Map<string, string>();
  for (const [name, m] of state.egressMoved) if (m.where) out.set(name, m.where);
  return out;
}

/**
 * Egresses (backends' interfaces, the far end of a one-way link) that left this namespace: they carry no
 * program of ours, so they are found by what a move keeps, a device of the same name and MAC in another
 * namespace (Dataplane.movedTo), looked for when one goes missing and every {@link STRAY_SCAN_EVERY} passes
 * while it stays so. Kept in state.egressMoved ("interface X was moved to network namespace N (ifindex I
 * there)"), which {@link missingText} and the backends' status say instead of "does not exist"; each move
 * logged once; forgotten when the name is back or no longer named.
 */
export function followMovedEgresses(
  ctx: ExecContext,
  names: ReadonlySet<string>,
  present: (name: string) => boolean,
): void {
  const { dp, state } = ctx;
  for (const [name, m] of state.egressMoved) {
    if (!names.has(name) || present(name)) {
      state.egressMoved.delete(name);
      if (present(name) && m.text) ctx.log.info({ ifname: name }, `${name} is in this network namespace again`);
    }
  }
  if (!dp.movedTo) return;
  for (const name of names) {
    if (state.moved.has(name) || present(name)) continue;
    const mac = state.egressMacs.get(name);
    if (!mac) continue; // never seen here: nothing to look for
    const known = state.egressMoved.get(name);
    if (known && ++known.age < STRAY_SCAN_EVERY) continue;
    const where = dp.movedTo(name, mac);
    const text = where ? `interface ${name} was moved to ${where}` : '';
    if (text && text !== known?.text) ctx.log.warn({ ifname: name, where }, text);
    state.egressMoved.set(name, { text, where, age: 0 });
  }
}

/**
 * One pass's look at interfaces moved away. `present` tells whether a name is in this namespace now;
 * `vanished` are the devices we had attached that left it since the last pass (name and ifindex).
 */
export async function followMovedInterfaces(
  ctx: ExecContext,
  users: ReadonlyMap<string, unknown>,
  vanished: { name: string; ifindex: number }[],
  present: (name: string) => boolean,
): Promise<void> {
  const { dp, state } = ctx;
  for (const [name] of state.moved) {
    if (present(name)) {
      state.moved.delete(name);
      state.logged.delete(`moved/${name}`);
      ctx.log.info({ ifname: name }, `${name} is in this network namespace again: managed again`);
    }
  }
  if (!dp.strayAttachments || !dp.removeStray) return;
  const absent = [...users.keys()].some((n) => !present(n));
  if (!absent && !vanished.length && !state.moved.size && ++state.strayScanAge < STRAY_SCAN_EVERY) return;
  state.strayScanAge = 0;
  const strays = dp.strayAttachments();
  const seen = new Set<string>();
  const t = ctx.mono();
  for (const s of strays) {
    // A device of this namespace seen through an id it has for itself is not elsewhere (netns.ts peerNsids
    // leaves that id out; this is the check of last resort).
    if (dp.lookupInterface(s.ifname)?.ifindex === s.ifindex) continue;
    const key = `${s.nsid}/${s.ifindex}/${s.progId}`;
    seen.add(key);
    // Which of our interfaces it was: the same name (a move keeps it unless told otherwise), or the
    // ifindex of a device we had attached that left this pass (the kernel keeps it unless it is taken there).
    const name =
      (users.has(s.ifname) && !present(s.ifname) ? s.ifname : undefined) ??
      vanished.find((v) => v.ifindex === s.ifindex)?.name ??
      [...state.moved].find(([, m]) => m.key === key)?.[0] ??
      s.ifname;
    if (t - (state.strayTried.get(key) ?? 0) < RETRY_MS) continue;
    state.strayTried.set(key, t);
    const r = await dp.removeStray(s);
    const as = s.ifname !== name ? ` as ${s.ifname}` : '';
    const text = r.detached
      ? `interface ${name} was moved to ${r.where}${as} (ifindex ${s.ifindex} there): our XDP program is detached ` +
        `from it${r.restored.length ? ` (${r.restored.join('; ')})` : ''}${r.error ? `; not put back: ${r.error}` : ''}`
      : `interface ${name} was moved to ${r.where}${as} (ifindex ${s.ifindex} there) and our XDP program ` +
        `(id ${s.progId}, ${s.mode} mode) is still attached there: ${r.error}. Detach it with: ${r.command}`;
    if (r.detached) state.strayTried.delete(key);
    state.moved.set(name, { text, left: !r.detached, key });
    if (state.logged.get(`moved/${name}`) !== text) {
      state.logged.set(`moved/${name}`, text);
      const fields = { ifname: name, nsid: s.nsid, ifindex: s.ifindex, progId: s.progId, where: r.where };
      if (r.detached && !r.error) ctx.log.warn(fields, text);
      else ctx.log.error(fields, text);
    }
  }
  for (const [name, m] of state.moved) {
    if (m.left && !seen.has(m.key)) {
      // Detached there by someone else, or the device is gone: nothing of ours is left on it.
      m.left = false;
      m.text = m.text.replace(/ and our XDP program .*$/, ': our XDP program is no longer attached there');
      state.logged.set(`moved/${name}`, m.text);
      ctx.log.info({ ifname: name }, m.text);
    }
    if (!m.left && !users.has(name)) {
      state.moved.delete(name);
      state.logged.delete(`moved/${name}`);
    }
  }
  for (const key of state.strayTried.keys()) if (!seen.has(key)) state.strayTried.delete(key);
}
