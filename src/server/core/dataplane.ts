/**
 * The port the core needs from the datapath, and the types that cross it.
 * The core owns these: the real implementation (dataplane/adapter.ts, koffi +
 * libbpf) implements them and encodes them into kernel bytes
 * (dataplane/codec.ts); unit tests use a fake. Every method that changes the
 * kernel is a single, small step so that the core can undo a failed
 * transaction step by step. Nothing here imports from dataplane/.
 */
import type { EntryRepair } from './entry-owners.js';
import type { RepairSubject } from './fights.js';
import type { NonUtf8Interface } from './non-utf8.js';
import type { NeighbourFact, PeerRead } from './static-mac.js';

/** A match entry's key: (ingress ifindex, UDP destination port, protocol, destination address). */
export interface MatchKey {
  ifindex: number;
  /** Host order. */
  dport: number;
  /** IP protocol number (17 = UDP). */
  proto: number;
  /** Address family (2 = AF_INET). */
  family: number;
  /** 4 or 16 bytes; all-zero means any destination. */
  daddr: Uint8Array;
}

/** A source prefix allowed for one rule slot. */
export interface SrcKey {
  slot: number;
  /** Prefix length in address bits (0..32 for IPv4). */
  length: number;
  addr: Uint8Array;
}

/** One backend as the datapath rewrites packets to it. */
export interface BackendEntry {
  /** Destination MAC (6 bytes). */
  dmac: Uint8Array;
  /** Source MAC (6 bytes): the egress interface's. */
  smac: Uint8Array;
  /** Egress ifindex. */
  ifindex: number;
  statsId: number;
  family: number;
  addr: Uint8Array;
}

/**
 * The entry of an unused backend id, all zero (what a cleared rule slot leaves: the datapath drops a packet
 * hashed to it as "no backend"). A fresh object each call: callers may hand it to a map writer.
 */
export function emptyBackendEntry(): BackendEntry {
  return {
    dmac: new Uint8Array(6),
    smac: new Uint8Array(6),
    ifindex: 0,
    statsId: 0,
    family: 0,
    addr: new Uint8Array(4),
  };
}

/** A backend entry as a log line says it ("ifindex 7, MAC 02:..., address 10.0.0.2, stats id 3"). */
export function backendText(e: BackendEntry | undefined): string {
  if (!e) return 'not read';
  const mac = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
  const addr = e.family === 2 ? [...e.addr.subarray(0, 4)].join('.') : Buffer.from(e.addr).toString('hex');
  return (
    `ifindex ${e.ifindex}, MAC ${mac(e.dmac)} from ${mac(e.smac)}, address ${addr} (family ${e.family}), ` +
    `stats id ${e.statsId}`
  );
}

/** Counters of one rule (packets and bytes, summed over CPUs). */
export type RuleStats = Record<
  'matched' | 'matchedBytes' | 'redirected' | 'redirectedBytes' | 'filtered' | 'noBackend' | 'redirectErrors',
  bigint
>;
/** Counters of one backend. */
export type BackendStats = Record<'packets' | 'bytes' | 'redirectErrors', bigint>;
/** Counters of one cross-connect direction, by ingress ifindex. */
export type LinkStats = Record<'packets' | 'bytes' | 'redirectErrors', bigint>;

/** A rule's counters all zero (a reset stats id). A fresh object each call: callers may hand it to a map writer. */
export function zeroRuleStats(): RuleStats {
  return {
    matched: 0n,
    matchedBytes: 0n,
    redirected: 0n,
    redirectedBytes: 0n,
    filtered: 0n,
    noBackend: 0n,
    redirectErrors: 0n,
  };
}

/** A backend's counters all zero. A fresh object each call. */
export function zeroBackendStats(): BackendStats {
  return { packets: 0n, bytes: 0n, redirectErrors: 0n };
}

/** A cross-connect direction's counters all zero. A fresh object each call. */
export function zeroLinkStats(): LinkStats {
  return { packets: 0n, bytes: 0n, redirectErrors: 0n };
}

/**
 * Index of each datapath-wide counter in {@link CounterRead.global}: the
 * order of `enum xdpctl_stat` in bpf/xdpctl.h (test/unit/codec-layout.test.ts
 * compares it with the compiled object's BTF; dataplane/codec.ts re-exports it).
 */
export const GlobalStat = {
  ABORTED: 0,
  DROP: 1,
  PASS: 2,
  TX: 3,
  REDIRECT: 4,
  ERR_TRUNCATED: 5,
  ERR_FRAGMENT: 6,
  ERR_NO_RULE: 7,
  ERR_NO_BACKEND: 8,
  ERR_REDIRECT: 9,
  ERR_MALFORMED: 10,
  ERR_TTL: 11,
  ERR_IP_OPTIONS: 12,
  ERR_XMIT: 13,
  ERR_MARTIAN: 14,
  ERR_XMIT_UNATTRIBUTED: 15,
  ERR_NOT_FOR_US: 16,
} as const;

export type XdpModeName = 'native' | 'generic' | 'auto';

export interface InterfaceInfo {
  name: string;
  ifindex: number;
  mac: string;
}

