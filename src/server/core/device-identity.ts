/**
 * What the daemon keeps about an interface it names was observed on a DEVICE, not on a name. Rules and links
 * name interfaces, and a name can move to another device under a running daemon: two egresses renamed the
 * other's way (`ip link set A name T; ip link set B name A; ip link set T name B`), or a device deleted and
 * another made with its name. Each fact kept per name must then be forgotten, never inherited by the device the
 * name names now (a review found a backend's MAC "kept from the datapath" on the other device, and the MAC that
 * answered on the old device kept "as answered before" while frames to it were dropped by the new one's host):
 *  - per backend given without a MAC ("ip@iface"): the MAC it last received traffic with, the entry's MAC that
 *    answered a probe of ours, a MAC held over a changed entry (core/neighbour-hold.ts), the "kept" log;
 *  - per static-MAC backend: its verdict (confirmed or contradicted; static-mac.ts) and what it was judged from
 *    (the egress's veth peer, its neighbour entries): judged afresh on the new device in the same pass;
 *  - per interface: its own MAC as last read (a change of it rewrites the source MAC of the entries behind it,
 *    and says "X has a new MAC", which another device's MAC is not).
 * An ingress's own facts (the device settings check and what it could not put back, the generic mode a start
 * kept there) are forgotten where its attachment is found on another device (resync.ts).
 * The device's identity is its ifindex in the daemon's network namespace (the only namespace rules and links
 * name interfaces in; the kernel numbers a namespace's devices cyclically, so a new device does not take a
 * recent one's number, and a device moved out and back in keeps its own). The answers read off the wire are
 * kept by ifindex already (dataplane/adapter.ts), the veth peer checks carry it in their identity key
 * (dataplane/adapter.ts redirectTarget, core/egress-watch.ts), and attachments and the datapath's entries
 * compare it (resync.ts). A name that is missing for a while keeps its device: it is compared when it is back.
 */
import type { ExecContext } from './execute.js';
import type { Facts } from './facts.js';

/** A name's device changed since its facts were kept: what was forgotten, for the log. */
export interface DeviceChange {
  name: string;
  was: number;
  now: number;
  forgot: string[];
  /** The same ifindex, another device: what showed it ({@link remadeDevices}). */
  remade?: string;
}

/**
 * The interfaces `names` whose device was deleted and made again with the same name AND ifindex since the last
 * pass (`ip link add X index N ...`): nothing keyed by name or ifindex tells them apart. Observed: the kernel
 * reported that ifindex deleted (RTM_DELLINK: Dataplane.linkDeletions, read in order with each device read, so
 * a report is known to come before or after a read) after the last pass read the name on it, and a device has it
 * again now; that holds when the name was missing at a pass in between. Inferred, only where reports were lost
 * since that read (an overflowing queue, no socket for them): what only grows over a device's life (its packets
 * received and sent, its carrier changes: Dataplane.deviceCounters) is lower than that read. Name -> the
 * evidence, for the log; in `unknown`, those that cannot be told (reports lost, no count went back), why. Each
 * name's read is recorded for the next pass (kept while it is missing or not readable: never a verdict from a
 * failed read). Empty without Dataplane.deviceCounters.
 */
export function remadeDevices(
  ctx: ExecContext,
  names: Iterable<string>,
  facts?: Facts,
  unknown?: Map<string, string>,
): Map<string, string> {
  const { dp, state } = ctx;
  const out = new Map<string, string>();
  if (!dp.deviceCounters) return out;
  const seen = new Set<string>();
  for (const name of names) {
    if (seen.has(name)) continue;
    seen.add(name);
    const c = dp.deviceCounters(name);
    noteLinkDeletions(ctx);
    const was = state.deviceCounters.get(name);
    if (!c) continue;
    // The pass's facts were read before (a device made again in between: missing there, or the old one): judged
    // at the next pass, whose facts will agree (its verdict would have nothing to act on in this one).
    if (facts?.interfaces.has(name) && facts.interfaces.get(name)?.ifindex !== c.ifindex) continue;
    state.deviceCounters.set(name, { ...c, deletions: state.deletions });
    if (!was || was.ifindex !== c.ifindex) continue;
    const v = sinceRead(ctx, was, c);
    if (v?.remade) out.set(name, v.remade);
    else if (v?.unknown) unknown?.set(name, v.unknown);
  }
  for (const name of state.deviceCounters.keys()) if (!seen.has(name)) state.deviceCounters.delete(name);
  return out;
}

