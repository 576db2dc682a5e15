/**
 * The nftables base chains hooked on a device's ingress, read from the kernel over NETLINK_NETFILTER
 * (NFNL_SUBSYS_NFTABLES): one NFT_MSG_GETCHAIN dump of every family, kept are the chains of family `netdev`
 * with hook `ingress` (NF_NETDEV_INGRESS) and of family `inet` with hook `ingress` (NF_INET_INGRESS, Linux >= 5.10,
 * IPv4 and IPv6 only) whose device list (NFTA_HOOK_DEV, NFTA_HOOK_DEVS; a name or a prefix, `eth*`) names the
 * device; then, for those only, each one's table flags (NFT_MSG_GETTABLE: a dormant table's chains are not
 * registered with the kernel) and its rules (NFT_MSG_GETRULE dump filtered by table and chain: counted, not
 * evaluated). The daemon writes nothing in nftables: every chain found is another tool's.
 *
 * Where they run on what is redirected into a veth: the frame reaches the peer's receive path (native:
 * veth_xdp_xmit into the peer's ring, then netif_receive_skb; generic: veth_xmit, __dev_forward_skb), where
 * __netif_receive_skb_core runs tcx and the tc ingress qdisc (sch_handle_ingress, tc-filters.ts) and then the
 * netfilter ingress hook (nf_ingress: these chains) before the stack. A chain whose verdict is drop drops it while
 * every counter on this side says redirected. An `egress` hook on the peer (NF_NETDEV_EGRESS, nf_hook_egress in
 * __dev_queue_xmit) sees only what the peer itself transmits, never what it receives: not read. Nor is the egress
 * of the device we redirect into: a redirect transmits with ndo_xdp_xmit (native) or netdev_start_xmit
 * (generic_xdp_tx), past __dev_queue_xmit and its egress hook. Flowtables (also hooked at ingress) only offload
 * forwarded flows, never a local delivery: not read.
 *
 * nfnetlink takes no target namespace id: a device in another namespace is read from inside it (tc-filters.ts
 * withNetns; the dump sockets are opened there). Nothing here changes anything, and nothing is forked.
 */
import { nlAttr, nlAttrs, nlDump } from './netlink.js';
import { KernelError } from './errors.js';
import type { PeerNftChain } from '../core/dataplane.js';

/** <linux/netlink.h> */
const NETLINK_NETFILTER = 12;
// <linux/netfilter/nfnetlink.h>, <linux/netfilter/nf_tables.h>
const NFNL_SUBSYS_NFTABLES = 10;
const NFT_MSG_GETTABLE = 1;
const NFT_MSG_GETCHAIN = 4;
const NFT_MSG_GETRULE = 7;
const NFTA_TABLE_NAME = 1;
const NFTA_TABLE_FLAGS = 2;
const NFT_TABLE_F_DORMANT = 1;
const NFTA_CHAIN_TABLE = 1;
const NFTA_CHAIN_NAME = 3;
const NFTA_CHAIN_HOOK = 4;
const NFTA_CHAIN_POLICY = 5;
const NFTA_HOOK_HOOKNUM = 1;
const NFTA_HOOK_PRIORITY = 2;
const NFTA_HOOK_DEV = 3;
const NFTA_HOOK_DEVS = 4;
const NFTA_DEVICE_NAME = 1;
/** A wildcard (`eth*`, Linux >= 6.17; 6.16: an NFTA_DEVICE_NAME without its NUL): the names that start with it. */
const NFTA_DEVICE_PREFIX = 2;
const NFTA_RULE_TABLE = 1;
const NFTA_RULE_CHAIN = 2;
// <linux/netfilter.h>
const NFPROTO_UNSPEC = 0;
const NFPROTO_INET = 1;
const NFPROTO_NETDEV = 5;
const NF_NETDEV_INGRESS = 0;
const NF_INET_INGRESS = 5;
const NF_DROP = 0;
const NF_ACCEPT = 1;

const FAMILY_NAME: Record<number, string> = { [NFPROTO_INET]: 'inet', [NFPROTO_NETDEV]: 'netdev' };

/** One nftables base chain hooked on a device's ingress, as read (the core's type: the shape it reports). */
export type NftChain = PeerNftChain;

/** An nfnetlink message header: nfgenmsg (family, version NFNETLINK_V0, res_id 0). */
function nfgen(family: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt8(family, 0);
  return b;
}

const str = (b: Buffer | undefined): string | undefined => b?.toString('utf8').replace(/\0.*$/s, '');
const nulStr = (s: string): Buffer => Buffer.from(`${s}\0`, 'utf8');