/** What an egress interface can do now (sysfs: flags, carrier, mtu). */
export interface LinkState {
  /** Administratively up (IFF_UP). */
  up: boolean;
  /** Has carrier (a veth: its peer is up): IFF_LOWER_UP, whatever the operational state says. */
  carrier: boolean;
  mtu: number;
  /**
   * Set when the device is up with carrier but not operationally up: "dormant" or "testing" (RFC 2863
   * ifOperStatus, set by userspace: an 802.1X supplicant, a VRRP agent, `ip link set DEV state dormant`). The
   * kernel still receives and transmits on it (XDP included: a redirect checks IFF_UP only), so it is not
   * taken as "no carrier".
   */
  operstate?: 'dormant' | 'testing';
}

export interface XdpStatus {
  mode: 'none' | 'native' | 'generic' | 'offload' | 'multi';
  progId: number;
  ours: boolean;
  /**
   * Set when `ours` is false because the daemon cannot tell (not pinned under its pin root, and no
   * CAP_SYS_ADMIN to open the program by id): why. Unset for a program it knows is another tool's.
   */
  unidentified?: string;
  /**
   * Set when `ours` is false and the daemon can tell whose it is: another xdpctld's program (the same
   * code on maps that are not this datapath's, from another pin root): what it observed.
   */
  otherDaemon?: string;
  /** Set when `ours` is false: the program's name (bpf_prog_info), when it can be read. */
  name?: string;
  /** Why the mode differs from the one asked for (e.g. "native XDP refused (...); running in generic mode"). */
  warnings?: string[];
}

/** Our program on a device of another network namespace (moved away while it ran there). */
export interface StrayAttachment {
  /** That namespace's id as ours names it. */
  nsid: number;
  /** The device there, as that namespace names it. */
  ifindex: number;
  ifname: string;
  mode: XdpStatus['mode'];
  progId: number;
}

/** What became of a stray attachment: detached (and the device settings we changed put back), or not. */
export interface StrayRemoval {
  /** The namespace, in words ("network namespace blue", "the unnamed network namespace with nsid 7 (...)"). */
  where: string;
  detached: boolean;
  /** Device settings we had changed, put back ("tx-vlan-offload on again"). */
  restored: string[];
  /** Why not (detached false), or what could not be put back. */
  error?: string;
  /** The command that detaches it by hand (detached false). */
  command?: string;
}

/** Everything a rule slot holds ({@link Dataplane.writeRuleSlot}). */
export interface RuleSlotWrite {
  slot: number;
  statsId: number;
  /** RULE_F_* flags other than ACTIVE (set by the writer). */
  flags: number;
  /** Source prefixes (empty: no filter). */
  srcPrefixes: { length: number; addr: Uint8Array }[];
  /** Backend id per ring slot (RING_SIZE entries, NO_BACKEND for none). */
  ring: ArrayLike<number>;
  /** Backend entries the ring refers to, by id. */
  backends: [number, BackendEntry][];
  /**
   * src_allow entries keyed to this slot that are not among {@link srcPrefixes} (another tool's write into a free
   * slot): deleted by this write before the rule's own are added, so that the rule taking the slot owns exactly its
   * prefixes there (they would widen its filter).
   */
  foreignSrc?: SrcKey[];
}

/** A rule slot as the kernel holds it now ({@link Dataplane.readRuleSlots}). */
export interface RuleSlotState {
  /**
   * RULE_F_* flags other than ACTIVE and SRC_FILTER (the ones {@link RuleSlotWrite} takes). ONE_BACKEND, which
   * the table writer keeps, only where it is wrong (set over a table of several ids): a flag no plan has.
   */
  flags: number;
  /** The ACTIVE flag: the datapath uses the slot. */
  active: boolean;
  /** The SRC_FILTER flag: the datapath checks source prefixes. */
  srcFilter: boolean;
  statsId: number;
  /**
   * Backend id per table slot: slot `s` is `ring[s * ringStride]` (ringSize slots). Valid only during
   * the visit (it may be the map's memory itself): copy what must outlive it.
   */
  ring: Uint32Array;
  /** Distance between slots in `ring`; absent: 1. */
  ringStride?: number;
  /** The rule entry's flags word as the kernel holds it (every bit; absent: a reader without it), for what a log says. */
  word?: number;
  /**
   * The flags word a rewrite of the entry with these writes: `flags` (as {@link flags} takes them), the ACTIVE
   * bit, SRC_FILTER when `srcFilter`, ONE_BACKEND when the table holds one id throughout (`oneId`).
   */
  wordOf?: (flags: number, srcFilter: boolean, oneId: boolean) => number;
}

/** What {@link Dataplane.watchSlots} saw move. */
export interface MovedEntries {
  slots: ReadonlySet<number>;
  backends: ReadonlySet<number>;
  coverMs: number;
  /** Reads the watcher completed since the last call, and the longest recent one (ms). */
  reads: number;
  readMs: number;
  error?: string;
}

/** What a start's {@link Dataplane.rebuildPortIndex} found of the rule generations (map rule_gen, rule_match). */
export interface StartGenerations {
  /** The live generation (rule_gen): the one packets look up. */
  live: number;
  /** The inactive generation's match entries it deleted, each with the rule slot it pointed at. */
  inactive: [MatchKey, number][];
}

export interface CounterRead {
  rules: Map<number, RuleStats>;
  backends: Map<number, BackendStats>;
  links: Map<number, LinkStats>;
  global: bigint[];
}