/** The deletions the kernel reported up to the last device read, taken into the state (numbered in order). */
function noteLinkDeletions(ctx: ExecContext): void {
  const r = ctx.dp.linkDeletions?.();
  if (!r) return;
  const t = ctx.mono();
  for (const d of r.deleted) ctx.state.linkDeleted(d.ifindex, d.name, t);
  if (r.lost) ctx.state.linkReportsLost();
}

/**
 * Whether the device read as `c` is another than the one read as `was` (the same ifindex): `remade` with the
 * evidence (a deletion of that ifindex reported after that read; or, with reports lost since, a count that went
 * back), `unknown` with why it cannot be told (reports lost and no count went back), undefined when every report
 * since was received and none deleted it (the same device).
 */
function sinceRead(
  ctx: ExecContext,
  was: { ifindex: number; packets: bigint; carrierChanges: number; deletions: number },
  c: { ifindex: number; packets: bigint; carrierChanges: number } | undefined,
): { remade?: string; unknown?: string } | undefined {
  const { state } = ctx;
  const del = state.linkDeletions.get(was.ifindex);
  if (del && del.seq > was.deletions) {
    return {
      remade:
        `observed: the kernel reported the device on ifindex ${was.ifindex} (${del.name}) deleted after the ` +
        'last read of it, and a device has that ifindex again',
    };
  }
  if (state.linkReportsLostAt <= was.deletions) return undefined;
  const lost = 'reports of deleted devices were lost meanwhile';
  if (c && c.packets < was.packets) {
    return {
      remade: `inferred (${lost}): its packet count went from ${was.packets} to ${c.packets}, and a device's own only grows`,
    };
  }
  if (c && c.carrierChanges < was.carrierChanges) {
    return {
      remade:
        `inferred (${lost}): its carrier change count went from ${was.carrierChanges} to ${c.carrierChanges}, and ` +
        "a device's own only grows",
    };
  }
  return { unknown: `${lost}, and its counts did not go back: which of the two cannot be told` };
}

/**
 * For a device on `ifindex` found without our program where this daemon last saw it attached: whether it was
 * deleted and made again in place after the last read of `name` (`remade`, with the evidence), or cannot be told
 * (`unknown`, why), or neither (undefined: the same device, so detached by another tool). Reads the device again
 * first: every deletion reported before that read (so before the read that found no program) is known then, with
 * no wait. Records that read, so that the next pass does not say it again.
 */
export function remadeSinceRead(
  ctx: ExecContext,
  name: string,
  ifindex: number,
): { remade?: string; unknown?: string } | undefined {
  const { dp, state } = ctx;
  const read = state.deviceCounters.get(name);
  if (!read || read.ifindex !== ifindex || !dp.deviceCounters) return undefined;
  const c = dp.deviceCounters(name);
  noteLinkDeletions(ctx);
  const v = sinceRead(ctx, read, c && c.ifindex === ifindex ? c : undefined);
  if (c) state.deviceCounters.set(name, { ...c, deletions: state.deletions });
  return v;
}

/**
 * Whether the kernel reported `name`'s device (on `ifindex`) deleted after the last pass read it, up to now (the
 * device read again first, so after any read of the caller's before this call), or reports were lost since, so
 * that this cannot be told: what the kernel removed with that device (its devmap entries) was not undone by
 * another tool. Records nothing: the pass after says what it is ({@link remadeDevices}).
 */
export function deletedSinceRead(ctx: ExecContext, name: string, ifindex: number): boolean {
  const { dp, state } = ctx;
  const read = state.deviceCounters.get(name);
  if (!read || read.ifindex !== ifindex || !dp.deviceCounters) return false;
  dp.deviceCounters(name);
  noteLinkDeletions(ctx);
  const del = state.linkDeletions.get(ifindex);
  return (del !== undefined && del.seq > read.deletions) || state.linkReportsLostAt > read.deletions;
}

/** How a device made again in place is said, with what showed it ({@link remadeDevices}). */
export function remadeText(name: string, ifindex: number, why: string): string {
  return `${name} is another device with the same name and ifindex ${ifindex} (${why})`;
}

/** The interface of a key "ip@iface" or "ip@iface|mac". */
function ifaceOf(key: string): string {
  const at = key.indexOf('@');
  const bar = key.indexOf('|', at + 1);
  return bar < 0 ? key.slice(at + 1) : key.slice(at + 1, bar);
}

/**
 * Compare each interface in `facts` with the device its kept facts were observed on (`state.devices`), forget
 * those of every name that names another device now (logged once per change), and record the devices. Call it
 * before anything decides on those facts (a pass's holds, a plan's kept MACs).
 */
