/**
 * Forwarding loops of rules: a rule's backend whose redirected datagrams come back to the rule. Its egress is a
 * veth whose peer (in this namespace), directly or through links, is an ingress where the rewritten datagram
 * (destination the backend's address, source, protocol and port unchanged) is matched again, by the same rule
 * or by another rule whose backend leads on the same way, and so on around a cycle of any length (rule a ->
 * rule b -> rule a). Each such datagram would be redirected around the cycle again and again until its TTL ran
 * out: 63 redirects and 63 "matched" for one datagram, at 63 times the CPU.
 *
 * The one implementation of that check, used twice: a change that would make such a cycle is refused
 * (execute.ts backendsLoopingBack), and the reconciler finds the cycles the host makes after the rules were
 * accepted (a veth renamed, made again or moved: resync.ts judgeHostLoops), whose backends it keeps out of
 * their tables until the host changes back. The match is the datapath's (xdpctl.bpf.c find_rule): at an
 * ingress the rule with the datagram's destination wins, for the sources it allows, and the one with no
 * destination takes the others; sources are followed as prefixes, so two rules whose source prefixes share no
 * address make no cycle. A link direction runs before rules on its ingress. The frame's destination MAC is not
 * judged (a backend's MAC is usually the peer's own, or resolved from it).
 *
 * A peer that is a port of a bridge, a bond or a team (its IFLA_MASTER, of kind bridge/bond/team) hands what its
 * own XDP program passes to that master, where the master's XDP program runs on it again (__netif_receive_skb_core
 * runs generic XDP on the skb's device: br_pass_frame_up gives the bridge a new receive for a frame to its own
 * MAC, bond/team rx handlers make the master the skb's device for another round): so the datagrams that no rule
 * on the peer takes arrive on the master too, then on the master's master, and are matched there. A bridge takes
 * only frames to its own MAC up; a backend's MAC resolved by ARP on the bridge is that, and at change time it is
 * not known yet, so the bridge is followed whatever the MAC. What a bridge forwards out of its other ports is a
 * transmit there, and a transmit on a port that is a veth is a receive on its peer (veth_xmit), where a program of
 * ours may run: so every other port of a bridge the peer (or a device above it) is a port of is followed to its
 * veth peer, whatever the MAC (the bridge forwards by its FDB: a frame to an ingress's MAC reaches the port that
 * leads to it, and one it has not learnt is flooded), and on from there the same way, through link directions too
 * ({@link receiveTree}: a reachability over the layer-2 graph). A port that is no veth sends off the host.
 *
 * Masters are one kind of upper device: a macvlan, macvtap, ipvlan, ipvtap or vlan is stacked on its lower (its
 * IFLA_LINK names it) and gets what the lower receives by its own rules ({@link upperReceives}: a macvlan in every
 * mode, an ipvlan in l2/l3, a vlan only a frame with its tag, which a rule's redirect never adds). Every upper is
 * followed the same way, recursively (a macvlan on a bridge whose port is the peer), and one of a kind this module
 * does not know is said as "cannot be told" ({@link RuleLoops.cannotTell}), never taken as no loop.
 *
 * Every transmit the walk meets (a backend's egress, a link's egress, a bridge's forward out of a port) is judged by
 * the kind of the device sent out of, as its driver does it ({@link receiveTree}: a veth's peer, here or read in its
 * namespace; a bridge's, bond's or team's ports; a macvlan's bridge-mode neighbours and its lower; an ipvlan's
 * neighbours and its lower; a vlan's lower, tagged); what the walk cannot follow (a kind it does not know, a
 * peer's namespace that cannot be read or leads on there) is said as "cannot be told" too. Pure: the veth
 * peers, upper devices, a bridge's ports, how a device transmits and a peer elsewhere come from the caller
 * (Dataplane.vethPeer, upperLinks, bridgePorts, txLink, vethPeerAway: rtnetlink). Link sets are walked the same way
 * (plan-links.ts forwardingLoop).
 */
import { formatPrefix, parsePrefix, prefixCovers, type Prefix } from '../net/addr.js';
import { visible } from '../../shared/visible.js';
import type { Dataplane, PeerAway, TxLink, UpperLink } from './dataplane.js';
import type { BackendSpec, RuleSpec } from './model.js';

/** A set of source addresses: prefixes (none: no address), or null for every address. */
export type Sources = readonly Prefix[] | null;

/** A rule as the loop check follows it. */
export interface LoopRule {
  name: string;
  spec: RuleSpec;
  sources: Sources;
}

/** {@link LoopRule} of a rule's name and spec. */
export const loopRule = (name: string, spec: RuleSpec): LoopRule => ({
  name,
  spec,
  sources: spec.sourcePrefixes.length ? spec.sourcePrefixes.map(parsePrefix) : null,
});