/**
 * A veth egress's peer as the MTU check reads it ({@link Dataplane.vethPeerMtu}): its name and MTU, and
 * where it lives when not in the daemon's namespace (`netns`: its /run/netns name; `nsid`: the id our
 * namespace gives it); or why its MTU cannot be read (`unreadable`).
 */
export type PeerMtu = { name: string; mtu: number; netns?: string; nsid?: number } | { unreadable: string };

/**
 * A device directly above another one in the daemon's namespace, as rtnetlink gives it (Dataplane.upperLinks):
 * the master the lower is enslaved to (IFLA_MASTER), or a device stacked on the lower (its IFLA_LINK is the
 * lower: vlan, macvlan, macvtap, ipvlan, ipvtap, macsec, a tunnel sending through it). What of a frame received
 * on the lower it receives too is judged by core/rule-loops.ts from these facts.
 */
export interface UpperLink {
  name: string;
  /** IFLA_INFO_KIND ("bridge", "macvlan", "vlan", ...); undefined for a device without one. */
  kind?: string;
  /** "master": the lower's IFLA_MASTER; "stacked": the upper's IFLA_LINK names the lower. */
  via: 'master' | 'stacked';
  /** ipvlan/ipvtap: the mode of the port ("l2", "l3", "l3s"; IFLA_IPVLAN_MODE), macvlan/macvtap: its mode (IFLA_MACVLAN_MODE). */
  mode?: string;
  /** A bridge: IFLA_BR_VLAN_FILTERING on (what it passes up to itself may carry the port's PVID as a tag). */
  vlanFiltering?: boolean;
  /** A vlan: its protocol and id ("802.1Q 10"; IFLA_VLAN_PROTOCOL, IFLA_VLAN_ID). */
  vlan?: string;
}

/**
 * How a device transmits, as the loop walk reads it (Dataplane.txLink; rule-loops.ts receiveTree): its kind
 * (IFLA_INFO_KIND; undefined for a device without one: a NIC's driver), its mode (macvlan/macvtap, ipvlan/ipvtap),
 * and the device it is stacked on (IFLA_LINK of a vlan, macvlan, macvtap, ipvlan, ipvtap) when that is in the
 * daemon's namespace, or `lowerAway` when it is in another one.
 */
export interface TxLink {
  kind?: string;
  mode?: string;
  lower?: string;
  lowerAway?: boolean;
}

/**
 * A veth whose peer is in another network namespace, as the loop walk reads it (Dataplane.vethPeerAway): the peer
 * in words ("eth0 in netns blue"), and what there takes a frame it receives on at layer 2 (`leadsOn`, in words: "is
 * a port of bridge br0 there", "cannot be read: ..."); undefined `leadsOn`: nothing does (no master, nothing
 * stacked on it): a frame ends in that namespace's stack.
 */
export interface PeerAway {
  where: string;
  leadsOn?: string;
  /**
   * The peer is a port of a bridge there (`bridge`), and these of that bridge's other ports are veths whose peers are
   * in the daemon's namespace (`peer`): what the bridge forwards out of `port` is a receive on `peer` here. Any
   * other port (where its frames go is not followed there), or a device stacked on the peer or the bridge there, is
   * said in `leadsOn`.
   */
  bridge?: string;
  back?: { port: string; peer: string }[];
}

/**
 * The XDP programs not ours attached to a veth egress's peer ({@link Dataplane.vethPeerXdp}): the peer in words
 * ("eth0 in netns blue") and each program's id, attach mode and name (bpf_prog_info; absent when it cannot be
 * read); what runs on the peer's ingress on tc (none of it ours: the daemon attaches nothing on tc); and the
 * nftables chains hooked on its ingress that may drop a frame (none of them ours either).
 */
export interface PeerXdp {
  where: string;
  programs: { id: number; mode: string; name?: string }[];
  tc?: PeerTc;
  nft?: PeerNftChain[];
}

/**
 * An nftables base chain hooked on the peer's ingress (family `netdev` hook `ingress`, or `inet` hook `ingress`;
 * NFT_MSG_GETCHAIN), as read: its rules are counted (NFT_MSG_GETRULE), never evaluated. One whose policy is
 * accept and that holds no rule is not one of them (it passes every frame).
 */
export interface PeerNftChain {
  family: string;
  table: string;
  chain: string;
  priority: number;
  /** `accept`, `drop`, or what else was read. */
  policy: string;
  /** How many rules it holds; absent when they could not be read. */
  rules?: number;
}

/**
 * The peer's tc ingress: the filters of its clsact/ingress qdisc (RTM_GETTFILTER; one per kind, priority,
 * protocol and chain; a `bpf` filter with its programs) and its tcx programs (BPF_PROG_QUERY BPF_TCX_INGRESS).
 */
export interface PeerTc {
  filters: {
    kind: string;
    pref: number;
    /** Ethertype, host order (3: all). */
    protocol: number;
    programs: { id: number; name?: string; directAction: boolean }[];
  }[];
  tcx: { id: number; name?: string }[];
}

