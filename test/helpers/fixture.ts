/**
 * Programming the datapath directly (below the daemon) for datapath tests:
 * open a datapath on a per-test pin directory, install a UDP rule or a link.
 */
import { fillRing } from '../../src/server/core/ring.js';
import {
  AF_INET,
  IPPROTO_UDP,
  NO_BACKEND,
  RING_SIZE,
  RULE_F_UDP_CSUM_ZERO,
  type MatchKey,
} from '../../src/server/dataplane/codec.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { ifindexOf, macOf } from '../../src/server/dataplane/netdev.js';
import { publishMatches, writeRuleSlot } from '../../src/server/dataplane/tables.js';
import { OBJECT } from './env.js';
import { ipBytes, macBytes } from './packets.js';

export function openDatapath(pinRoot: string, objectPath = OBJECT): XdpDatapath {
  return XdpDatapath.open({ objectPath, pinRoot, capacity: { ruleSlots: 64, statsIds: 64, backends: 256 } });
}

export interface TestBackend {
  id: number;
  ip: string;
  mac: string;
  iface: string;
  weight?: number;
}

export interface TestRule {
  slot: number;
  statsId: number;
  ingress: string[];
  port: number;
  daddr?: string;
  sources?: { length: number; addr: string }[];
  backends: TestBackend[];
  csumZero?: boolean;
}

/** Write a rule into its slot and publish it; returns its match keys. */
export function installRule(dp: XdpDatapath, r: TestRule): MatchKey[] {
  const ring = fillRing(
    r.backends.map((b) => ({ key: `${b.ip}@${b.iface}`, weight: b.weight ?? 1, value: b.id })),
    RING_SIZE,
    NO_BACKEND,
  );
  writeRuleSlot(dp.maps, {
    slot: r.slot,
    statsId: r.statsId,
    flags: r.csumZero ? RULE_F_UDP_CSUM_ZERO : 0,
    srcPrefixes: (r.sources ?? []).map((s) => ({ length: s.length, addr: ipBytes(s.addr) })),
    ring,
    backends: r.backends.map((b) => [
      b.id,
      {
        dmac: macBytes(b.mac),
        smac: macBytes(macOf(b.iface)),
        ifindex: ifindexOf(b.iface),
        statsId: b.id,
        family: AF_INET,
        addr: ipBytes(b.ip),
      },
    ]),
  });
  const keys = r.ingress.map((i) => ({
    ifindex: ifindexOf(i),
    dport: r.port,
    proto: IPPROTO_UDP,
    family: AF_INET,
    daddr: r.daddr ? ipBytes(r.daddr) : new Uint8Array(4),
  }));
  publishMatches(dp.maps, keys, r.slot);
  return keys;
}
