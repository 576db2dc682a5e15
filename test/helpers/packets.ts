/** Hand-built frames and checksum verification for BPF_PROG_TEST_RUN tests. */

export function macBytes(mac: string): Buffer {
  return Buffer.from(mac.split(':').map((x) => parseInt(x, 16)));
}

export function ipBytes(ip: string): Buffer {
  return Buffer.from(ip.split('.').map(Number));
}

/** One's-complement sum of 16-bit words (not inverted). */
export function csum16(buf: Uint8Array, init = 0): number {
  let s = init;
  for (let i = 0; i + 1 < buf.length; i += 2) s += (buf[i] << 8) | buf[i + 1];
  if (buf.length & 1) s += buf[buf.length - 1] << 8;
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return s;
}

function pseudoHeader(frame: Buffer, l4Off: number, udpLen: number): number {
  const ph = Buffer.alloc(12);
  frame.copy(ph, 0, 26, 34); // saddr, daddr (IHL 5)
  ph[9] = 17;
  ph.writeUInt16BE(udpLen, 10);
  void l4Off;
  return csum16(ph);
}

export interface UdpFrameSpec {
  dmac: string;
  smac: string;
  sip: string;
  dip: string;
  sport: number;
  dport: number;
  payload?: Buffer;
  /** Leave the UDP checksum 0 (none). */
  noUdpChecksum?: boolean;
  /** Set IPv4 flags/fragment offset (host order 16 bits). */
  fragOff?: number;
  /**
   * Leave the UDP checksum as a sender with TX checksum offload does
   * (CHECKSUM_PARTIAL): only the folded pseudo-header sum, not inverted.
   */
  partialUdpChecksum?: boolean;
  /** IPv4 TTL (default 64). */
  ttl?: number;
  /** IPv4 identification (default 0x1234). */
  id?: number;
}

/** An Ethernet + IPv4 (IHL 5) + UDP frame with correct checksums. */
export function udpFrame(s: UdpFrameSpec): Buffer {
  const payload = s.payload ?? Buffer.from('hello from the VM');
  const udpLen = 8 + payload.length;
  const b = Buffer.alloc(14 + 20 + udpLen);
  macBytes(s.dmac).copy(b, 0);
  macBytes(s.smac).copy(b, 6);
  b.writeUInt16BE(0x0800, 12);
  b[14] = 0x45;
  b.writeUInt16BE(20 + udpLen, 16);
  b.writeUInt16BE(s.id ?? 0x1234, 18);
  b.writeUInt16BE(s.fragOff ?? 0x4000, 20); // DF
  b[22] = s.ttl ?? 64;
  b[23] = 17;
  ipBytes(s.sip).copy(b, 26);
  ipBytes(s.dip).copy(b, 30);
  b.writeUInt16BE(~csum16(b.subarray(14, 34)) & 0xffff, 24);
  b.writeUInt16BE(s.sport, 34);
  b.writeUInt16BE(s.dport, 36);
  b.writeUInt16BE(udpLen, 38);
  payload.copy(b, 42);
  if (s.partialUdpChecksum) {
    b.writeUInt16BE(pseudoHeader(b, 34, udpLen), 40);
  } else if (!s.noUdpChecksum) {
    const c = ~csum16(b.subarray(34), pseudoHeader(b, 34, udpLen)) & 0xffff;
    b.writeUInt16BE(c || 0xffff, 40);
  }
  return b;
}

/** An ARP request frame. */
export function arpFrame(smac: string, sip: string, tip: string): Buffer {
  const b = Buffer.alloc(42);
  b.fill(0xff, 0, 6);
  macBytes(smac).copy(b, 6);
  b.writeUInt16BE(0x0806, 12);
  b.writeUInt16BE(1, 14);
  b.writeUInt16BE(0x0800, 16);
  b[18] = 6;
  b[19] = 4;
  b.writeUInt16BE(1, 20);
  macBytes(smac).copy(b, 22);
  ipBytes(sip).copy(b, 28);
  ipBytes(tip).copy(b, 38);
  return b;
}

/** Recompute the IPv4 header checksum (IHL 5) after a test edits the header. */
export function fixIpChecksum(b: Buffer): Buffer {
  b.writeUInt16BE(0, 24);
  b.writeUInt16BE(~csum16(b.subarray(14, 34)) & 0xffff, 24);
  return b;
}

/** The folded UDP pseudo-header sum of a frame (what a partial checksum field holds). */
export function udpPseudoSum(b: Buffer): number {
  return pseudoHeader(b, 34, b.readUInt16BE(38));
}

/** Verify both checksums of an IPv4/UDP frame from scratch. */
export function checksums(b: Buffer): { ipOk: boolean; udpOk: boolean; udpZero: boolean } {
  const ipOk = csum16(b.subarray(14, 34)) === 0xffff;
  const udpLen = b.readUInt16BE(38);
  const udpZero = b.readUInt16BE(40) === 0;
  const udpOk = udpZero || csum16(b.subarray(34, 34 + udpLen), pseudoHeader(b, 34, udpLen)) === 0xffff;
  return { ipOk, udpOk, udpZero };
}