/** Whether native XDP redirects into an egress are delivered ({@link Dataplane.redirectTarget}). */
export interface RedirectTarget {
  ok: boolean;
  /** Why not, or what was checked (and done). */
  detail?: string;
  /**
   * `ok` only because the kernel announces ndo-xmit: the device's peer could not be inspected (a veth whose
   * peer is in a namespace xdpctld cannot enter), and the flag stays set when the peer lost NAPI while it
   * was down. The reconciler judges such an egress by the backends' redirect counters (core/egress-watch.ts).
   */
  unverified?: boolean;
  /**
   * Not `ok`, and asked with `fix` (xdpctld --fix-veth-peers) it would be: the check would switch GRO on on
   * the veth's peer (or off and on), a host change a dry run does not make.
   */
  fixable?: boolean;
  /** With `unverified`: what the kernel reports about the device (ifindex, features, peer, carrier changes); it changes when they do. */
  key?: string;
  /**
   * Not `ok` because the device is a veth whose peer is down (boot order, a container restarting): it transmits
   * nothing now, and whether its peer will have NAPI is known only once the peer is up, so a change naming it
   * is not refused for it: it waits (not forwarding), and the reconciler checks it again then.
   */
  waitsForPeer?: boolean;
  /**
   * Not `ok` because the device went away during the check (ENODEV looking it up, no device of that name
   * after): the caller treats the interface as missing (core/unchecked.ts inspectTarget).
   */
  gone?: boolean;
}

/** The device settings changed since {@link Dataplane.trackHostChanges}. */
export interface HostChangeScope {
  /** Stop following (the changes stay, recorded for --cleanup-on-exit). */
  close(): void;
  /** Put back every setting changed since, newest first; what was put back, and what could not be. */
  revert(): Promise<{ reverted: string[]; failed: string[] }>;
  /**
   * Wait for the writes of the host-changes record made since (off the event loop, bounded); rejects with a
   * CoreError (unavailable, naming the record) when the disk did not complete one within the bound: the change
   * must then be refused and undone, as one whose store COMMIT did not complete.
   */
  settle?(): Promise<void>;
}

/** Records a repair: `subject` was observed wrong and written back; `line` logs it unless a fight summarises it. */
export interface RepairSink {
  repaired(subject: RepairSubject, line: () => void): void;
}

export interface Dataplane {
  readonly ringSize: number;
  readonly noBackend: number;
  readonly capacity: {
    ruleSlots: number;
    matches: number;
    srcPrefixes: number;
    backends: number;
    statsIds: number;
    links: number;
  };
  readonly progId: number;
  /** What the datapath cannot observe (e.g. the tracepoint programs did not attach); empty when all is. */
  readonly warnings: readonly string[];
  readonly pinRoot: string;

