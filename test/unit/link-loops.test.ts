/**
 * plan-links.ts forwardingLoop: which link sets would forward frames in a loop forever, given which
 * interfaces are veth pairs within the namespace. Pure: the veth peers are given as a table.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { LinkSpec } from '../../src/server/core/model.js';
import { forwardingLoop } from '../../src/server/core/plan-links.js';

const link = (a: string, b: string, direction: 'both' | 'a_to_b' = 'both') => ({ a, b, direction }) as LinkSpec;
const set = (...links: LinkSpec[]) => new Map(links.map((l) => [`${l.a}|${l.b}`, l]));
/** Veth pairs within the namespace: each name's peer. */
const peers = (...pairs: [string, string][]) => {
  const m = new Map<string, string>();
  for (const [x, y] of pairs) m.set(x, y).set(y, x);
  return (n: string) => m.get(n);
};

describe('forwarding loops of a link set', () => {
  it('a link between the two ends of one veth pair loops (each frame comes back on the other end)', () => {
    const l = link('x0', 'x1');
    const loop = forwardingLoop(set(l), peers(['x0', 'x1']));
    assert.equal(loop?.link, l);
    assert.equal(loop?.path, 'x0 -> x1 (whose veth peer is x0): back to x0');
  });

  it('one-way links through two veth pairs that close a circle loop; the last link on it is named', () => {
    const first = link('p1', 'q0', 'a_to_b');
    const second = link('q1', 'p0', 'a_to_b');
    const loop = forwardingLoop(set(first, second), peers(['p0', 'p1'], ['q0', 'q1']));
    assert.equal(loop?.link, second);
    assert.match(loop!.path, /p1 -> q0 \(whose veth peer is q1\), then q1 -> p0 \(whose veth peer is p1\): back to p1/);
    assert.equal(forwardingLoop(set(first), peers(['p0', 'p1'], ['q0', 'q1'])), undefined, 'one of them alone ends');
  });

  it('no loop where the chain leaves the namespace or reaches an interface without a link', () => {
    // Ordinary cross-connects: eth0 <-> tap0, veths whose peers are in containers (not in this namespace).
    assert.equal(
      forwardingLoop(set(link('eth0', 'tap0'), link('v0', 'v1')), () => undefined),
      undefined,
    );
    // A chain through a veth pair that ends: a -> x0, x1 -> b, b's peer is elsewhere.
    assert.equal(
      forwardingLoop(set(link('a', 'x0', 'a_to_b'), link('x1', 'b', 'a_to_b')), peers(['x0', 'x1'])),
      undefined,
    );
  });

  it('a reflector (a link of an interface to itself) loops only when its veth peer forwards back to it', () => {
    assert.equal(
      forwardingLoop(set(link('r', 'r')), () => undefined),
      undefined,
      'peer in another namespace',
    );
    assert.equal(forwardingLoop(set(link('r', 'r')), peers(['r', 'rp'])), undefined, 'the peer does not forward');
    const back = link('rp', 'r', 'a_to_b');
    assert.equal(forwardingLoop(set(link('r', 'r'), back), peers(['r', 'rp']))?.link, back);
  });

  it('a loop not through the first ingress is found too', () => {
    const loop = forwardingLoop(
      set(link('a', 'x0', 'a_to_b'), link('x1', 'y0', 'a_to_b'), link('y1', 'x0', 'a_to_b')),
      peers(['x0', 'x1'], ['y0', 'y1']),
    );
    assert.match(loop!.path, /: back to x1$/);
  });

  it("through a bridge: two links' egress peers ports of one bridge (it forwards every frame out of the other)", () => {
    const ports: Record<string, string[]> = { br9: ['sap', 'sbp'] };
    const host = {
      uppersOf: (n: string) => (ports.br9.includes(n) ? [{ name: 'br9', kind: 'bridge', via: 'master' as const }] : []),
      portsOf: (b: string) => ports[b] ?? [],
    };
    const l = link('sa', 'sb');
    const loop = forwardingLoop(set(l), peers(['sa', 'sap'], ['sb', 'sbp']), host);
    assert.equal(loop?.link, l);
    assert.equal(
      loop?.path,
      'sa -> sb (whose veth peer is sbp, a port of bridge br9, which forwards frames out of its port sap, whose ' +
        'veth peer is sa): back to sa',
    );
    // One way only: sa -> sb, and what comes back on sa is sent to sb again.
    assert.ok(forwardingLoop(set(link('sa', 'sb', 'a_to_b')), peers(['sa', 'sap'], ['sb', 'sbp']), host));
    // Not read (no ports): as before; one peer elsewhere: no loop.
    assert.equal(forwardingLoop(set(l), peers(['sa', 'sap'], ['sb', 'sbp'])), undefined);
    assert.equal(forwardingLoop(set(l), peers(['sb', 'sbp']), host), undefined);
    // A reflector on a bridge port's peer: the bridge never sends a frame back out of the port it came in on.
    assert.equal(forwardingLoop(set(link('sa', 'sa')), peers(['sa', 'sap'], ['sb', 'sbp']), host), undefined);
  });
});
