/**
 * Fetch step: the facts a change needs from the host, read before planning
 * so that the plan itself does no I/O. Interfaces are resolved once per
 * name (10 000 rules name the same few interfaces 50 000 times); neighbour
 * MACs once per (address, interface), only for backends given without a MAC.
 */
import type { Dataplane, InterfaceInfo, LinkState, PeerMtu, RedirectTarget } from './dataplane.js';
import { PortError } from './errors.js';
import { flat } from './flat.js';
import type { RuleSpec } from './model.js';
import { staticMacKey, type NeighbourFact } from './static-mac.js';

/** What the host told us, by name. A missing entry was not asked for; `undefined` means absent. */
export interface Facts {
  /** Interface name -> its ifindex and MAC, or undefined when it does not exist. */
  interfaces: Map<string, InterfaceInfo | undefined>;
  /** "ip@interface" -> the neighbour table's MAC, or undefined when it has none. */
  neighbours: Map<string, string | undefined>;
  /** Backend egress and ingress interface name -> its state (up, carrier, MTU); absent: not known (egress taken as able). */
  links: Map<string, LinkState | undefined>;
  /**
   * Backend egress name -> whether native redirects into it are delivered
   * (veth peer NAPI, docs/kernel-notes.md, trap 3) and why not. Filled by the
   * reconciler for rules on native-mode ingress; absent: not checked.
   */
  napi: Map<string, RedirectTarget>;
  /**
   * Backend egress name -> its veth peer with its MTU, wherever the peer lives (our namespace, a named or
   * an unnamed one), or why that MTU cannot be read: the kernel drops a frame redirected into a veth that
   * is longer than the peer's MTU allows (veth_xdp_xmit, and is_skb_forwardable in generic mode).
   * Undefined: not a veth.
   */
  peers: Map<string, PeerMtu | undefined>;
  /**
   * Static-MAC backends whose MAC the host contradicts ("ip@iface|mac" -> why; static-mac.ts): the plan
   * keeps them out of the table. The reconciler's (state.macConflicts); empty: none known.
   */
  macConflicts: ReadonlyMap<string, string>;
  /**
   * Backends that close a forwarding loop the host made ("rule|ip@iface" -> why; rule-loops.ts): the plan keeps
   * them out of the table. The reconciler's (state.hostLoops), for its re-applies; absent: none.
   */
  hostLoops?: ReadonlyMap<string, string>;
  /**
   * Backends given without a MAC whose neighbour entry is missing (not failed: Dataplane.neighbourMissing)
   * while the datapath forwards to them: "ip@iface" -> the MAC the datapath holds, kept (and probed) until the
   * entry is resolved again or fails (a start after the entries were flushed, a bounced egress). Absent: none.
   */
  keptMacs?: ReadonlyMap<string, string>;
  /**
   * For a backend given without a MAC whose neighbour entry holds a MAC no station has as its own (broadcast,
   * multicast, zero: plan-rules nonUnicastNeighbour, never written): the MAC that answered an ARP request of
   * ours for its address ("ip@iface" -> MAC; Dataplane.neighbourAnswered), which such an entry is asked by.
   */
  answeredMacs?: Map<string, string>;
  /**
   * Why the neighbour table could not be read for the backends given without a MAC (a reconciler pass's read that
   * failed: EMFILE under an open-files limit, ENOBUFS, ...: fetchRuleFacts `noteUnread`): their entries are absent
   * from `neighbours`, not known; absent: the read succeeded (or none was needed).
   */
  neighbourUnread?: string;
  /** Egresses moved to another network namespace: name -> where (core/moved.ts); absent: none known. */
  movedEgresses?: ReadonlyMap<string, string>;
  /**
   * The whole IPv4 neighbour table ("ip@iface" -> entry, as Dataplane.neighbourTable gives it) from the read
   * that gave `neighbours`, when the caller asked for it (fetchRuleFacts `wholeTable`): the static-MAC
   * judgement of the same pass uses it instead of reading the table again. Absent: not read with them.
   */
  neighbourTable?: ReadonlyMap<string, NeighbourFact>;
}

export const neighbourKey = (ip: string, iface: string) => `${ip}@${iface}`;

