/**
 * The programs xdpctld runs to observe and prepare the host (`ip`, `ethtool`, `nsenter`), and what cannot be
 * observed without each: a PATH without one used to start silently, and each read that needed it failed on
 * its own later ("spawn ethtool ENOENT" in one status or another, or nothing at all). Checked once at start
 * (PATH does not change under the daemon); main.ts logs the missing ones in one line, and GetStatus lists
 * them among the datapath's warnings (dataplane/adapter.ts). Reads PATH only; starts nothing.
 */
import { which } from './children.js';

/** Each program the daemon runs, with what cannot be observed or done without it. */
export const HOST_TOOLS: Readonly<Record<'ip' | 'ethtool' | 'nsenter', string>> = {
  ip:
    "link, neighbour and route changes are not heard as they happen (ip monitor: only the reconciler's " +
    "periodic pass sees them), and veth peers in other network namespaces and a veth's transmit drops " +
    'cannot be read',
  ethtool:
    'veth GRO/offload state cannot be read or changed (GRO on a veth peer for native redirects, the offloads ' +
    "XDP needs off on an ingress), nor a veth's XDP transmit counters",
  nsenter:
    "nothing can be read or changed from inside another network namespace, named (/run/netns) or not (a container's): " +
    "there a veth peer's GRO and offloads cannot be read or changed (ethtool runs inside it), so a native-mode " +
    "backend egress whose peer is there cannot be verified nor GRO switched on for it, an ingress's peer there " +
    'cannot have its offloads checked or turned off (nor turned on again), and our XDP program cannot be detached ' +
    'from a device moved into another namespace',
};

/** One missing program, as said at start and in GetStatus. */
export interface MissingTool {
  name: string;
  /** "<name> not found in PATH: <what cannot be observed without it>". */
  text: string;
}

let found: readonly MissingTool[] | undefined;

/** The programs of {@link HOST_TOOLS} not found in PATH (an executable file in one of its directories), checked once. */
export function missingHostTools(): readonly MissingTool[] {
  found ??= (Object.keys(HOST_TOOLS) as (keyof typeof HOST_TOOLS)[])
    .filter((name) => which(name) === undefined)
    .map((name) => ({ name, text: `${name} not found in PATH: ${HOST_TOOLS[name]}` }));
  return found;
}