/** What the check reads of the host and the rules. */
export interface LoopGraph {
  /** The veth peer of an interface when it is in this namespace; undefined otherwise (or not a veth). */
  peerOf(name: string): string | undefined;
  /** The device `name` is a port of and its kind (netlink IFLA_MASTER), in this namespace; undefined: none. */
  masterOf?(name: string): { name: string; kind?: string } | undefined;
  /**
   * The devices directly above `name` in this namespace (its master, the devices stacked on it: Dataplane.upperLinks);
   * when given, `masterOf` is not asked.
   */
  uppersOf?(name: string): readonly UpperLink[];
  /**
   * The ports of the bridge `name` in this namespace (devices whose IFLA_MASTER it is: Dataplane.bridgePorts); when
   * given, what a bridge forwards out of its ports is followed (a port that is a veth: a receive on its peer).
   */
  portsOf?(name: string): readonly string[];
  /**
   * How `name` transmits: its kind, mode and lower device (Dataplane.txLink); when given, what is sent out of a
   * device that is no veth with a peer here is followed ({@link receiveTree}'s transmit); absent (a fake): only
   * veth peers are.
   */
  deviceOf?(name: string): TxLink | undefined;
  /** A veth whose peer is in another namespace: where, and what takes its frames there (Dataplane.vethPeerAway). */
  peerAway?(name: string): PeerAway | undefined;
  /** Link directions (ingress -> egress) as they are after the change (the reconciler: in force). */
  linkTo: ReadonlyMap<string, string>;
  /** Link directions in force now: one in `linkTo` that differs is a direction the change makes. */
  inForce: ReadonlyMap<string, string>;
  /** The rule that claims (ingress, port, destination) — state.ts claimKey `${ingress}|${port}|${destination}`. */
  ruleAt(key: string): LoopRule | undefined;
}

/** One step of a cycle: a rule's backend and the interfaces its datagrams cross, the last the ingress they reach. */
export interface LoopStep {
  rule: string;
  backend: string;
  iface: string;
  path: string[];
  /** The devices after the veth peer (and links) the datagram reached, each in words ({@link UpNode}). */
  masters?: string[];
  /** How many of `path` lead to the veth peer (and through links from it): the rest are what `masters` says. */
  base?: number;
  /** Whether a bridge forwarded it or a link sent it on after the peer (not only up to devices above it). */
  reached?: boolean;
  /** The last of the first `base` of `path` is sent out of (an egress that is no veth with a peer here), not received. */
  sent?: boolean;
}

/** The kinds of master a port's received frames go up to, where XDP runs on them again. */
export const RECEIVING_MASTERS: ReadonlySet<string> = new Set(['bridge', 'bond', 'team']);

/** Kinds that send through the device their IFLA_LINK names and receive only packets encapsulated for them. */
const TUNNEL_KINDS: ReadonlySet<string> = new Set([
  'ipip',
  'ip6tnl',
  'sit',
  'gre',
  'gretap',
  'ip6gre',
  'ip6gretap',
  'erspan',
  'ip6erspan',
  'vti',
  'vti6',
]);

/** An upper device a datagram received on the veth peer goes up to: its name, its lower, and how it is above it. */
export interface UpNode {
  name: string;
  /** Index in the list of its lower (-1: the veth peer). */
  parent: number;
  /** How it is above its lower, in words: "a port of bridge br0", "the lower device of macvlan mv0 (mode bridge)". */
  words: string;
  /** Whether the datagram may carry a VLAN tag on arrival here (a vlan-filtering bridge passed it up). */
  tagged: boolean;
  /**
   * The devices crossed from its lower to here, itself last ([name] when absent: an upper): a bridge's forward
   * [bridge, port, the port's veth peer], a link direction [its egress, the egress's veth peer].
   */
  hops?: string[];
  /**
   * How it was reached: up from its lower (absent), forwarded by a bridge out of a port, by a link direction, or
   * sent out of a device (a macvlan, ipvlan, vlan, bond...) by what it does with what it transmits.
   */
  via?: 'forward' | 'link' | 'send';
  /**
   * The datagram carries a VLAN tag here for sure (sent out of a vlan device): no rule matches it (the datapath
   * passes tagged frames to the stack: xdpctl.bpf.c), a link forwards it, a vlan above takes it untagged.
   */
  tagOnly?: boolean;
  /** A link direction (its ingress) on the way here that the change makes. */
  newLink?: string;
}

/**
 * Whether an upper device receives what its lower receives, again through __netif_receive_skb_core (where a
 * generic XDP program runs on it): yes (with whether the datagram may carry a VLAN tag there), no, or "cannot
 * tell" with why. The datagrams a rule redirects are the ones it matched untagged in the frame (tagged ones go to
 * the stack: xdpctl.bpf.c), and neither a redirect nor a veth adds a tag.
 */
