/**
 * Host device layouts of the forwarding-loop tests (link-loops, link-loop-host, rule-loop-host,
 * restart-kept-out): a bridge and veth pairs made in the test's own namespace under names the caller makes
 * unique, and the bounded "old verdict" those tests print when a loop was not refused (one broadcast frame,
 * what comes back in a bounded time).
 */
import { sh, shQuiet, sleep } from './env.js';
import { rawUdpFrames } from './udp.js';

/** A bridge, veth pairs and which of their ends are ports of the bridge. */
export interface BridgeLayout {
  bridge: string;
  /** The bridge's own MAC address (set before any port joins). */
  bridgeMac?: string;
  /** Veth pairs `[end, peer]`, or `[end, peer, peer's MAC address]`. */
  pairs: ReadonlyArray<readonly [string, string, string?]>;
  /** Devices made ports of the bridge (ends of the pairs). */
  ports: readonly string[];
  /**
   * Settings of these devices only, never a host default: `ipv6Off` — IPv6 disabled on them, so they send no
   * frames of their own (DAD, router solicitations) and a count of frames is the test's; `forwardingOff` —
   * IPv4 forwarding off on them (the host does not route what a loop delivers to them).
   */
  ipv6Off?: boolean;
  forwardingOff?: boolean;
}

/**
 * Makes the bridge and the pairs, enslaves the ports and sets every device up. Returns the devices to delete,
 * the bridge first (a loop left running would starve the machine), one end per pair (the kernel deletes its
 * peer with it); pass them to {@link deleteLinks}. If a step fails, what was made is deleted and the error thrown.
 */
export function makeBridgeLayout(l: BridgeLayout): string[] {
  const made: string[] = [];
  try {
    sh('ip', ['link', 'add', l.bridge, 'type', 'bridge']);
    made.push(l.bridge);
    if (l.bridgeMac) sh('ip', ['link', 'set', l.bridge, 'address', l.bridgeMac]);
    for (const [end, peer, peerMac] of l.pairs) {
      sh('ip', ['link', 'add', end, 'type', 'veth', 'peer', 'name', peer, ...(peerMac ? ['address', peerMac] : [])]);
      made.push(end);
    }
    const all = [l.bridge, ...l.pairs.flatMap(([end, peer]) => [end, peer])];
    if (l.ipv6Off) for (const x of all) shQuiet('sysctl', ['-qw', `net.ipv6.conf.${x}.disable_ipv6=1`]);
    for (const p of l.ports) sh('ip', ['link', 'set', p, 'master', l.bridge]);
    for (const x of all) {
      sh('ip', ['link', 'set', x, 'up']);
      if (l.forwardingOff) sh('sysctl', ['-qw', `net.ipv4.conf.${x}.forwarding=0`]);
    }
    return made;
  } catch (e) {
    deleteLinks(made);
    throw e;
  }
}

/** Deletes the devices named, in order, ignoring those already gone. */
export function deleteLinks(names: readonly string[]): void {
  for (const n of names) shQuiet('ip', ['link', 'del', n]);
}

/**
 * One broadcast UDP frame (from `srcMac`/`srcIp`, to port 9) sent out of `from`, the veth peer of `into`:
 * the number of frames `into` receives (its rx_packets) in the `ms` milliseconds after. A loop's size, for the
 * message of a test that finds one was not refused or not found; the caller takes the loop down right after.
 */
export async function framesFromOneBroadcast(
  into: string,
  from: string,
  srcMac: string,
  srcIp: string,
  ms: number,
): Promise<number> {
  const rx = () => Number(sh('cat', [`/sys/class/net/${into}/statistics/rx_packets`]));
  const r0 = rx();
  sh('python3', ['-c', rawUdpFrames(from, srcMac, 'ff:ff:ff:ff:ff:ff', srcIp, 9, 1)]);
  await sleep(ms);
  return rx() - r0;
}

/**
 * The layout of a loop the host makes through an ingress bridge (rule-loop-host, restart-kept-out): bridge `br`
 * (MAC `brMac`), the pair ga-gb whose gb holds br's MAC and is not a port (a rule's backend {br's address, brMac}
 * out of ga is accepted; the host closes the loop by making gb a port of br), and the pair gc-gd whose gc is a
 * port of br (frames sent out of gd enter br). Devices `x<id>ga` ... `x<id>br`, forwarding off on them.
 */
export function hostLoopBridge(id: string, brMac: string) {
  const [ga, gb, gc, gd, br] = ['ga', 'gb', 'gc', 'gd', 'br'].map((x) => `x${id}${x}`);
  const made = makeBridgeLayout({
    bridge: br,
    bridgeMac: brMac,
    pairs: [
      [ga, gb, brMac],
      [gc, gd],
    ],
    ports: [gc],
    forwardingOff: true,
  });
  return { ga, gb, gc, gd, br, made };
}

/**
 * The layout of a link the host makes into a loop (link-loop-host, restart-kept-out): the pairs sa-sap and
 * sb-sbp and bridge `br` with sap a port (the host closes the loop sa -> sb -> sbp -> br -> sap -> sa by making
 * sbp a port too), IPv6 off on them so that the frames counted are the test's. Returns the devices to delete.
 */
export function hostLoopLink(sa: string, sap: string, sb: string, sbp: string, br: string): string[] {
  return makeBridgeLayout({
    bridge: br,
    pairs: [
      [sa, sap],
      [sb, sbp],
    ],
    ports: [sap],
    ipv6Off: true,
  });
}