export function forgetReplacedDevices(
  ctx: ExecContext,
  facts: Facts,
  prune = false,
  remade: ReadonlyMap<string, string> = new Map(),
): DeviceChange[] {
  const { state } = ctx;
  const changed = new Map<string, DeviceChange>();
  for (const [name, info] of facts.interfaces) {
    if (!info) continue;
    const was = state.devices.get(name);
    if (was === info.ifindex && remade.has(name)) {
      changed.set(name, { name, was, now: was, forgot: [], remade: remade.get(name) });
      ctx.dp.forgetDevice?.(name);
      continue;
    }
    if (was === info.ifindex) continue;
    state.devices.set(name, info.ifindex);
    if (was !== undefined) changed.set(name, { name, was, now: info.ifindex, forgot: [] });
  }
  if (prune) forgetUnnamed(ctx, facts);
  if (changed.size === 0) return [];
  const note = (key: string, what: string) => changed.get(ifaceOf(key))?.forgot.push(what);
  for (const m of [state.neighbourMacs, state.neighbourConfirmed, state.neighbourHolds] as Map<string, unknown>[]) {
    for (const key of m.keys()) {
      if (!changed.has(ifaceOf(key))) continue;
      m.delete(key);
      state.logged.delete(`neigh-kept/${key}`);
      if (m === state.neighbourHolds) note(key, `the MAC held for ${key.slice(0, key.indexOf('@'))}`);
      else if (m === state.neighbourConfirmed) note(key, `the MAC that answered for ${key.slice(0, key.indexOf('@'))}`);
    }
  }
  for (const [name, c] of changed) {
    // Static MACs: their verdicts judged afresh (this pass: dirty), from the new device's peer and entries.
    for (const key of state.staticMacsByEgress.get(name) ?? []) {
      if (state.staticMacs.has(key)) c.forgot.push(`the verdict on static MAC ${key.slice(key.indexOf('|') + 1)}`);
      state.forgetStaticMacVerdict(key);
      state.staticMacDirty.add(key);
    }
    state.staticMacEgresses.delete(name);
    if (state.egressMacs.delete(name)) c.forgot.push('its own MAC');
  }
  for (const key of state.staticMacEntries.keys()) if (changed.has(ifaceOf(key))) state.staticMacEntries.delete(key);
  const t = ctx.mono();
  const ingresses = state.interfaceUsersView();
  for (const c of changed.values()) {
    // One made again in place that runs our program, or is to (it was missing at a pass in between): said where
    // it is attached again (resync.ts), once.
    if (c.remade && (state.attached.has(c.name) || ingresses.has(c.name))) continue;
    const forgot = [...new Set(c.forgot)];
    state.logDamper.line(
      `device/${c.name}`,
      t,
      () =>
        ctx.log.info(
          { interface: c.name, from: c.was, to: c.now, forgot, ...(c.remade ? { remade: c.remade } : {}) },
          c.remade
            ? `${remadeText(c.name, c.now, c.remade)}: what was observed on the old device is not carried ` +
                `over${forgot.length ? ` (${forgot.join('; ')})` : ''}: judged afresh on this one`
            : `${c.name} names another device now (ifindex ${c.was} -> ${c.now}): what was observed on ifindex ` +
                `${c.was} is not carried over${forgot.length ? ` (${forgot.join('; ')})` : ''}: judged afresh on ` +
                'this one',
        ),
      (n, ms) =>
        ctx.log.info(
          { interface: c.name, from: c.was, to: c.now, notLogged: n, ms },
          `${c.name} named another device ${n} more times in ${Math.round(ms / 1000)} s, not logged one by one; ` +
            `the last: ifindex ${c.was} -> ${c.now}, nothing observed on the old one carried over`,
        ),
    );
  }
  return [...changed.values()];
}

/**
 * With `facts` naming every interface the rules name (a pass's): the names none names any more (rules deleted
 * or changed) lose their device and the backend facts kept under them (what a later rule naming them again,
 * perhaps on another device, would otherwise inherit); nothing else of theirs is touched.
 */
function forgetUnnamed(ctx: ExecContext, facts: Facts): void {
  const { state } = ctx;
  let gone: Set<string> | undefined;
  for (const name of state.devices.keys()) if (!facts.interfaces.has(name)) (gone ??= new Set()).add(name);
  if (!gone) return;
  for (const name of gone) {
    state.devices.delete(name);
    state.egressMacs.delete(name);
  }
  for (const m of [state.neighbourMacs, state.neighbourConfirmed] as Map<string, unknown>[])
    for (const key of m.keys()) if (gone.has(ifaceOf(key))) m.delete(key);
}
