/**
 * A state store older than the pinned datapath it would be taken over (a previous --state-dir, a restored
 * copy, a rolled-back volume, of the same pin root): the store counts its commits (meta `generation`) and
 * each committed change writes that count into the pins (dataplane/store-generation.ts). A start whose store
 * is behind the pins refuses, naming both generations and what the kernel holds that the store lacks,
 * instead of removing rules it never knew (and reusing their ids). --reset-datapath takes the store as the
 * truth: it then continues above the pins' generation, so that the store they were written from is behind.
 */
import { resolve } from 'node:path';

import { describeMatch } from './core/restore.js';
import type { StateStore, StoredState } from './core/store.js';
import { linkTable } from './dataplane/netdev.js';
import { readPinnedGeneration, readPinnedMatches } from './dataplane/store-generation.js';
import type { Logger } from './log.js';

/** Up to `max` items, then how many more. */
function some(items: string[], max = 8): string {
  return items.length <= max ? items.join('; ') : `${items.slice(0, max).join('; ')}; and ${items.length - max} more`;
}

/**
 * ifindex -> name of the interfaces of this network namespace (one rtnetlink dump; never /sys, which under
 * `nsenter --net` is the namespace of whoever mounted it), for messages.
 */
function ifnamesByIndex(): Map<number, string> {
  const out = new Map<number, string>();
  try {
    for (const r of linkTable()) out.set(r.ifindex, r.ifname);
  } catch {
    /* not readable: messages give ifindexes */
  }
  return out;
}

/**
 * What the pinned rule match entries hold that the stored rules do not, by slot: entries on a slot no stored
 * rule has, entries on a stored rule's slot for another port, and stored rules the datapath does not forward.
 * undefined when the pinned entries cannot be read (another layout).
 */
export function storeVersusPins(
  pinRoot: string,
  stored: StoredState,
): { kernelOnly: string[]; differs: string[]; storeOnly: string[] } | undefined {
  const matches = readPinnedMatches(pinRoot);
  if (!matches) return undefined;
  const ifnames = ifnamesByIndex();
  const bySlot = new Map<number, typeof matches>();
  for (const m of matches) {
    const list = bySlot.get(m[1]);
    if (list) list.push(m);
    else bySlot.set(m[1], [m]);
  }
  const describe = (list: typeof matches) => list.map(([k]) => describeMatch(k, ifnames.get(k.ifindex))).join(', ');
  const storedSlots = new Map<number, StoredState['rules'][number]>();
  for (const r of stored.rules) if (r.kernel) storedSlots.set(r.kernel.slot, r);
  const kernelOnly: string[] = [];
  const differs: string[] = [];
  const storeOnly: string[] = [];
  for (const [slot, list] of [...bySlot].sort((a, b) => a[0] - b[0])) {
    const r = storedSlots.get(slot);
    if (!r) kernelOnly.push(`slot ${slot}: ${describe(list)}`);
    else if (list.some(([k]) => k.dport !== r.port)) {
      differs.push(
        `slot ${slot}: the kernel forwards ${describe(list)}; the store has rule ${r.name} (port ${r.port}) there`,
      );
    }
  }
  for (const r of stored.rules) if (!r.kernel || !bySlot.has(r.kernel.slot)) storeOnly.push(r.name);
  return { kernelOnly, differs, storeOnly };
}

/**
 * Refuse a start whose state store is behind the pinned datapath (throws), unless --reset-datapath: then
 * returns what resetDatapath logs (the daemon then has the store continue above the pins' generation). A store
 * level with or ahead of the pins (ahead: a stop between a commit and its write into the pins), pins that
 * record no generation (a datapath of an earlier xdpctld, or one run with --no-state: logged), or a store and
 * pins that both hold nothing, go on. Checked before the datapath is opened: nothing in the kernel changes.
 */
export function checkStoreBehind(
  opts: { pinRoot: string; resetDatapath?: boolean },
  pinned: { matches: number; links: number },
  store: StateStore,
  stored: StoredState,
  log: Logger,
): { reset: string } | undefined {
  const pinRoot = resolve(opts.pinRoot);
  const pins = readPinnedGeneration(opts.pinRoot);
  if (pins.kind !== 'generation') {
    if ((pinned.matches || pinned.links) && pins.kind === 'unreadable') {
      log.warn(
        { pinRoot },
        `the pinned datapath's store generation cannot be read (${pins.why}): whether the state store ` +
          `${store.path} is older than the datapath cannot be known`,
      );
    }
    return undefined;
  }
  const have = store.generation;
  const pin = pins.generation;
  if (have >= pin) {
    stored.pinsLevel = true;
    if (have > pin) {
      stored.ahead = { store: have, pins: pin };
      log.warn(
        { storeGeneration: have, pinsGeneration: pin },
        `the state store ${store.path} is at generation ${have}, ahead of the pinned datapath under ${pinRoot}, ` +
          `last written from generation ${pin}: ${have - pin} commit(s) the kernel does not reflect, either ` +
          'committed as the daemon stopped before it wrote them into the pins, or a change the daemon undid in ' +
          'the kernel and refused (the client was told it was not applied) whose commit was pending on the disk ' +
          'and completed after the daemon stopped. This start applies what the store holds',
      );
    }
    return undefined;
  }
  const empty = stored.rules.length === 0 && stored.links.length === 0;
  if (empty && pinned.matches === 0 && pinned.links === 0) return undefined; // nothing to lose either way
  const diff = storeVersusPins(opts.pinRoot, stored);
  const parts: string[] = [];
  if (diff) {
    if (diff.kernelOnly.length) {
      parts.push(
        `the kernel holds ${diff.kernelOnly.length} rule(s) the store lacks (${some(diff.kernelOnly)}; the kernel ` +
          'keeps no rule names)',
      );
    }
    if (diff.differs.length) parts.push(`${diff.differs.length} slot(s) hold another rule (${some(diff.differs)})`);
    if (diff.storeOnly.length) {
      parts.push(
        `the store has ${diff.storeOnly.length} rule(s) the datapath does not forward (${some(diff.storeOnly)}): ` +
          'deleted after this store was written, or never written',
      );
    }
  } else {
    parts.push(`the pinned rule entries cannot be read with this xdpctld's layout (${pinned.matches} match entries)`);
  }
  parts.push(
    `the pins hold ${pinned.matches} rule match entr${pinned.matches === 1 ? 'y' : 'ies'} and ${pinned.links} ` +
      `link direction(s); the store ${stored.rules.length} rule(s) and ${stored.links.length} link(s)`,
  );
  const what =
    `the state store ${store.path} is older than the pinned datapath under ${pinRoot}: the store is at generation ` +
    `${have}, the datapath was last written from generation ${pin} (${pin - have} committed change(s) this store ` +
    `does not have: a previous --state-dir, a restored copy or a rolled-back volume); ${parts.join('; ')}`;
  if (!opts.resetDatapath) {
    throw new Error(
      `${what}. Refusing to start: nothing was changed and the datapath keeps forwarding. Start with the ` +
        '--state-dir this datapath was last written from, or start once with --reset-datapath to take this ' +
        "store as the truth (the datapath's rules and links it lacks are removed, the program detached and " +
        'attached again)',
    );
  }
  return { reset: what };
}
