/**
 * Attaching the XDP program to interfaces. We attach through netlink
 * (bpf_xdp_attach), not bpf_link, on purpose:
 *  - the attachment outlives the daemon with no pin to keep (a crashed or
 *    upgraded daemon never takes the datapath down, and wiping bpffs does
 *    not detach it);
 *  - XDP_FLAGS_REPLACE with the old program's fd is a compare-and-swap, which
 *    gives hitless program upgrades and detects a concurrent writer;
 *  - `ip link` and other tools see and understand it.
 * The price is that another tool could replace our program; every attach
 * and every status read checks what is really attached (by program id).
 */
import { errnoText, KernelError } from './errors.js';
import { check, closeFd, lib, sizeOf, XdpAttachOpts } from './libbpf.js';
import { NETLINK_ROUTE, nlAttr, nlAttrs, nlRequest } from './netlink.js';
import { XDP_ACT, xdpActNames, xdpFeatures } from './xdp-features.js';

/** XDP attach flags (linux/if_link.h). */
export const XDP_FLAGS = {
  UPDATE_IF_NOEXIST: 1,
  SKB_MODE: 2,
  DRV_MODE: 4,
  HW_MODE: 8,
  REPLACE: 16,
} as const;

/** The mode asked for. 'auto' tries native first, then generic. */
export type XdpMode = 'native' | 'generic' | 'auto';
/** The mode the kernel reports. */
export type EffectiveMode = 'none' | 'native' | 'generic' | 'offload' | 'multi';

const ATTACH_MODES: EffectiveMode[] = ['none', 'native', 'generic', 'offload', 'multi'];

/** What is attached to an interface. */
export interface XdpState {
  mode: EffectiveMode;
  /** Program id attached (the one for `mode`), 0 if none. */
  progId: number;
}

// <linux/rtnetlink.h>, <linux/if_link.h>
const RTM_GETLINK = 18;
const IFLA_EXT_MASK = 29;
const IFLA_XDP = 43;
const RTEXT_FILTER_SKIP_STATS = 1 << 3;
const IFLA_XDP_ATTACHED = 2;
const IFLA_XDP_PROG_ID = 4;
const IFLA_XDP_DRV_PROG_ID = 5;
const IFLA_XDP_SKB_PROG_ID = 6;
const IFLA_XDP_HW_PROG_ID = 7;

/**
 * Query what XDP program is attached to an ifindex: one RTM_GETLINK for that
 * device and its IFLA_XDP attributes (what libbpf's bpf_xdp_query reads,
 * which libbpf 1.1 gets from a dump of every device of the namespace:
 * ~1 ms each on a host with a few hundred interfaces, and the reconciler
 * asks for every managed interface on every pass). Throws ENODEV when the
 * ifindex does not exist.
 */
export function queryXdp(ifindex: number, ifname: string): XdpState {
  const ifinfo = Buffer.alloc(16); // struct ifinfomsg: family AF_UNSPEC, index
  ifinfo.writeInt32LE(ifindex, 4);
  const mask = Buffer.alloc(4);
  mask.writeUInt32LE(RTEXT_FILTER_SKIP_STATS);
  const body = nlRequest(NETLINK_ROUTE, RTM_GETLINK, ifinfo, nlAttr(IFLA_EXT_MASK, mask), `query xdp on ${ifname}`);
  if (!body) throw new KernelError(`query xdp on ${ifname}`, 19, [], 'no such interface');
  const xdp = nlAttrs(body, 16).get(IFLA_XDP);
  const attrs = xdp ? nlAttrs(xdp) : new Map<number, Buffer>();
  const u32 = (t: number) => attrs.get(t)?.readUInt32LE(0) ?? 0;
  const mode = ATTACH_MODES[attrs.get(IFLA_XDP_ATTACHED)?.readUInt8(0) ?? 0] ?? 'multi';
  const progId =
    mode === 'native'
      ? u32(IFLA_XDP_DRV_PROG_ID)
      : mode === 'generic'
        ? u32(IFLA_XDP_SKB_PROG_ID)
        : mode === 'offload'
          ? u32(IFLA_XDP_HW_PROG_ID)
          : u32(IFLA_XDP_PROG_ID);
  return { mode, progId };
}

function modeFlag(mode: 'native' | 'generic'): number {
  return mode === 'native' ? XDP_FLAGS.DRV_MODE : XDP_FLAGS.SKB_MODE;
}

/**
 * Attach `progFd` to an interface. If a program is already attached in the
 * same mode and `replaceable` says it may be replaced, it is swapped atomically
 * (REPLACE, with the old program's fd: from `fdOf` when the caller holds one,
 * else opened by id, which needs CAP_SYS_ADMIN); otherwise the attach fails
 * rather than clobber it. Returns the mode the kernel reports afterwards.
 */
