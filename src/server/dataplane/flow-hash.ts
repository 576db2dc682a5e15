/**
 * The datapath's flow hash (flow_hash() in bpf/xdpctl.bpf.c), in TypeScript,
 * so that tests and tools can predict which ring slot a flow lands in. A
 * BPF_PROG_TEST_RUN test checks that both agree.
 */
import { fmix32 } from '../core/ring.js';
import { RING_SIZE } from './codec.js';

function mix(h: number, k: number): number {
  k = Math.imul(k, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, 0x1b873593);
  h ^= k;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

/** Read 4 network-order bytes as the little-endian u32 the BPF program loads. */
function le32(b: Uint8Array): number {
  return (b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)) >>> 0;
}

/** Swap a 16-bit port to how the BPF program sees it (network order in a LE load). */
function portAsLoaded(port: number): number {
  return ((port & 0xff) << 8) | (port >> 8);
}

/** flow_hash() of an IPv4 5-tuple; addresses as bytes, ports in host order. */
export function flowHash(saddr: Uint8Array, daddr: Uint8Array, sport: number, dport: number, proto: number): number {
  let h = 0x9747b28c | 0;
  h = mix(h, le32(saddr));
  h = mix(h, le32(daddr));
  h = mix(h, ((portAsLoaded(sport) << 16) | portAsLoaded(dport)) >>> 0);
  h = mix(h, proto);
  return fmix32(h);
}

/** The ring slot (0..RING_SIZE-1) a flow selects. */
export function ringIndex(saddr: Uint8Array, daddr: Uint8Array, sport: number, dport: number, proto: number): number {
  return flowHash(saddr, daddr, sport, dport, proto) % RING_SIZE;
}
