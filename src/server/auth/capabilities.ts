/**
 * The Linux capabilities xdpctld needs, checked at start so that a missing
 * one is named instead of surfacing as a bare EPERM from the kernel:
 *
 * - CAP_BPF: create maps, load the program, pin them in bpffs.
 * - CAP_NET_ADMIN: load an XDP (networking) program, attach it through
 *   netlink, enable GRO on veth peers with ethtool.
 * - CAP_PERFMON: the verifier only allows the program's packet-length
 *   arithmetic (`data_end - data`, pointer minus pointer) to callers with it.
 * - CAP_NET_RAW (optional): the AF_PACKET socket through which the daemon sends
 *   ARP requests of its own and reads the replies (dataplane/arp.ts), the only
 *   evidence that a backend's neighbour MAC answers. Without it no such MAC is
 *   ever confirmed (its status says "not confirmed yet", "cannot be confirmed: no CAP_NET_RAW ...").
 * - CAP_SYS_ADMIN (optional): entering another network namespace (setns, via
 *   `ip -n` / `nsenter`) to inspect or fix the peer of a veth before native
 *   redirects into it. Without it, such redirects are refused; generic mode
 *   and native redirects into other devices do not need it.
 *
 * CAP_SYS_ADMIN also satisfies CAP_BPF and CAP_PERFMON (the kernel's
 * bpf_capable() and perfmon_capable()). Reads /proc/self/status only.
 */
import { readFileSync } from 'node:fs';

export const CAP = { NET_ADMIN: 12, NET_RAW: 13, SYS_ADMIN: 21, PERFMON: 38, BPF: 39 } as const;

const WHY: Record<'BPF' | 'NET_ADMIN' | 'PERFMON', string> = {
  BPF: 'maps and programs',
  NET_ADMIN: 'XDP attach',
  PERFMON: "the verifier accepts the program's packet-length arithmetic only with it",
};

/** Effective capabilities from a /proc/<pid>/status text (undefined when absent). */
export function effectiveCapabilities(status: string): bigint | undefined {
  const m = status.match(/^CapEff:\s*([0-9a-f]+)$/m);
  return m ? BigInt(`0x${m[1]}`) : undefined;
}

export const hasCap = (eff: bigint, cap: number) => (eff & (1n << BigInt(cap))) !== 0n;

/** The required capabilities missing from `eff`, each with why it is needed. */
export function missingCapabilities(eff: bigint): string[] {
  const admin = hasCap(eff, CAP.SYS_ADMIN);
  const out: string[] = [];
  if (!hasCap(eff, CAP.BPF) && !admin) out.push(`CAP_BPF (${WHY.BPF})`);
  if (!hasCap(eff, CAP.NET_ADMIN)) out.push(`CAP_NET_ADMIN (${WHY.NET_ADMIN})`);
  if (!hasCap(eff, CAP.PERFMON) && !admin) out.push(`CAP_PERFMON (${WHY.PERFMON})`);
  return out;
}

/** This process's missing capabilities, whether it may enter other network namespaces and send ARP itself. */
export function checkOwnCapabilities(): { missing: string[]; canEnterNetns: boolean; canSendArp: boolean } {
  let eff: bigint | undefined;
  try {
    eff = effectiveCapabilities(readFileSync('/proc/self/status', 'utf8'));
  } catch {
    eff = undefined;
  }
  if (eff === undefined) return { missing: [], canEnterNetns: true, canSendArp: true }; // unknown: let the kernel decide
  return {
    missing: missingCapabilities(eff),
    canEnterNetns: hasCap(eff, CAP.SYS_ADMIN),
    canSendArp: hasCap(eff, CAP.NET_RAW),
  };
}