/** A backend's keys: its neighbour entry's ("ip@iface") and, given a MAC, its static MAC's ("ip@iface|mac"). */
interface BackendKeys {
  ip: string;
  iface: string;
  mac: string;
  neighbour: string;
  staticMac: string;
}
const backendKeysOf = new WeakMap<object, BackendKeys>();

/**
 * The keys of a backend spec, made once per spec object (a reconciler pass asks for those of every backend
 * of every rule, several times: 40 000 new strings each time with 10 000 rules of 4 backends).
 */
export function backendKeys(b: { ip: string; interface: string; mac: string }): BackendKeys {
  const k = backendKeysOf.get(b);
  if (k && k.ip === b.ip && k.iface === b.interface && k.mac === b.mac) return k;
  const made = {
    ip: b.ip,
    iface: b.interface,
    mac: b.mac,
    neighbour: flat(neighbourKey(b.ip, b.interface)),
    staticMac: b.mac === '' ? '' : flat(staticMacKey(b.ip, b.interface, b.mac)),
  };
  backendKeysOf.set(b, made);
  return made;
}

/** An empty fact set (then filled by the fetch functions). */
export function emptyFacts(): Facts {
  return {
    interfaces: new Map(),
    neighbours: new Map(),
    links: new Map(),
    napi: new Map(),
    peers: new Map(),
    macConflicts: new Map(),
  };
}

/** Resolve each named interface once into `facts`. */
export function fetchInterfaces(dp: Dataplane, names: Iterable<string>, facts: Facts = emptyFacts()): Facts {
  for (const name of names) if (!facts.interfaces.has(name)) facts.interfaces.set(name, dp.lookupInterface(name));
  return facts;
}

/**
 * Interfaces and neighbour MACs the given rule specs name; the neighbour entries of all backends given
 * without MAC in one read of the table (Dataplane.neighbourMacs). An egress that goes away while its neighbour
 * entries are read (the read finds no such interface) is missing in these facts (`interfaces`), not a failed
 * read of all of them. `pace` (a pacer:
 * yields to the event loop once its time budget is spent) is awaited every
 * 16 specs: 10 000 rules are read without holding the event loop. `wholeTable`: when the table is read, keep
 * all of it in `facts.neighbourTable` (a reconciler pass that judges static MACs too: one dump per pass).
 */
/** A MAC whose first octet has the I/G bit set (broadcast, multicast) or the all-zero MAC. */
const nonUnicast = (mac: string) => (parseInt(mac.slice(0, 2), 16) & 1) === 1 || /^(00:){5}00$/.test(mac);