export function upperReceives(
  u: UpperLink,
  tagged: boolean,
): { receives: true; tagged: boolean } | { receives: false } | { unknown: string } {
  const kind = u.kind ?? '';
  if (u.via === 'master') {
    // A bridge takes up frames to its own MAC (br_pass_frame_up: a new receive on the bridge); a bond's or a
    // team's rx handler makes the master the skb's device for another round. A vlan-filtering bridge may tag
    // what it passes up with the port's PVID (when the bridge's own entry for it is not untagged).
    if (kind === 'bridge') return { receives: true, tagged: tagged || u.vlanFiltering !== false };
    if (kind === 'bond' || kind === 'team') return { receives: true, tagged };
    // An L3 master: the IP layer hands it the packet (l3mdev), no receive round and no XDP program on it.
    if (kind === 'vrf') return { receives: false };
    return { unknown: `a kind of master whose receive path xdpctld does not follow` };
  }
  switch (kind) {
    case 'macvlan':
    case 'macvtap':
      // Every mode: a unicast frame to its MAC goes up to it (macvlan_handle_frame: skb->dev = it, another round);
      // source mode also takes copies of frames from its allowed sources (netif_rx).
      return { receives: true, tagged };
    case 'ipvlan':
    case 'ipvtap':
      // l2 and l3: a frame to one of its addresses goes up to it (ipvlan_rcv_frame); l3s: the IP layer's l3mdev
      // hook moves the packet to it (ipvlan_l3_rcv), no receive round, no XDP on it.
      if (u.mode === 'l2' || u.mode === 'l3') return { receives: true, tagged };
      if (u.mode === 'l3s') return { receives: false };
      return { unknown: `its mode (${u.mode ?? 'not read'}) is not one xdpctld knows` };
    case 'vlan':
      // Only a frame tagged with its VID (and protocol) goes up to it (vlan_do_receive), the tag taken off.
      return tagged ? { receives: true, tagged: false } : { receives: false };
    case 'macsec':
      return { unknown: 'whether it takes frames MACsec did not protect (its validation mode) is not read' };
    default:
      if (TUNNEL_KINDS.has(kind)) return { receives: false }; // only packets encapsulated for it, by the IP layer
      return { unknown: 'a kind of device whose receive path xdpctld does not follow' };
  }
}

/** A master (Dataplane.masterLink) as an upper device. */
const masterAsUpper = (m: { name: string; kind?: string }): UpperLink => ({
  name: m.name,
  via: 'master',
  ...(m.kind !== undefined ? { kind: m.kind } : {}),
});

/**
 * The devices directly above a device as `dp` reads them (Dataplane.upperLinks; a fake with only masterLink: its
 * master), each device read once for the life of the returned function (one change, one pass).
 */
export function upperReader(dp: Pick<Dataplane, 'upperLinks' | 'masterLink'>): (name: string) => readonly UpperLink[] {
  const read = new Map<string, readonly UpperLink[]>();
  return (name) => {
    let u = read.get(name);
    if (!u) {
      if (dp.upperLinks) u = dp.upperLinks(name);
      else {
        const m = dp.masterLink?.(name);
        u = m ? [masterAsUpper(m)] : [];
      }
      read.set(name, u);
    }
    return u;
  };
}

/**
 * How devices transmit and where veth peers elsewhere lead, as `dp` reads them (Dataplane.txLink, vethPeerAway),
 * each device read once for the life of the returned functions (one change, one pass); {} for a fake without them.
 */
export function txReaders(dp: Pick<Dataplane, 'txLink' | 'vethPeerAway'>): Pick<LoopGraph, 'deviceOf' | 'peerAway'> {
  const out: Pick<LoopGraph, 'deviceOf' | 'peerAway'> = {};
  if (dp.txLink) {
    const read = new Map<string, TxLink | undefined>();
    out.deviceOf = (name) => {
      if (!read.has(name)) read.set(name, dp.txLink!(name));
      return read.get(name);
    };
  }
  if (dp.vethPeerAway) {
    const read = new Map<string, PeerAway | undefined>();
    out.peerAway = (name) => {
      if (!read.has(name)) read.set(name, dp.vethPeerAway!(name));
      return read.get(name);
    };
  }
  return out;
}

/** An upper device in words, as its lower sees it: "a port of bridge br0", "the lower device of vlan v (802.1Q 10)". */
function upperWords(u: UpperLink): string {
  const what = `${u.kind ?? 'device'} ${u.name}`;
  if (u.via === 'master') return `a port of ${what}`;
  const detail = u.vlan ?? (u.mode ? `mode ${u.mode}` : '');
  return `the lower device of ${what}${detail ? ` (${detail})` : ''}`;
}

/**
 * The upper devices a datagram received on `name` goes up to (its master, the devices stacked on it that
 * receive what it receives: {@link upperReceives}), recursively, each once, in the order found (a device before
 * its uppers); and the uppers met whose receive path cannot be told, in words. A device in another namespace is
 * not in this namespace's dump: not here (no program of this daemon's runs there).
 */
export function receivingUppers(
  name: string,
  uppersOf: (name: string) => readonly UpperLink[],
): { nodes: UpNode[]; unknown: string[] } {
  const none = new Map<string, string>();
  return receiveTree(name, { peerOf: () => undefined, uppersOf, linkTo: none, inForce: none });
}

/** What {@link receiveTree} reads of the host ({@link LoopGraph}'s, with the uppers given). */
export type ReceiveGraph = Pick<LoopGraph, 'peerOf' | 'portsOf' | 'linkTo' | 'inForce' | 'deviceOf' | 'peerAway'> & {
  uppersOf(name: string): readonly UpperLink[];
};

