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
  nsenter: "veth peers in network namespaces without a name (a container's) cannot be inspected or prepared",
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