export async function fetchRuleFacts(
  dp: Dataplane,
  specs: readonly RuleSpec[],
  facts = emptyFacts(),
  pace?: () => Promise<void>,
  wholeTable = false,
  noteUnread = false,
): Promise<Facts> {
  let n = 0;
  const wanted = new Map<string, { ip: string; iface: string }>();
  for (const s of specs) {
    if (pace && (++n & 15) === 0) await pace();
    fetchInterfaces(dp, s.ingressInterfaces, facts);
    for (const b of s.backends) if (!facts.interfaces.has(b.interface)) fetchInterfaces(dp, [b.interface], facts);
  }
  for (const s of specs) {
    if (pace && (++n & 15) === 0) await pace();
    // Ingress link states too: their MTU against the backends' (rule-status mtuWarnings).
    if (dp.linkState) for (const i of s.ingressInterfaces) if (!facts.links.has(i)) facts.links.set(i, dp.linkState(i));
    for (const b of s.backends) {
      if (dp.linkState && !facts.links.has(b.interface)) facts.links.set(b.interface, dp.linkState(b.interface));
      // An egress's veth peer, also when the interface is another rule's ingress (its links entry read above).
      if (dp.linkState && !facts.peers.has(b.interface)) facts.peers.set(b.interface, peerMtu(dp, b.interface));
      if (b.mac !== '' || !facts.interfaces.get(b.interface)) continue;
      const key = neighbourKey(b.ip, b.interface);
      if (facts.neighbours.has(key) || wanted.has(key)) continue;
      wanted.set(key, { ip: b.ip, iface: b.interface });
    }
  }
  if (wanted.size === 0) return facts;
  if (dp.neighbourMacs) {
    // One read of the table for all of them (was one `ip` process per backend, every pass).
    let read: Awaited<ReturnType<NonNullable<Dataplane['neighbourMacs']>>>;
    try {
      read = await dp.neighbourMacs([...wanted.values()], wholeTable);
    } catch (e) {
      // A reconciler pass: the table's entries are not known this time (said, not guessed); a change fails with it.
      if (!noteUnread) throw e;
      facts.neighbourUnread = (e as Error).message;
      return facts;
    }
    const { macs, gone, table } = read;
    for (const [key, mac] of macs) {
      facts.neighbours.set(key, mac);
      if (mac && nonUnicast(mac)) {
        const w = wanted.get(key);
        if (!w) continue;
        // Asked by broadcast (whoever has the address answers from its own MAC), named in the status.
        dp.askNeighbour?.(w.ip, w.iface, '');
        const a = dp.neighbourAnswered?.(w.ip, w.iface);
        if (a && !nonUnicast(a)) (facts.answeredMacs ??= new Map()).set(key, a);
      }
    }
    if (table) facts.neighbourTable = table;
    // The egress went away (deleted, renamed) since it was looked up above: missing for this read, as
    // the next lookup finds it. Its backends are "egress missing"; every other object is read on.
    for (const iface of gone) facts.interfaces.set(iface, undefined);
    return facts;
  }
  let n2 = 0;
  for (const [key, { ip, iface }] of wanted) {
    if (pace && (++n2 & 15) === 0) await pace();
    if (!facts.interfaces.get(iface)) continue;
    try {
      facts.neighbours.set(key, await dp.neighbourMac(ip, iface));
    } catch (e) {
      if (!(e instanceof PortError && e.kind === 'not-found')) throw e;
      facts.interfaces.set(iface, undefined); // gone since it was looked up: as above
    }
  }
  return facts;
}

/**
 * The veth peer of `iface` with its MTU wherever it lives, or why that cannot be read (a peer whose MTU is not
 * known is never taken for one that carries full-size frames: FramesFit Unknown); undefined: not a veth.
 */
export function peerMtu(dp: Dataplane, iface: string): PeerMtu | undefined {
  if (dp.vethPeerMtu) return dp.vethPeerMtu(iface);
  const name = dp.vethPeer?.(iface);
  if (name === undefined) return undefined;
  const mtu = dp.linkState?.(name)?.mtu;
  return mtu === undefined ? { unreadable: `the MTU of ${iface}'s veth peer ${name} cannot be read` } : { name, mtu };
}

/**
 * {@link fetchRuleFacts} for every rule of the desired state, from its indices (CoreState): each interface the
 * rules name, each backend egress's veth peer, and the neighbour entries of the rules' backends given without
 * a MAC; the same facts, read in time proportional to the interfaces and those backends, not to the rule count
 * (a reconciler pass reads them at every pass).
 */
export async function fetchAllRuleFacts(
  dp: Dataplane,
  state: {
    ifaceRules: ReadonlyMap<string, unknown>;
    egressBackends: ReadonlyMap<string, number>;
    maclessRules: ReadonlySet<string>;
    rules: ReadonlyMap<string, RuleSpec>;
  },
  facts = emptyFacts(),
  pace?: () => Promise<void>,
  wholeTable = false,
): Promise<Facts> {
  fetchInterfaces(dp, state.ifaceRules.keys(), facts);
  if (dp.linkState) {
    for (const i of state.ifaceRules.keys()) if (!facts.links.has(i)) facts.links.set(i, dp.linkState(i));
    for (const i of state.egressBackends.keys()) if (!facts.peers.has(i)) facts.peers.set(i, peerMtu(dp, i));
  }
  const specs: RuleSpec[] = [];
  for (const name of state.maclessRules) {
    const r = state.rules.get(name);
    if (r) specs.push(r);
  }
  // Interfaces and links are read above: what is left is the neighbour entries of these rules' backends (and,
  // with `wholeTable`, the whole table of that read, as fetchRuleFacts keeps it). A read that fails is noted
  // (Facts.neighbourUnread), not the pass's end: what it would have judged cannot be verified meanwhile.
  return fetchRuleFacts(dp, specs, facts, pace, wholeTable, true);
}
