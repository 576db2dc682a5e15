/**
 * The desired state the daemon owns, in plain data (no gRPC, no kernel
 * types): what users asked for. Serializable as JSON for persistence.
 */

export type Protocol = 'udp';
export type UdpChecksumMode = 'update' | 'zero';
export type LinkDirection = 'both' | 'a-to-b';

export interface BackendSpec {
  ip: string;
  /** Empty: resolve from the host's neighbour table. */
  mac: string;
  interface: string;
  /** 0 drains. */
  weight: number;
}

export interface RuleSpec {
  name: string;
  protocol: Protocol;
  port: number;
  /** Empty: any destination. */
  destination: string;
  /** Empty: any source. */
  sourcePrefixes: string[];
  ingressInterfaces: string[];
  backends: BackendSpec[];
  udpChecksum: UdpChecksumMode;
  labels: Record<string, string>;
}

export interface RuleRecord extends RuleSpec {
  generation: number;
  createTime: number; // ms since epoch
  updateTime: number;
}

/** The spec of a stored rule (a record, or a stored row with its kernel ids): what applyRules takes. */
export function ruleSpecOf(r: RuleRecord & { kernel?: unknown }): RuleSpec {
  const { generation: _g, createTime: _c, updateTime: _u, kernel: _k, ...spec } = r;
  return spec;
}

export interface LinkSpec {
  a: string;
  b: string;
  direction: LinkDirection;
}

/** The key of a link: its unordered pair of interfaces. */
export function linkKey(l: { a: string; b: string }): string {
  return l.a < l.b ? `${l.a}|${l.b}` : `${l.b}|${l.a}`;
}

/** Runtime status of one backend of a rule. */
export interface BackendStatus {
  ip: string;
  interface: string;
  mac: string;
  resolved: boolean;
  /**
   * Whether it is in the rule's backend table now: MAC known and its egress
   * interface able to transmit (up, carrier). Backends that cannot receive are
   * taken out, so their flows move to the others, and put back on recovery.
   */
  receiving: boolean;
  message: string;
  /**
   * In the table, but whether it receives cannot be verified: its egress's peer cannot be inspected and
   * no traffic has shown it yet (core/egress-watch.ts). The rule is then DEGRADED, not ACTIVE.
   */
  unverified?: boolean;
  /** With `unverified`: two MACs answer ARP for its address (an address conflict, core/neighbour-hold.ts). */
  conflict?: boolean;
  /**
   * In the table, but the kernel drops the frames redirected to it: its egress is a tap whose tx_dropped rose
   * lately (its reader is not reading; core/tap-drops.ts): what was counted. The rule is then DEGRADED.
   */
  dropping?: string;
  /**
   * In the table, but an XDP program not ours runs on its egress's veth peer (core/rule-status.ts
   * peerXdpStatus): what is said of it (the program's id, name, mode). Every frame redirected to it is that
   * program's first, which may drop it while our counters say redirected: whether it receives cannot be
   * verified. The rule is then DEGRADED, its BackendsReceiving Unknown (PeerXdpProgram).
   */
  peerXdp?: string;
  /**
   * In the table, but an XDP program not ours is attached to its egress itself (core/rule-status.ts
   * foreignEgressStatus): what is said of it (the program's id, name, mode, whose). What the backend sends back,
   * its answers and ARP replies included, passes through that program first, which may drop it or redirect it
   * elsewhere (another xdpctld's cross-connect). The rule is then DEGRADED, its BackendsReceiving Unknown
   * (EgressForeignProgram).
   */
  egressProgram?: string;
  /**
   * Why its egress interface cannot take the frames redirected to it, when that is why it is out of the
   * table (down, no carrier, no native XDP redirects, every redirected frame dropped, gone): a fact about
   * the interface, which its EgressReady condition states too (Controller.listInterfaces). Not set for a
   * reason of the backend's own (no neighbour entry, a contradicted static MAC). Not on the wire.
   */
  egress?: string;
  /** With `unverified`: why its egress cannot be verified (its interface's EgressReady is Unknown with it). */
  egressUnverified?: string;
}

export type RuleState = 'active' | 'degraded' | 'inactive' | 'failed';

export type ConditionStatus = 'True' | 'False' | 'Unknown';

/** An observed condition (Kubernetes metav1.Condition): see core/conditions.ts. */
export interface Condition {
  type: string;
  status: ConditionStatus;
  reason: string;
  message: string;
  /**
   * When the status last changed, as observed (ms since epoch): the write or the reconciler pass that saw it.
   * Undefined when the daemon cannot know: a status that has held since before this daemon started.
   */
  lastTransitionTime?: number;
}

export interface RuleStatus {
  state: RuleState;
  message: string;
  backends: BackendStatus[];
  warnings: string[];
  /** Set when read (Controller.getRule). */
  conditions?: Condition[];
}

export type ChangeAction = 'create' | 'update' | 'delete' | 'unchanged' | 'repaired';