  lookupInterface(name: string): InterfaceInfo | undefined;
  /**
   * The device a name resolves to, by the device's own name: itself, or for an alternative name (`ip link
   * property add dev X altname Y`, which the kernel resolves too) the device's name; undefined when no device
   * has that name. lookupInterface answers for device names only.
   */
  deviceName?(name: string): { name: string; ifindex: number } | undefined;
  /**
   * The devices of the daemon's namespace whose name is not UTF-8 (bytes no request can give: core/non-utf8.ts),
   * read when a name given names no device. Optional (fakes): without it a name that names no device is missing.
   */
  nonUtf8Interfaces?(): readonly NonUtf8Interface[];
  /**
   * The MAC of `ip`'s neighbour entry on `iface`; undefined when it has none. Throws a PortError of kind
   * 'not-found' when `iface` does not exist (any more: deleted or renamed since it was looked up).
   */
  neighbourMac(ip: string, iface: string): Promise<string | undefined>;
  /**
   * Many neighbour entries in one read of the table (a pass reads every backend given without MAC through
   * this: one netlink dump, not one `ip` per backend): "ip@iface" -> MAC as {@link neighbourMac} gives it,
   * and the egresses that do not exist (any more) in `gone` (their backends are "egress missing"). Throws
   * when the table cannot be read. Optional (fakes): without it each entry is read by {@link neighbourMac}.
   * `whole`: also the whole table of that same read in `table`, as {@link neighbourTable} gives it (and records
   * it): a pass that judges static MACs too reads the table once, not twice.
   */
  neighbourMacs?(
    wanted: readonly { ip: string; iface: string }[],
    whole?: boolean,
  ): Promise<{ macs: Map<string, string | undefined>; gone: Set<string>; table?: Map<string, NeighbourFact> }>;
  attach(ifname: string, mode: XdpModeName): XdpStatus;
  /**
   * Detach our program from `ifname`; given `ifindex`, from that device, `ifname` only naming it (a device renamed to
   * a name that is not UTF-8 cannot be looked up by the text of its name).
   */
  detach(ifname: string, ifindex?: number): void;
  /**
   * Devices directly below `ifname` (a bridge's ports, a bond's slaves). The
   * kernel refuses any XDP change on a device while a device above it has a
   * program (EEXIST), so ours goes from a lower device before it goes onto
   * the upper one. Optional: without it no such ordering is done.
   */
  lowerDevices?(ifname: string): string[];
  /** Devices directly above `ifname` (its bridge or bond): the same kernel rule, the other way. Optional. */
  upperDevices?(ifname: string): string[];
  /** Whether an interface can transmit now; undefined when it does not exist. Optional (fakes). */
  linkState?(ifname: string): LinkState | undefined;
  /**
   * Write, for each ingress running our program (name -> ifindex), the unicast MACs other than its own that
   * the kernel takes as this host's on it (its secondary unicast addresses: a macvlan's, a VRRP virtual MAC;
   * on a bridge port the bridge's local addresses), read from the kernel now; ingresses not given lose
   * theirs. Returns, by ingress, what of them could not be read or written (frames to those MACs are passed
   * to the stack, counted not_for_us). Optional (fakes): without it only the ingress's own address is taken.
   */
  syncIngressMacs?(ingresses: ReadonlyMap<string, number>): Map<string, string[]>;
  /** Ask the kernel to resolve a neighbour (send an ARP request); best effort, never throws. */
  probeNeighbour?(ip: string, iface: string): void;
  /**
   * Ask the kernel to verify a resolved neighbour entry that a backend relies on (it sends an ARP
   * request to the MAC it holds; unanswered, the entry becomes FAILED), rate-limited by the
   * implementation; true when a probe was started. Best effort, never throws. Optional (fakes).
   */
  verifyNeighbour?(ip: string, iface: string, unanswered?: boolean): boolean;
  /**
   * The MAC that answered an ARP request of our own for `ip` on `iface`: a reply seen on the wire (sender IP
   * `ip`, sender MAC that MAC, addressed to this host), preferring the entry's own MAC; undefined when none did
   * (or its last request went unanswered). A neighbour entry is never an answer: any tool can write one, even
   * as `nud reachable`. `verifyNeighbour(..., true)` asks an entry's MAC that has no answer at once (at most
   * once a second). Optional (fakes).
   */
  neighbourAnswered?(ip: string, iface: string): string | undefined;
  /** How long ago (ms) `mac` last answered an ARP request of ours for `ip` on `iface`; undefined: never, or not since its last request. */
  neighbourAnswerAge?(ip: string, iface: string, mac: string): number | undefined;
  /**
   * What ARP requests of our own for `ip` on `iface` found, read off the wire: of `mac`, 'answers' (lately:
   * within NEIGHBOUR_HOLD_MS, none to it unanswered since) or 'silent' (the last one to it went unanswered),
   * undefined when not asked (lately); `others`, the other MACs that answered one within CONFLICT_MS, none to them
   * unanswered since. What tells a static MAC contradicted (only another MAC answers) from one in an address
   * conflict (both do; static-mac.ts). Optional (fakes).
   */
  neighbourAnswers?(ip: string, iface: string, mac: string): { own?: 'answers' | 'silent'; others: string[] };
  /**
   * Send an ARP request of our own for `ip` on `iface` to `mac` (at most once a second; `now`: whatever that
   * says, not twice while one is outstanding); true when sent. Optional (fakes).
   */
  askNeighbour?(ip: string, iface: string, mac: string, now?: boolean): boolean;
  /**
   * The MACs that claim `ip` on `iface` at once, read off the wire (an address conflict, RFC 5227: ARP packets
   * from two MACs with that sender IP, each after the other's first: a duplicate host or a spoofer), sorted;
   * undefined: none. Optional (fakes).
   */
  neighbourConflict?(ip: string, iface: string): string[] | undefined;
  /**
   * Why no ARP request of our own can be sent (no CAP_NET_RAW: the packet socket is refused), so that no
   * neighbour MAC can be confirmed; undefined when they can be (or nothing says otherwise yet). Optional (fakes).
   */
  arpUnavailable?(): string | undefined;
  /**
   * The IPv4 neighbour table in one read: "ip@iface" -> entry (MAC, NUD states, seconds since the last
   * confirmation). Empty when it cannot be read. Optional (fakes): without it static MACs are not checked.
   */
  neighbourTable?(): Promise<Map<string, NeighbourFact>>;
  /**
   * A veth's peer, in this network namespace or another (read there by its namespace id), with its MAC and the
   * addresses its namespace holds (static-mac.ts); `{ unreadable }` (why) when its namespace cannot be read;
   * undefined when the device is not a veth (or gone). Optional.
   */
  vethPeerMac?(ifname: string): PeerRead | undefined;
  /**
   * The states of the neighbour entry last read for `ip` on `iface` (by {@link neighbourMac} or {@link neighbourMacs}) when it was
   * set by hand, e.g. "PERMANENT" or "NOARP", and its MAC has not answered an ARP request of ours: the kernel
   * never probes nor ages such an entry, so only our own request can confirm its MAC. Undefined for an entry
   * the kernel resolved, one whose MAC answered (or none). Optional (fakes).
   */
  neighbourHandSet?(ip: string, iface: string): string | undefined;
  /**
   * Why the MAC of `ip` behind `iface` (as last read) is not the kernel's neighbour entry's but what ARP requests
   * of ours found, or why there is none to find: the egress has ARP off (NOARP), the entry was set `nud noarp`,
   * the address is also this host's (or its own on the egress, or the subnet's broadcast address). Undefined:
   * the kernel's entry is the backend's (on the egress, or on its master for a bridge port). Optional (fakes).
   */
  neighbourVia?(ip: string, iface: string): string | undefined;
  /**
   * What the host's routes say of the backend `ip` behind `iface`, when it is not simply on the egress's link:
   * off-link (the kernel routes it via a gateway on the egress: its MAC is the gateway's, whose neighbour entry
   * every neighbour method here reads, probes and asks instead of the backend's), or routed out of another
   * device by the host (no route through the egress: taken as on its link, as the kernel does). Undefined:
   * nothing to say. Optional (fakes).
   */
  neighbourRoute?(ip: string, iface: string): string | undefined;
  /**
   * Whether the neighbour entry last read for `ip` on `iface` (by {@link neighbourMac} or {@link neighbourMacs}) gave no MAC without
   * having failed: no entry at all (flushed with its device, garbage-collected, gone while the daemon was
   * stopped) or one still being resolved (INCOMPLETE). That is no evidence that a MAC the datapath holds for the
   * backend is wrong (only a FAILED entry is: the host did not answer): the MAC is kept while a probe resolves
   * the entry again (Facts.keptMacs). False once the entry was seen FAILED, until it has a MAC again (a
   * resolve of ours makes a failed entry INCOMPLETE once more). Optional (fakes: a missing MAC is then taken
   * as unresolved).
   */
  neighbourMissing?(ip: string, iface: string): boolean;
  /**
   * A veth's peer with its MTU, wherever the peer lives (this namespace, a named or an unnamed one), or why
   * its MTU cannot be read; undefined when `ifname` is not a veth. Optional (fakes: {@link vethPeer} then).
   */
  vethPeerMtu?(ifname: string): PeerMtu | undefined;
  /** The name of a veth's peer when it is in this network namespace; undefined otherwise. Optional (fakes). */
  vethPeer?(ifname: string): string | undefined;
  /**
   * The device `ifname` is enslaved to (netlink IFLA_MASTER) with its kind ("bridge", "bond", "team", ...), or
   * undefined (none, or `ifname` is gone). What a frame received on `ifname` goes up to (rule-loops.ts). Optional (fakes).
   */
  masterLink?(ifname: string): { name: string; kind?: string } | undefined;
  /**
   * The devices directly above `ifname` in this namespace (its master, the devices stacked on it; a veth's
   * peer is not one), from one rtnetlink dump; [] when it is gone. What a frame received on `ifname` may go up to
   * (rule-loops.ts). Optional (fakes: {@link masterLink} then).
   */
  upperLinks?(ifname: string): UpperLink[];
  /**
   * How `ifname` transmits (its kind, mode and lower device: {@link TxLink}), from rtnetlink; undefined when it is
   * gone. What a frame sent out of it makes appear where (rule-loops.ts). Optional (fakes: only veth peers followed).
   */
  txLink?(ifname: string): TxLink | undefined;
  /**
   * A veth whose peer is in another network namespace: the peer in words and what takes its frames there at layer 2
   * ({@link PeerAway}, read by nsid: IFLA_TARGET_NETNSID); undefined when `ifname` is not a veth or its peer is here.
   * Optional (fakes).
   */
  vethPeerAway?(ifname: string): PeerAway | undefined;
  /**
   * The ports of the bridge `ifname` in the daemon's namespace (devices whose IFLA_MASTER it is; rtnetlink): what
   * it forwards out of them is followed for loops (rule-loops.ts receiveTree). Optional (fakes: not followed).
   */
  bridgePorts?(ifname: string): string[];
  /**
   * The XDP programs not ours attached to a veth's peer, wherever the peer is, the tc filters and tcx programs
   * on the peer's ingress and the nftables chains hooked there that may drop a frame (policy not accept, or a
   * rule): what is redirected into the veth passes through them on the other side,
   * where they may drop it unseen. Undefined when `ifname` is not a veth, its peer has none (or only our XDP
   * program), or the peer cannot be read. Optional (fakes).
   */
  vethPeerXdp?(ifname: string): PeerXdp | undefined;
  /**
   * The tc filters and tcx programs on the ingress of `ifname` itself and the nftables chains hooked there that may
   * drop a frame (none of them ours), in the daemon's namespace: for a backend's egress, what the backend sends back
   * passes through them before this host. Undefined when there are none or it cannot be read. Optional (fakes).
   */
  ingressHooks?(ifname: string): Omit<PeerXdp, 'where' | 'programs'> | undefined;
  /** The name an ifindex has now, or undefined when no device has it. Optional (fakes). */
  nameOf?(ifindex: number): string | undefined;
  /**
   * The device `name` names now, read in order with the kernel's reports of deletions ({@link linkDeletions}):
   * every deletion reported before this read is in the next linkDeletions() answer, none reported after it. Its
   * ifindex, and what only grows over a device's life (packets received and sent, carrier changes: a lower value
   * on the same ifindex is another device, the evidence used when reports were lost: core/device-identity.ts
   * remadeDevices). Undefined when it is gone or cannot be read. Optional (fakes).
   */
  deviceCounters?(name: string): { ifindex: number; packets: bigint; carrierChanges: number } | undefined;
  /**
   * The devices the kernel reported deleted (RTM_DELLINK; not those moved to another namespace) before the last
   * deviceCounters() read and not yet handed over, in its order, and whether some may be missing (reports lost
   * to an overflowing queue, or none received: no socket for them). Optional (fakes).
   */
  linkDeletions?(): { deleted: { ifindex: number; name: string }[]; lost: boolean };
  /** Forget what the dataplane keeps about the device `name` named (a device made again in its place). Optional. */
  forgetDevice?(name: string): void;
  xdpStatus(ifname: string): XdpStatus | undefined;
  /**
   * Every interface of this network namespace that runs this datapath's program, or an earlier one
   * pinned under its pin root (a previous run's): name -> ifindex and mode. Optional (fakes).
   */
  ownAttachments?(): Map<string, { ifindex: number; mode: XdpStatus['mode'] }>;
  /**
   * Attach our program in the mode it runs in now (swapping in the program in use if an earlier one runs),
   * not the mode asked for, and show `why` in the interface's status (core/keep-mode.ts). Optional (fakes).
   */
  keepMode?(ifname: string, why: string, requested?: XdpModeName): XdpStatus;
  /** Devices of other network namespaces that run our program (moved away while it ran). Optional (fakes). */
  strayAttachments?(): StrayAttachment[];
  /**
   * Where a device that left this namespace is now, for a message ("network namespace NAME (ifindex N
   * there)"): another namespace holding a device of that name with that MAC; undefined when none does (it
   * was deleted). Optional (fakes).
   */
  movedTo?(ifname: string, mac: string): string | undefined;
  /** Detach our program from such a device and put back what we changed on it. Optional (fakes). */
  removeStray?(s: StrayAttachment): Promise<StrayRemoval>;
  /**
   * What a veth did with the native XDP redirects into it, as the kernel counts them on the device (from our
   * namespace, whatever namespace its peer is in): frames its peer took (`ethtool -S` tx_queue_N_xdp_xmit)
   * and frames dropped on transmit (tx_dropped: a peer without NAPI drops every redirected frame there).
   * Undefined when not known. Optional (fakes).
   */
  xdpTransmitStats?(ifname: string): Promise<{ taken: bigint; dropped: bigint } | undefined>;
  /**
   * The transmit drops of `ifname` when it is a tap (tx_dropped: frames the kernel could not queue to the process
   * holding the tap, its queue full because that process does not read); undefined when it is not a tap, is gone
   * or cannot be read. Read at every reconciler pass (core/tap-drops.ts). Optional (fakes).
   */
  tapTxDropped?(ifname: string): bigint | undefined;
  /**
   * The device settings an attach makes for XDP on `ifname` (offloads turned off: VLAN tag offloads, and in
   * generic mode TSO/GSO of a veth's peer), checked again and made where they are not as needed: `done` says
   * what this daemon had made there before (its host-changes record) and found undone, made again; `set` what
   * it made there for the first time (the mode changed: another tool attached our program in generic mode;
   * or the device is new), with why; `unrepaired` what was found on and could not be turned off, `released`
   * what an earlier mode needed and this one does not, turned back on (a generic ingress's peer's TSO/GSO,
   * once the ingress runs in native mode). Optional (fakes).
   */
  checkIngress?(
    ifname: string,
    generic: boolean,
  ): Promise<{
    done: string[];
    set?: string[];
    unrepaired: string[];
    /** Reads that could not be made (a command failed or did not answer): those settings are not known. */
    unread?: string[];
    released?: string[];
  }>;
  /**
   * Whether the kernel would take a native-mode (driver) XDP program on `ifname`, from its xdp-features
   * (NETDEV_XDP_ACT_BASIC; a bridge has none) with the features as text; undefined when the kernel does
   * not say (no xdp-features before 6.3, or no such interface). Optional (fakes).
   */
  nativeXdp?(ifname: string): { supported: boolean; features: string } | undefined;
  /** The veth precondition for native redirects into `ifname`. */
  redirectTarget(ifname: string, fix: boolean): Promise<RedirectTarget>;
  /**
   * Where the repairs the dataplane makes itself after observing the kernel wrong (a veth peer's GRO switched
   * on again) are recorded, with the line that says each (core/fights.ts: a repair another tool keeps undoing
   * is a fight). Optional (fakes).
   */
  setRepairSink?(sink: RepairSink): void;
  /**
   * Follow the device settings the dataplane changes from now on (GRO switched on on a veth peer, offloads
   * turned off for XDP by an attach), so that a transaction that fails can put them back (and take them out
   * of the host-changes record). Optional (fakes change no device settings).
   */
  trackHostChanges?(): HostChangeScope;

