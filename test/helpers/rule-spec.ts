/**
 * RuleSpecs (core/model.ts) for unit tests over a fake or modelled dataplane: UDP from ingress in0, checksums
 * updated, no labels. The backends of {@link twoBackends} sit behind veths b0 and b1 with the static MACs that
 * {@link confirmPeers} gives their veth peers: what makes such a rule ACTIVE over a ModelDataplane.
 */
import type { RuleSpec } from '../../src/server/core/model.js';
import type { ModelDataplane } from './model-dataplane.js';

/** A UDP rule `name` on `port` from in0 to `backends`, checksums updated, no labels; `extra` overrides any field. */
export const udpSpec = (
  name: string,
  port: number,
  backends: RuleSpec['backends'],
  extra: Partial<RuleSpec> = {},
): RuleSpec => ({
  name,
  protocol: 'udp',
  port,
  destination: '',
  sourcePrefixes: [],
  ingressInterfaces: ['in0'],
  backends,
  udpChecksum: 'update',
  labels: {},
  ...extra,
});

/** Two backends of a rule on `port`: 10.0.P.1 on b0 (weight 1) and 10.0.P.2 on b1 (weight 3), P = port % 250. */
export const twoBackends = (port: number): RuleSpec['backends'] => [
  { ip: `10.0.${port % 250}.1`, mac: '02:00:00:00:01:01', interface: 'b0', weight: 1 },
  { ip: `10.0.${port % 250}.2`, mac: '02:00:00:00:01:02', interface: 'b1', weight: 3 },
];

/** The backends' hosts behind veth peers of ours (b0p, b1p) with their static MACs: confirmed, every rule ACTIVE. */
export function confirmPeers(dp: ModelDataplane): void {
  dp.vethPeers.set('b0', { name: 'b0p', mac: '02:00:00:00:01:01', takesOthers: false });
  dp.vethPeers.set('b1', { name: 'b1p', mac: '02:00:00:00:01:02', takesOthers: false });
}