/** Kinds whose transmit leaves the host or the kernel's forwarding (a NIC has no kind; a tap: its reader; dummy drops). */
const SENDS_OFF: ReadonlySet<string> = new Set(['', 'tun', 'dummy']);
/** Masters whose transmit goes out of their ports: a bridge by its FDB or flooded, a bond or team out of one slave. */
const SENDING_MASTERS: ReadonlySet<string> = new Set(['bridge', 'bond', 'team']);
/** macvlan modes whose transmit goes out of the lower device only (macvlan_queue_xmit: no local delivery). */
const MACVLAN_OUT_ONLY: ReadonlySet<string> = new Set(['private', 'vepa', 'passthru', 'source']);

/** A frame on its way, as the walk carries it. */
interface Frame {
  /** It may carry a VLAN tag. */
  tagged: boolean;
  /** It carries one for sure ({@link UpNode.tagOnly}). */
  tagOnly: boolean;
  /** A link direction the change makes on the way ({@link UpNode.newLink}). */
  newLink?: string;
}

/**
 * The devices of this namespace a frame received on `root` (and passed by every program on the way) reaches where
 * a receive runs again (and with it a generic XDP program), as a tree: each node's `parent` is its index (-1: the
 * root), each device once, in the order found (a device before what it leads to). `send`: the frame is sent out of
 * `root` instead (an egress that is no veth with a peer here), and the tree is what that transmit reaches. A walk of
 * the layer-2 graph:
 * - up: the devices above a device that receive what it receives ({@link upperReceives});
 * - forward: a port of a bridge is forwarded out of every other port of that bridge (by its FDB, or flooded: the
 *   frame's MAC is not judged, since a frame to an ingress's MAC reaches the port that leads to it): a transmit there;
 * - link: a device (not the root) that is a link direction's ingress sends every frame out of the direction's
 *   egress (a transmit); nothing of it goes up or is forwarded (`stopAtLinks`: not followed on);
 * - transmit, by the kind of the device sent out of (drivers/net, as read for Linux 6.x):
 *   - veth: a receive on its peer (veth_xmit). A peer in another namespace: not followed; when something there
 *     takes its frames on at layer 2 (a master, a device stacked on it) or that namespace cannot be read, that is
 *     said as "cannot be told" (`unknown`); a peer there with neither ends it (that namespace's stack);
 *   - bridge, bond, team: out of each of its ports (br_dev_xmit's FDB or flood; a bond's or team's slave);
 *   - macvlan, macvtap (macvlan_queue_xmit): in bridge mode, a frame to a bridge-mode macvlan on the same lower is
 *     handed to the lower as a receive (dev_forward_skb), whose rx handler gives it to that macvlan; every mode
 *     sends the rest out of the lower device (a transmit there). In vepa mode the frame goes out of the lower, and an
 *     external switch in hairpin mode may send it back: off the host, not seen; a bridge of this host sends nothing
 *     back out of the port it came in by (its port's hairpin flag is not read: taken as off, the default);
 *   - ipvlan, ipvtap (ipvlan_queue_xmit): a frame to an address of another ipvlan on the same lower is a receive on
 *     it (ipvlan_rcv_frame), whatever the mode (its private and vepa flags are not read: taken as not set); in l2
 *     mode a frame to the lower's MAC that no ipvlan takes is a receive on the lower; the rest is sent out of the
 *     lower (in l3 and l3s routed there by the IP layer);
 *   - vlan: out of its lower device, tagged (vlan_dev_hard_start_xmit): no rule matches it there (tagged frames are
 *     the stack's), a vlan above the receiver takes it untagged;
 *   - a device with no kind (a NIC), a tun/tap, a dummy: off the host, to a reader, dropped: not followed;
 *   - any other kind (a tunnel, vxlan, vrf, macsec...): "cannot be told", said in `unknown`.
 * `unknown`: what the walk met and cannot follow, in words.
 */
