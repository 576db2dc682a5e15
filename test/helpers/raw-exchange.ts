/**
 * A receiver and a sender script (Python, packet sockets) in two namespaces: the receiver starts first
 * and prints READY, then the sender runs, then the receiver's whole output is returned when it exits.
 * Used for frames no socket API sends as-is (jumbo frames, VLAN tags).
 */
import { spawn, type ChildProcess } from 'node:child_process';

import type { Topology } from './topology.js';

/**
 * Run `rxScript` in `rxNetns` until it prints READY, then `txScript` in the topology's `txRole`;
 * resolves with what the receiver printed once it exits (rejects if it exits before READY).
 * The receiver is pushed on `procs` so that the test's cleanup kills it if the test fails.
 */
export async function rawExchange(
  topo: Topology,
  procs: ChildProcess[],
  rxNetns: string,
  rxScript: string,
  txRole: string,
  txScript: string,
): Promise<string> {
  const rx = spawn('nsenter', [`--net=/run/netns/${rxNetns}`, 'python3', '-c', rxScript]);
  procs.push(rx);
  let out = '';
  rx.stdout.on('data', (x) => (out += x));
  rx.stderr.on('data', (x) => (out += x));
  const exited = new Promise<void>((resolve) => rx.on('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    const t = setInterval(() => out.includes('READY') && (clearInterval(t), resolve()), 20);
    rx.on('exit', () => (clearInterval(t), out.includes('READY') ? resolve() : reject(new Error(out))));
  });
  topo.exec(txRole, 'python3', ['-c', txScript]);
  await exited;
  return out;
}