export function attachXdp(
  ifindex: number,
  ifname: string,
  progFd: number,
  mode: XdpMode,
  replaceable: (progId: number) => boolean,
  fdOf?: (progId: number) => number | undefined,
): XdpState & { warnings: string[] } {
  const current = queryXdp(ifindex, ifname);
  const want: ('native' | 'generic')[] = mode === 'auto' ? ['native', 'generic'] : [mode];
  if (current.mode !== 'none') {
    if (!replaceable(current.progId)) {
      throw new KernelError(
        `attach xdp to ${ifname}`,
        16,
        [],
        `another XDP program (id ${current.progId}, ${current.mode} mode) is attached`,
      );
    }
    const sameMode = want.find((m) => m === current.mode);
    if (sameMode) {
      replace(ifindex, ifname, progFd, sameMode, current.progId, fdOf?.(current.progId));
      return { ...queryXdp(ifindex, ifname), warnings: [] };
    }
    if (current.mode === 'native' || current.mode === 'generic') {
      return changeMode(
        ifindex,
        ifname,
        progFd,
        mode as 'native' | 'generic',
        current as XdpState & { mode: 'native' | 'generic' },
        fdOf,
      );
    }
    detachXdp(ifindex, ifname, current);
  }
  let lastErr: KernelError | undefined;
  const warnings: string[] = [];
  for (const m of want) {
    const ret = lib.bpf_xdp_attach(ifindex, progFd, modeFlag(m) | XDP_FLAGS.UPDATE_IF_NOEXIST, null) as number;
    if (ret >= 0) return { ...queryXdp(ifindex, ifname), warnings };
    try {
      check(`attach xdp to ${ifname} in ${m} mode`, ret);
    } catch (e) {
      lastErr = e as KernelError;
      // 'auto': any refusal of native mode (no driver support, EINVAL for
      // an unsupported config, ERANGE for an MTU the driver cannot map, ...)
      // falls back to generic, which every device supports; the reason is kept
      // as a warning. A device that is busy (another program) is not a refusal.
      if (mode !== 'auto' || m !== 'native' || lastErr.code === 'EBUSY' || lastErr.code === 'EEXIST') throw lastErr;
      warnings.push(`native XDP refused (${lastErr.message}); running in generic mode`);
    }
  }
  throw lastErr ?? new KernelError(`attach xdp to ${ifname}`, 22);
}

/**
 * Move a program of ours from one mode to the other (`want`; 'auto' never
 * gets here: it accepts either mode). The kernel refuses two modes on one
 * device, so a mode change cannot be atomic: detach, attach in the new mode.
 * A program that forwards is never removed because the new mode is refused:
 * a device that reports no native XDP support (xdp-features without "basic":
 * a bridge) keeps its program in the mode it has, swapped to `progFd` in
 * place (REPLACE, no moment without a program); an attach the kernel refuses
 * after the detach puts `progFd` back in the old mode at once. Either way the
 * result says which mode runs and a warning why the asked one does not. Only
 * when putting it back fails too is the error thrown (both reasons).
 */
function changeMode(
  ifindex: number,
  ifname: string,
  progFd: number,
  want: 'native' | 'generic',
  current: XdpState & { mode: 'native' | 'generic' },
  fdOf?: (progId: number) => number | undefined,
): XdpState & { warnings: string[] } {
  const kept = (why: string) =>
    `${want} XDP refused (${why}); our program keeps running in ${current.mode} mode, the mode it had`;
  if (want === 'native') {
    const f = xdpFeatures(ifindex);
    if (f !== undefined && (f & XDP_ACT.basic) === 0n) {
      replace(ifindex, ifname, progFd, current.mode, current.progId, fdOf?.(current.progId));
      const why = `${ifname} has no native XDP support: the kernel reports xdp-features: ${xdpActNames(f).join(', ') || 'none'}`;
      return { ...queryXdp(ifindex, ifname), warnings: [kept(why)] };
    }
  }
  detachXdp(ifindex, ifname, current);
  const ret = lib.bpf_xdp_attach(ifindex, progFd, modeFlag(want) | XDP_FLAGS.UPDATE_IF_NOEXIST, null) as number;
  if (ret >= 0) return { ...queryXdp(ifindex, ifname), warnings: [] };
  let refused: KernelError;
  try {
    check(`attach xdp to ${ifname} in ${want} mode`, ret);
    throw new KernelError(`attach xdp to ${ifname} in ${want} mode`, 22);
  } catch (e) {
    refused = e as KernelError;
  }
  const back = lib.bpf_xdp_attach(
    ifindex,
    progFd,
    modeFlag(current.mode) | XDP_FLAGS.UPDATE_IF_NOEXIST,
    null,
  ) as number;
  if (back < 0) {
    try {
      check(`put our program back on ${ifname} in ${current.mode} mode`, back);
    } catch (e) {
      throw new KernelError(
        `attach xdp to ${ifname} in ${want} mode`,
        refused.errno,
        [],
        `${errnoText(refused.errno)} (${refused.code}); putting our program back in ${current.mode} mode failed too: ${(e as Error).message}`,
      );
    }
  }
  return { ...queryXdp(ifindex, ifname), warnings: [kept(refused.message)] };
}

function replace(
  ifindex: number,
  ifname: string,
  progFd: number,
  mode: 'native' | 'generic',
  oldId: number,
  borrowed?: number,
): void {
  const oldFd = borrowed ?? check(`open xdp program ${oldId} on ${ifname}`, lib.bpf_prog_get_fd_by_id(oldId) as number);
  try {
    const opts = { sz: sizeOf(XdpAttachOpts), old_prog_fd: oldFd };
    check(
      `replace xdp program on ${ifname}`,
      lib.bpf_xdp_attach(ifindex, progFd, modeFlag(mode) | XDP_FLAGS.REPLACE, opts) as number,
    );
  } finally {
    if (borrowed === undefined) closeFd(oldFd);
  }
}

/** Detach whatever XDP program is attached (in the mode it is attached in). */
export function detachXdp(ifindex: number, ifname: string, current = queryXdp(ifindex, ifname)): void {
  if (current.mode === 'none') return;
  const flags = current.mode === 'native' ? XDP_FLAGS.DRV_MODE : current.mode === 'generic' ? XDP_FLAGS.SKB_MODE : 0;
  check(`detach xdp from ${ifname}`, lib.bpf_xdp_detach(ifindex, flags, null) as number);
}
