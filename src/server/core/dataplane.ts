/**
 * What the core needs from the datapath. The real implementation is
 * dataplane/adapter.ts (koffi + libbpf); unit tests use a fake. Every method
 * that changes the kernel is a single, small step so that the core can undo
 * a failed transaction step by step.
 */
import type { BackendEntry, BackendStats, LinkStats, MatchKey, RuleStats, SrcKey } from '../dataplane/codec.js';

export type XdpModeName = 'native' | 'generic' | 'auto';

export interface InterfaceInfo {
  name: string;
  ifindex: number;
  mac: string;
}

export interface XdpStatus {
  mode: 'none' | 'native' | 'generic' | 'offload' | 'multi';
  progId: number;
  ours: boolean;
}

export interface RuleSlotWrite {
  slot: number;
  statsId: number;
  flags: number;
  srcPrefixes: { length: number; addr: Uint8Array }[];
  ring: ArrayLike<number>;
  backends: [number, BackendEntry][];
}

export interface CounterRead {
  rules: Map<number, RuleStats>;
  backends: Map<number, BackendStats>;
  links: Map<number, LinkStats>;
  global: bigint[];
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
  readonly pinRoot: string;

  lookupInterface(name: string): InterfaceInfo | undefined;
  neighbourMac(ip: string, iface: string): Promise<string | undefined>;
  attach(ifname: string, mode: XdpModeName): XdpStatus;
  detach(ifname: string): void;
  xdpStatus(ifname: string): XdpStatus | undefined;
  /** The veth precondition for native redirects into `ifname`. */
  redirectTarget(ifname: string, fix: boolean): Promise<{ ok: boolean; detail?: string }>;

  writeRuleSlot(c: RuleSlotWrite): void;
  clearRuleSlot(slot: number, srcPrefixes: { length: number; addr: Uint8Array }[], backendIds: number[]): void;
  putMatch(key: MatchKey, slot: number): void;
  deleteMatch(key: MatchKey): void;
  listMatches(): [MatchKey, number][];
  /** Recount the per-port index of match entries from the entries themselves. */
  rebuildPortIndex(): void;
  /** Source-prefix entries of every slot. */
  listSrcPrefixes(): SrcKey[];
  deleteSrcPrefix(key: SrcKey): void;
  /** A slot's backend table (backend ids). */
  readRing(slot: number): number[];
  resetRuleStats(statsId: number): void;
  resetBackendStats(statsId: number): void;

  connect(from: number, to: number): void;
  disconnect(from: number): void;
  listLinks(): [number, number][];
  resetLinkStats(from: number): void;

  readCounters(ruleStatsIds: number[], backendStatsIds: number[], linkFroms: number[]): CounterRead;
}