export function receiveTree(
  root: string,
  g: ReceiveGraph,
  stopAtLinks = false,
  send = false,
): { nodes: UpNode[]; unknown: string[] } {
  const nodes: UpNode[] = [];
  const unknown: string[] = [];
  const seen = new Set<string>(send ? [] : [root]);
  const sent = new Set<string>();
  const add = (n: UpNode) => {
    seen.add(n.name);
    nodes.push(n);
    return nodes.length - 1;
  };
  const node = (name: string, parent: number, words: string, f: Frame, hops?: string[], via?: UpNode['via']) =>
    add({
      name,
      parent,
      words,
      tagged: f.tagged,
      ...(hops ? { hops } : {}),
      ...(via ? { via } : {}),
      ...(f.tagOnly ? { tagOnly: true } : {}),
      ...(f.newLink ? { newLink: f.newLink } : {}),
    });
  /**
   * A frame sent out of `dev`: what it reaches, as children of node `idx`. `hops`: the devices crossed since that
   * node, `dev` last; `words`: how, in words (empty: the root is sent out of).
   */
  const transmit = (dev: string, idx: number, f: Frame, hops: string[], words: string, via: UpNode['via']) => {
    if (sent.has(dev)) return;
    sent.add(dev);
    const join = (w: string) => (words ? `${words}, ${w}` : w);
    const p = g.peerOf(dev);
    if (p !== undefined) {
      if (seen.has(p)) return;
      const k = node(p, idx, join(`whose veth peer is ${p}`), f, [...hops, p], via);
      visit(p, k, f);
      return;
    }
    const away = g.peerAway?.(dev);
    if (away) {
      // A bridge there forwards out of its other ports; one that is a veth whose peer is here: a receive on it.
      for (const b of away.back ?? []) {
        if (seen.has(b.peer)) continue;
        const w = join(
          `whose veth peer ${away.where} is a port of bridge ${away.bridge} there, which forwards frames out of its ` +
            `port ${b.port}, whose veth peer is ${b.peer}`,
        );
        const k = node(b.peer, idx, w, f, [...hops, away.where, away.bridge ?? '', b.port, b.peer], via ?? 'send');
        visit(b.peer, k, f);
      }
      if (away.leadsOn !== undefined) {
        unknown.push(
          `${dev}'s veth peer ${away.where} ${away.leadsOn}: xdpctld does not follow frames in another network namespace`,
        );
      }
      return;
    }
    const d = g.deviceOf?.(dev);
    if (!d) return; // not said (a fake), or gone
    const kind = d.kind ?? '';
    if (kind === 'veth' || SENDS_OFF.has(kind)) return; // a veth whose peer is not read; off the host
    if (SENDING_MASTERS.has(kind)) {
      for (const port of g.portsOf?.(dev) ?? []) {
        transmit(
          port,
          idx,
          f,
          [...hops, port],
          join(`a ${kind} that sends them out of its port ${port}`),
          via ?? 'send',
        );
      }
      return;
    }
    const stackedOn =
      kind === 'macvlan' || kind === 'macvtap' || kind === 'ipvlan' || kind === 'ipvtap' || kind === 'vlan';
    if (!stackedOn) {
      unknown.push(`${dev} is a ${kind}: what it transmits goes where xdpctld does not follow`);
      return;
    }
    const lower = d.lower;
    if (lower === undefined) {
      unknown.push(`${dev} is a ${kind} whose lower device is in another network namespace: not followed there`);
      return;
    }
    const mode = d.mode ? ` (mode ${d.mode})` : '';
    const sibling = (u: UpperLink) => u.via === 'stacked' && u.name !== dev && (u.kind ?? '') === kind;
    if (kind === 'macvlan' || kind === 'macvtap') {
      if (!MACVLAN_OUT_ONLY.has(d.mode ?? '')) {
        // Bridge mode (or a mode not read: taken as it): a frame to a bridge-mode macvlan beside it is a receive
        // on the lower, whose rx handler (macvlan_handle_frame) hands it up to that macvlan.
        const sibs = g.uppersOf(lower).filter((u) => sibling(u) && u.mode === 'bridge');
        if (sibs.length && !seen.has(lower)) {
          const w = join(
            `a ${kind}${mode} that hands a frame to a ${kind} in bridge mode on its lower device ${lower} as a receive on ${lower}`,
          );
          const k = node(lower, idx, w, f, [...hops, lower], via ?? 'send');
          for (const u of sibs) {
            if (seen.has(u.name)) continue;
            visit(u.name, node(u.name, k, upperWords(u), f), f);
          }
        }
      }
    } else if (kind === 'ipvlan' || kind === 'ipvtap') {
      // A frame to an address of an ipvlan beside it: a receive on that one (ipvlan_rcv_frame, dev_forward_skb).
      for (const u of g.uppersOf(lower).filter(sibling)) {
        if (seen.has(u.name)) continue;
        const w = join(
          `an ${kind}${mode} that hands a frame to an address of ${u.name}, an ${kind} on its lower device ${lower}, as a receive there`,
        );
        visit(u.name, node(u.name, idx, w, f, [...hops, u.name], via ?? 'send'), f);
      }
      // l2: a frame to the lower's MAC no ipvlan address takes is a receive on the lower, passed to its stack.
      if (d.mode !== 'l3' && d.mode !== 'l3s' && !seen.has(lower)) {
        const w = join(
          `an ${kind}${mode} that hands a frame to its lower device's MAC no ipvlan takes to ${lower} as a receive there`,
        );
        node(lower, idx, w, f, [...hops, lower], via ?? 'send');
      }
    }
    const out =
      kind === 'vlan'
        ? join(`a vlan that sends them tagged out of its lower device ${lower}`)
        : join(`a ${kind}${mode} that sends them out of its lower device ${lower}`);
    const next = kind === 'vlan' ? { ...f, tagged: true, tagOnly: true } : f;
    transmit(lower, idx, next, [...hops, lower], out, via ?? 'send');
  };
  const visit = (dev: string, idx: number, f: Frame) => {
    const to = g.linkTo.get(dev);
    if (idx >= 0 && to !== undefined) {
      if (stopAtLinks) return;
      const nl = f.newLink ?? (g.inForce.get(dev) !== to ? dev : undefined);
      const t: Frame = { tagged: f.tagOnly, tagOnly: f.tagOnly, ...(nl ? { newLink: nl } : {}) };
      transmit(to, idx, t, [to], `the ingress of a link to ${to}`, 'link');
      return;
    }
    for (const u of g.uppersOf(dev)) {
      if (u.via === 'master' && u.kind === 'bridge' && g.portsOf) {
        for (const port of g.portsOf(u.name)) {
          if (port === dev) continue;
          const w = `a port of bridge ${u.name}, which forwards frames out of its port ${port}`;
          transmit(port, idx, f, [u.name, port], w, 'forward');
        }
      }
      if (seen.has(u.name)) continue;
      const r = upperReceives(u, f.tagged);
      if ('unknown' in r) {
        seen.add(u.name);
        unknown.push(`${dev} is ${upperWords(u)}: ${r.unknown}`);
        continue;
      }
      if (!r.receives) continue;
      const t: Frame = {
        tagged: r.tagged,
        tagOnly: f.tagOnly && r.tagged && u.kind !== 'vlan',
        ...(f.newLink ? { newLink: f.newLink } : {}),
      };
      visit(u.name, node(u.name, idx, upperWords(u), t), t);
    }
  };
  const f0: Frame = { tagged: false, tagOnly: false };
  if (send) transmit(root, -1, f0, [], '', undefined);
  else visit(root, -1, f0);
  return { nodes, unknown };
}