  writeRuleSlot(c: RuleSlotWrite): void;
  clearRuleSlot(slot: number, srcPrefixes: { length: number; addr: Uint8Array }[], backendIds: number[]): void;
  /**
   * Write / delete a match entry, its per-port index entry (rule_ports) following: in the active generation, or
   * in the staged one while {@link beginMatches}'s transaction is open. `index` false: the match entry only (the
   * reconciler's repair of an entry another tool wrote or deleted, which did not change the index with it;
   * checkPortIndex then recounts the index from the match entries).
   */
  putMatch(key: MatchKey, slot: number, index?: boolean): void;
  deleteMatch(key: MatchKey, index?: boolean): void;
  /** The match entries packets look up (the active generation's; not a staged transaction's). */
  listMatches(): [MatchKey, number][];
  /**
   * Begin a many-rule change as one kernel transaction: the active match entries are copied into a staged
   * generation, which putMatch and deleteMatch write until {@link commitMatches} switches the datapath to it
   * with one map update (the commit point; the old generation's entries are deleted after) or
   * {@link abortMatches} deletes it. Optional (fakes: putMatch writes in place).
   */
  beginMatches?(): void;
  /** Switch to the staged generation (no-op when no transaction is open). Throws only when the switch failed. */
  commitMatches?(): void;
  /** Delete the staged generation (no-op when no transaction is open). */
  abortMatches?(): void;
  /**
   * Recount the per-port index of match entries from the entries themselves, after deleting the inactive
   * generation's entries; returns the live generation and what those entries were (the slot each pointed at), for
   * what a start says of slots no stored rule holds. Fakes without generations return nothing.
   */
  rebuildPortIndex(): StartGenerations | void;
  /**
   * Check the per-port index entries of the ports in use and the link flags (the reconciler's cheaper
   * form of rebuildPortIndex); rewrite and return what differed, one record each (its line and owner). `pace`: awaited between
   * batches of match entries read (a long read yields to the event loop); nothing is written until all are.
   * `all`: every port's entry, those of ports no match entry uses included (they must hold zeros).
   */
  checkPortIndex?(pace?: () => Promise<void>, all?: boolean): Promise<EntryRepair[]>;
  /**
   * Compare rule_gen (the active rule generation) with the generation this daemon made active (at its start or
   * its last many-rule switch); when another tool flipped it, write it back (one update) and return the repair.
   * The reconciler calls it at every pass. Undefined: they agree, or no generation is known yet.
   */
  checkGeneration?(): EntryRepair | undefined;
  /**
   * Compare the per-interface flags word (if_flags: cross-connect, link counters index, generic mode) of every
   * interface with a link, link counters or our program with what it must be: `generic` names each ifindex our
   * program runs on, true where the kernel reports generic mode; `links` the link directions wanted (ingress ->
   * egress ifindex), whose counters' egress entry (xc_egress) is compared too. Rewrite and return what
   * differed, one record each (its line and owner).
   */
  checkInterfaceFlags?(generic: ReadonlyMap<number, boolean>, links?: ReadonlyMap<number, number>): EntryRepair[];
  /** Source-prefix entries of every slot. */
  listSrcPrefixes(): SrcKey[];
  deleteSrcPrefix(key: SrcKey): void;
  /** A slot's backend table (backend ids). */
  readRing(slot: number): number[];
  /**
   * Read many slots at once (a start adopting 10 000 rules): `visit` gets
   * each slot's state; its `ring` is a scratch array, overwritten for the
   * next slot.
   */
  readRuleSlots(slots: readonly number[], visit: (slot: number, s: RuleSlotState) => void): void;
  /** Of these backend entries, the ids whose entry the kernel holds differently (an unused id holds all zeros). */
  differingBackends(want: readonly [number, BackendEntry][]): number[];
  /**
   * The ids `lo`..`hi` whose backend entry holds any byte other than zero (one read of the range): a start looks
   * for entries no rule holds that another tool or a killed change left written. Optional (fakes:
   * {@link differingBackends} with empty entries).
   */
  nonEmptyBackends?(lo: number, hi: number): number[];
  /**
   * The kernel's backend entries of ids `lo`..`hi` read once, then compared one at a time: the returned
   * function says whether the kernel holds exactly `e` at `id` (false for an id outside the range). A start
   * builds each of its 40 000 desired entries, compares it and drops it (see {@link differingBackends},
   * which needs them all at once). Optional (fakes).
   */
  backendComparer?(lo: number, hi: number): (id: number, e: BackendEntry) => boolean;
  /**
   * The rule slots and backend ids whose kernel entries (rule_cfg, rule_ring, backends) moved since the last
   * call, as a watcher off the event loop read them (dataplane/slot-watch.ts: every ~0.4 s plus one read of
   * them all), ours included; from now on it reads slots 0..`slots`-1 and ids 0..`backends`-1 (one past the
   * highest in use). `coverMs`: how long after a write its report can come at worst; `error`: why the
   * watcher stopped (then nothing more is reported). Optional (fakes: the full comparison only).
   */
  watchSlots?(slots: number, backends: number): MovedEntries;
  /**
   * Have the watcher report these slots and backend ids at its next read whatever their bytes: we just rewrote
   * them (a repair), and another tool writing its bytes back before that read would leave the bytes the
   * watcher last saw (a fight over a table would look unmoved). Optional, with watchSlots.
   */
  rewatch?(slots: number[], backends: number[]): void;
  /** The backend entries the kernel holds at these ids (to say how an entry differs; a few ids at a time). */
  readBackends?(ids: readonly number[]): Map<number, BackendEntry>;
  /**
   * Repair steps for a published slot (adoption at start: only the entries
   * that differ from the desired state are written). Each is one step.
   */
  writeBackends(entries: [number, BackendEntry][]): void;
  /**
   * Write table slots start..start+ids.length-1 of a rule slot's backend table (the rule entry's ONE_BACKEND
   * flag cleared before, set after when the whole table holds one id).
   */
  writeRing(slot: number, start: number, ids: ArrayLike<number>): void;
  /** Write a slot's rule entry (ACTIVE set; SRC_FILTER as given). */
  writeRuleCfg(slot: number, flags: number, statsId: number, srcFilter: boolean): void;
  putSrcPrefix(key: SrcKey): void;
  resetRuleStats(statsId: number): void;
  resetBackendStats(statsId: number): void;

  /** Connect a direction; true when it created the direction's counters entry (none was left from before). */
  connect(from: number, to: number): boolean;
  disconnect(from: number): void;
  listLinks(): [number, number][];
  resetLinkStats(from: number): void;

  readCounters(ruleStatsIds: number[], backendStatsIds: number[], linkFroms: number[]): CounterRead;
}