/** Whether the hook's device list (NFTA_HOOK_DEV, or NFTA_HOOK_DEVS: names and prefixes) takes `dev`. */
function hooksDevice(hook: Map<number, Buffer>, dev: string): boolean {
  if (str(hook.get(NFTA_HOOK_DEV)) === dev) return true;
  const devs = hook.get(NFTA_HOOK_DEVS);
  if (!devs) return false;
  // Several attributes of one type: walked here (nlAttrs keeps the last of each type).
  for (let i = 0; i + 4 <= devs.length;) {
    const len = devs.readUInt16LE(i);
    if (len < 4) break;
    const type = devs.readUInt16LE(i + 2) & 0x3fff;
    const payload = devs.subarray(i + 4, i + len);
    const name = str(payload) ?? '';
    // Linux 6.16 said a wildcard as a name without its terminating NUL, later ones as NFTA_DEVICE_PREFIX.
    const prefix = type === NFTA_DEVICE_PREFIX || (type === NFTA_DEVICE_NAME && !payload.includes(0));
    if (type === NFTA_DEVICE_NAME && !prefix && name === dev) return true;
    if (prefix && dev.startsWith(name)) return true;
    i += (len + 3) & ~3;
  }
  return false;
}

/**
 * The nftables chains hooked on the ingress of the device named `dev` in the calling thread's namespace (see the
 * module's comment), in the order the kernel lists them; those of a dormant table left out. [] when this kernel
 * has no nf_tables (the subsystem unknown: EOPNOTSUPP, EPROTONOSUPPORT). Throws KernelError on another refusal.
 */
export function nftIngressChains(dev: string): NftChain[] {
  const what = `read the nftables chains hooked on ${dev}`;
  let msgs: Buffer[];
  try {
    msgs = nlDump(
      NETLINK_NETFILTER,
      (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN,
      nfgen(NFPROTO_UNSPEC),
      Buffer.alloc(0),
      what,
    );
  } catch (e) {
    // No nf_tables in this kernel: no chain can be hooked anywhere.
    if (e instanceof KernelError && (e.errno === 95 || e.errno === 93)) return [];
    throw e;
  }
  const found: (NftChain & { familyId: number })[] = [];
  for (const m of msgs) {
    if (m.length < 4) continue;
    const familyId = m.readUInt8(0);
    const a = nlAttrs(m, 4);
    const hookAttr = a.get(NFTA_CHAIN_HOOK);
    if (!hookAttr) continue; // not a base chain
    const hook = nlAttrs(hookAttr);
    const num = hook.get(NFTA_HOOK_HOOKNUM)?.readUInt32BE(0);
    const ingress =
      (familyId === NFPROTO_NETDEV && num === NF_NETDEV_INGRESS) ||
      (familyId === NFPROTO_INET && num === NF_INET_INGRESS);
    if (!ingress || !hooksDevice(hook, dev)) continue;
    const p = a.get(NFTA_CHAIN_POLICY)?.readUInt32BE(0);
    found.push({
      familyId,
      family: FAMILY_NAME[familyId],
      table: str(a.get(NFTA_CHAIN_TABLE)) ?? '',
      chain: str(a.get(NFTA_CHAIN_NAME)) ?? '',
      priority: hook.get(NFTA_HOOK_PRIORITY)?.readInt32BE(0) ?? 0,
      policy: p === NF_ACCEPT ? 'accept' : p === NF_DROP ? 'drop' : p === undefined ? 'not read' : `${p}`,
    });
  }
  if (!found.length) return [];
  // A dormant table's chains are not registered with the kernel's hooks: they see nothing.
  const dormant = new Set<string>();
  for (const m of nlDump(
    NETLINK_NETFILTER,
    (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
    nfgen(NFPROTO_UNSPEC),
    Buffer.alloc(0),
    `read the nftables tables`,
  )) {
    if (m.length < 4) continue;
    const a = nlAttrs(m, 4);
    const flags = a.get(NFTA_TABLE_FLAGS)?.readUInt32BE(0) ?? 0;
    if (flags & NFT_TABLE_F_DORMANT) dormant.add(`${m.readUInt8(0)}/${str(a.get(NFTA_TABLE_NAME))}`);
  }
  const out: NftChain[] = [];
  for (const { familyId, ...c } of found) {
    if (dormant.has(`${familyId}/${c.table}`)) continue;
    let rules: number | undefined;
    try {
      rules = nlDump(
        NETLINK_NETFILTER,
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE,
        nfgen(familyId),
        Buffer.concat([nlAttr(NFTA_RULE_TABLE, nulStr(c.table)), nlAttr(NFTA_RULE_CHAIN, nulStr(c.chain))]),
        `read the rules of nftables chain ${c.family} ${c.table} ${c.chain}`,
      ).length;
    } catch {
      // Gone meanwhile, or refused: the count is not said.
    }
    out.push(rules === undefined ? c : { ...c, rules });
  }
  return out;
}

/**
 * Whether a chain can change what reaches the stack, from what was read: any rule may (its expressions are not
 * evaluated here), and so does a policy other than accept; an accept policy with no rule passes every frame.
 */
export function nftChainMayDrop(c: NftChain): boolean {
  return c.policy !== 'accept' || c.rules !== 0;
}