/** Where a datagram sent out of an egress arrives: the interfaces crossed to the veth peer, then its uppers. */
export interface Arrival {
  path: string[];
  newLink?: string;
  /** The devices above the last of `path` the datagram may go up to ({@link receivingUppers}). */
  ups: UpNode[];
  /** The uppers met whose receive path cannot be told, in words: whether a loop goes through them is not known. */
  unknown: string[];
  /** The last of `path` is sent out of (no veth with a peer here), not received: `ups` is what that transmit reaches. */
  sent?: boolean;
}

/** A cycle back to a rule: its steps, and the first link direction on it that the change makes (if any). */
export interface RuleCycle {
  steps: LoopStep[];
  newLink?: string;
}

/** The addresses in both `a` and `b` (as prefixes: of two overlapping prefixes, the longer). */
function intersectSources(a: Sources, b: Sources): Sources {
  if (a === null) return b;
  if (b === null) return a;
  const out = new Map<string, Prefix>();
  for (const x of a) {
    for (const y of b) {
      if (prefixCovers(x, y)) out.set(formatPrefix(y), y);
      else if (prefixCovers(y, x)) out.set(formatPrefix(x), x);
    }
  }
  return [...out.values()];
}

/** The addresses of `a` not in `b`, as far as prefixes tell: a prefix of `a` no prefix of `b` covers whole is kept whole. */
function subtractSources(a: Sources, b: Sources): Sources {
  if (b === null) return [];
  if (a === null) return null;
  return a.filter((x) => !b.some((y) => prefixCovers(y, x)));
}

/** Cycles of rules over one {@link LoopGraph}; where each egress leads is followed once. */
export class RuleLoops {
  private readonly arrivals = new Map<string, Arrival | undefined>();

  constructor(private readonly g: LoopGraph) {}

  /** Where a datagram sent out of `egress` arrives: the interfaces it crosses, the last the ingress it arrives on. */
  arrival(egress: string): Arrival | undefined {
    if (this.arrivals.has(egress)) return this.arrivals.get(egress);
    const out = this.follow(egress);
    this.arrivals.set(egress, out);
    return out;
  }

  private follow(egress: string): Arrival | undefined {
    const path = [egress];
    let newLink: string | undefined;
    for (const seen = new Set<string>(); !seen.has(egress);) {
      seen.add(egress);
      const peer = this.g.peerOf(egress);
      if (peer === undefined) {
        // No veth with a peer here: what sending out of it reaches (a macvlan's lower, a peer elsewhere...).
        if (!this.g.deviceOf && !this.g.peerAway) return undefined;
        const t = receiveTree(egress, { ...this.g, uppersOf: (n) => this.uppersOf(n) }, false, true);
        return { path, newLink, ups: t.nodes, unknown: t.unknown, sent: true };
      }
      path.push(peer);
      const next = this.g.linkTo.get(peer);
      if (next === undefined) {
        const up = receiveTree(peer, { ...this.g, uppersOf: (n) => this.uppersOf(n) });
        return { path, newLink, ups: up.nodes, unknown: up.unknown };
      }
      if (this.g.inForce.get(peer) !== next) newLink ??= peer;
      path.push(next);
      egress = next;
    }
    return undefined; // a loop of links: refused as one (plan-links.ts)
  }

  /** The devices directly above `name`: the graph's uppersOf, or its master alone (masterOf). */
  private uppersOf(name: string): readonly UpperLink[] {
    if (this.g.uppersOf) return this.g.uppersOf(name);
    const m = this.g.masterOf?.(name);
    return m ? [masterAsUpper(m)] : [];
  }

  /**
   * The rules that match a datagram to `dst` on `port` from `sources` arriving on the peer `peer` and going up
   * its uppers `ups` (what no rule takes on a device goes up to each device above it), with the sources each
   * takes and the uppers (indexes in `ups`, nearest first) it went up to before the device it is matched on.
   */
  private matches(peer: string, ups: readonly UpNode[], port: number, dst: string, sources: Sources, sent = false) {
    const out: { rule: LoopRule; sources: Sources; chain: number[] }[] = [];
    const at = (ingress: string, rest: Sources, chain: number[]): Sources => {
      const exact = this.g.ruleAt(`${ingress}|${port}|${dst}`);
      if (exact) {
        const taken = intersectSources(rest, exact.sources);
        if (taken === null || taken.length) out.push({ rule: exact, sources: taken, chain });
        rest = subtractSources(rest, exact.sources);
      }
      const any = this.g.ruleAt(`${ingress}|${port}|`);
      if (any && any !== exact && (rest === null || rest.length)) {
        const taken = intersectSources(rest, any.sources);
        if (taken === null || taken.length) out.push({ rule: any, sources: taken, chain });
        rest = subtractSources(rest, any.sources);
      }
      return rest;
    };
    const up = (parent: number, rest: Sources, chain: number[]) => {
      if (rest !== null && !rest.length) return;
      ups.forEach((n, k) => {
        if (n.parent !== parent) return;
        const here = [...chain, k];
        // A link direction's ingress: the link takes every frame before a rule there (its only child: the link).
        // A tagged datagram is the stack's, not a rule's (xdpctl.bpf.c): it goes on up (a vlan takes it untagged).
        up(k, this.g.linkTo.has(n.name) || n.tagOnly ? rest : at(n.name, rest, here), here);
      });
    };
    up(-1, sent ? sources : at(peer, sources, []), []);
    return out;
  }

  /** A cycle back to `start` from its backend `b`: the steps (each a rule's backend and where it arrives), or undefined. */
  cycleFrom(start: LoopRule, b: BackendSpec): RuleCycle | undefined {
    return this.explore(start, b).cycle;
  }

  /**
   * When no cycle back to `start` from its backend `b` is found: the upper devices met on the way whose receive
   * path cannot be told ({@link upperReceives}), in words: whether a loop goes through them is not known. [] when
   * a cycle is found (that is said instead) or none was met.
   */
  cannotTell(start: LoopRule, b: BackendSpec): string[] {
    const r = this.explore(start, b);
    return r.cycle ? [] : [...r.unknown];
  }

  /** {@link cycleFrom} and what {@link cannotTell} is told from, in one walk. */
  explore(start: LoopRule, b: BackendSpec): { cycle?: RuleCycle; unknown: ReadonlySet<string> } {
    const unknown = new Set<string>();
    const visited = new Set<string>();
    const go = (
      rule: LoopRule,
      backend: BackendSpec,
      sources: Sources,
      steps: LoopStep[],
      newLink: string | undefined,
    ): RuleCycle | undefined => {
      const a = this.arrival(backend.interface);
      if (!a) return undefined;
      for (const u of a.unknown) unknown.add(u);
      for (const m of this.matches(a.path[a.path.length - 1], a.ups, rule.spec.port, backend.ip, sources, a.sent)) {
        const viaNew = newLink ?? a.newLink ?? m.chain.map((k) => a.ups[k].newLink).find((l) => l !== undefined);
        const path = [...a.path, ...m.chain.flatMap((k) => a.ups[k].hops ?? [a.ups[k].name])];
        const step: LoopStep = { rule: rule.name, backend: backend.ip, iface: backend.interface, path };
        if (m.chain.length) {
          step.masters = m.chain.map((k) => a.ups[k].words);
          step.base = a.path.length;
          if (m.chain.some((k) => a.ups[k].via)) step.reached = true;
          if (a.sent) step.sent = true;
        }
        const here = [...steps, step];
        if (m.rule.name === start.name) return { steps: here, newLink: viaNew };
        const key = `${m.rule.name}|${m.sources?.map(formatPrefix).join(',') ?? '*'}`;
        if (visited.has(key)) continue;
        visited.add(key);
        for (const next of m.rule.spec.backends) {
          const found = go(m.rule, next, m.sources, here, viaNew);
          if (found) return found;
        }
      }
      return undefined;
    };
    const cycle = go(start, b, start.sources, [], undefined);
    return cycle ? { cycle, unknown } : { unknown };
  }
}

/** What a redirected datagram does in a cycle. */
export const LOOP_TAIL =
  'every redirected datagram would come back and be redirected again until its TTL ran out ' +
  '(up to 63 times each, each counted matched and redirected)';

/** A cycle found from the backend of rule `start` that a change adds, as its refusal says it (without the tail). */
export function changeLoopText(steps: readonly LoopStep[], start: string): string {
  const first = steps[0].path;
  const peer = first[1];
  const masters = steps[0].masters ?? [];
  const base = steps[0].base ?? first.length - masters.length;
  const links = base > 2;
  const last = first[first.length - 1];
  // Where the first step's datagrams arrive, up to the ingress that matches them ("..., an ingress").
  const below = first[base - 1]; // the device the uppers are above
  let reach = links ? `its veth peer ${peer} leads through links to ${below}` : '';
  if (steps[0].sent) {
    // Sent out of `below` (the egress, or a link's egress): what that transmit reaches, up to the ingress.
    reach =
      `${base > 1 ? `its veth peer ${peer} leads through links out of ${below}, which` : `its egress ${below}`}` +
      `${masters[0]?.startsWith('whose ') ? ',' : ' is'} ${masters.join(', itself ')}: a datagram no rule takes on ` +
      `the way reaches ${last}, an ingress`;
  } else if (masters.length) {
    const on = masters[0].startsWith('a port of ') ? 'the port' : below;
    reach =
      `${reach ? `${reach}, which` : `its veth peer ${peer}`} is ${masters.join(', itself ')}: ` +
      `a datagram no rule takes on ${on} ${steps[0].reached ? 'reaches' : 'goes up to'} ${last}, an ingress`;
  } else if (links) reach += ', an ingress';
  if (steps.length === 1) {
    if (masters.length) return `${reach} of this rule (${first.join(' -> ')})`;
    return links
      ? `its veth peer ${peer} leads through links back to ${last} (${first.join(' -> ')}), an ingress of this rule`
      : `its veth peer ${peer} is ingress of this rule`;
  }
  const via = steps.slice(1).map((s) => s.rule);
  const where = reach || `its veth peer ${peer} is ingress`;
  const trail = steps
    .map(
      (s, k) =>
        `${s.path.join(' -> ')} [${k + 1 < steps.length ? `rule ${steps[k + 1].rule}, backend ${steps[k + 1].backend}` : `rule ${start}`}]`,
    )
    .join(' -> ');
  return (
    `${where} of rule ${via[0]}, and the datagrams come back to this rule through ` +
    `${via.length > 1 ? 'rules' : 'rule'} ${via.join(', ')}: a loop of rules ${[start, ...via, start].join(' -> ')} (${trail})`
  );
}

/** The key of a rule's backend in the reconciler's host loops: "rule|ip@iface". */
export const loopBackendKey = (rule: string, b: { ip: string; interface: string }) => `${rule}|${b.ip}@${b.interface}`;

/** A forwarding loop the host made, as the reconciler found it. */
export interface HostLoop {
  /** The rules around it, from the first, back to it ("ra -> rb -> ra"), and the way ("E -> md [rule rb], ..."). */
  rules: string;
  through: string;
  /** Its backends ({@link loopBackendKey}), sorted: they are what identifies it. */
  backends: string[];
}

/** The cycles the host makes, by the backends that close them. */
export interface HostLoops {
  /** Backend ({@link loopBackendKey}) -> why it is kept out of its rule's table (names made visible). */
  backends: Map<string, string>;
  /** Each loop once, by its sorted backends joined with " ". */
  loops: Map<string, HostLoop>;
  /** Backend ({@link loopBackendKey}) on no cycle found -> the upper devices met whose receive path cannot be told. */
  unknown: Map<string, string>;
}

/**
 * The cycles the backends `starts` close on the host as it is now (`g`: the peers now, the links in force, the
 * rules in force): each backend on a cycle (a cycle back to its own rule), with the cycle in words.
 */
export function findHostLoops(g: LoopGraph, starts: Iterable<readonly [LoopRule, BackendSpec]>): HostLoops {
  const finder = new RuleLoops(g);
  const out: HostLoops = { backends: new Map(), loops: new Map(), unknown: new Map() };
  for (const [rule, b] of starts) {
    const key = loopBackendKey(rule.name, b);
    if (out.backends.has(key)) continue;
    const { cycle: c, unknown } = finder.explore(rule, b);
    if (!c) {
      if (unknown.size) out.unknown.set(key, loopUnknownText(b, [...unknown]));
      continue;
    }
    const members = [...new Set(c.steps.map((s) => loopBackendKey(s.rule, { ip: s.backend, interface: s.iface })))];
    const id = [...members].sort().join(' ');
    const rules = visible([rule.name, ...c.steps.slice(1).map((s) => s.rule), rule.name].join(' -> '));
    const through = visible(
      c.steps
        .map((s, k) => `${s.path.join(' -> ')} [rule ${k + 1 < c.steps.length ? c.steps[k + 1].rule : rule.name}]`)
        .join(', '),
    );
    if (!out.loops.has(id)) out.loops.set(id, { rules, through, backends: [...members].sort() });
    out.backends.set(key, `in a forwarding loop the host made, of rules ${rules} through ${through}: ${LOOP_TAIL}`);
  }
  return out;
}

/**
 * What is said of a backend whose way back cannot be told (`met`: {@link RuleLoops.cannotTell}), in its rule's
 * warnings: "backend 10.0.0.2 on e0: whether its datagrams come back to a rule cannot be told: lb is ...".
 */
export function loopUnknownText(b: { ip: string; interface: string }, met: readonly string[]): string {
  return visible(
    `backend ${b.ip} on ${b.interface}: whether its redirected datagrams come back to an ingress of a rule (a ` +
      `forwarding loop) cannot be told: ${met.join('; ')}`,
  );
}

/** A loop's backends in words: "rule ra's backend 198.18.2.1 on E, rule rb's backend ...". */
export function loopBackendsText(l: HostLoop): string {
  return visible(
    l.backends
      .map((k) => {
        const bar = k.indexOf('|');
        const at = k.indexOf('@', bar);
        return `rule ${k.slice(0, bar)}'s backend ${k.slice(bar + 1, at)} on ${k.slice(at + 1)}`;
      })
      .join(', '),
  );
}

/** A loop as the datapath's problems (health xdpctl.datapath, GetStatus datapath warnings) say it. */
export function hostLoopProblem(l: HostLoop): string {
  return (
    `forwarding loop made by the host: rules ${l.rules} through ${l.through}: the backends that close it are ` +
    `kept out of their tables (${loopBackendsText(l)})`
  );
}
