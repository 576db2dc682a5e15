/**
 * Controller.checkConfig, with which the config watcher re-evaluates a refused file:
 * it runs the checks applyConfig runs before writing anything (validation, then the preflight's kernel
 * preconditions), taking for an ingress not attached yet the mode an `--xdp-mode auto` attach would choose,
 * and says what the host shows of the file's interfaces, so that a refusal for a veth peer without NAPI is
 * seen to end when the peer gets it. Before: checkConfig ran only the validation, whose verdict never changes
 * with the peer. And an egress without carrier (a veth whose peer is down) is waited for, not refused.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Controller } from '../../src/server/core/controller.js';
import type { LinkState, RedirectTarget } from '../../src/server/core/dataplane.js';
import { MODEL_CAPACITY, ModelDataplane } from '../helpers/model-dataplane.js';

/** The model's interfaces as veths: up, with carrier unless told, taking native XDP, each peer as told. */
class VethModel extends ModelDataplane {
  readonly peers = new Map<string, RedirectTarget>();
  readonly noCarrier = new Set<string>();
  override linkState(n: string): LinkState | undefined {
    return this.ifs.has(n) ? { up: true, carrier: !this.noCarrier.has(n), mtu: 1500 } : undefined;
  }
  override nativeXdp(n: string) {
    return this.ifs.has(n) ? { supported: true, features: 'basic redirect ndo-xmit' } : undefined;
  }
  override upperDevices(): string[] {
    return [];
  }
  override async redirectTarget(n = ''): Promise<RedirectTarget> {
    return this.peers.get(n) ?? { ok: true };
  }
}

const file = { rules: [], links: [{ a: 'a', b: 'b', direction: 'both' as const }] };

describe('Controller.checkConfig: the checks the apply runs, and the host', () => {
  it('a veth peer without NAPI behind an ingress not attached yet (auto): refused, until the peer has it', async () => {
    const dp = new VethModel(MODEL_CAPACITY, ['a', 'b']);
    const c = new Controller(dp, { mode: 'auto', fixVethPeers: false });
    dp.peers.set('b', { ok: false, detail: 'its peer eth0 has neither an XDP program nor GRO' });
    const refused = await c.checkConfig(file);
    assert.match(refused.refusal ?? '', /^links\[0\]: its peer eth0 has neither an XDP program nor GRO$/);
    dp.peers.delete('b');
    const passes = await c.checkConfig(file);
    assert.equal(passes.refusal, undefined);
    assert.equal(passes.host, refused.host, 'the interfaces themselves did not change');
    assert.deepEqual(dp.snapshot().xcLinks, [], 'nothing written');
  });

  it('fixable with --fix-veth-peers: passes, as the apply would (nothing repaired by the check)', async () => {
    const dp = new VethModel(MODEL_CAPACITY, ['a', 'b']);
    const c = new Controller(dp, { mode: 'auto', fixVethPeers: true });
    dp.peers.set('b', { ok: false, fixable: true, detail: 'GRO off' });
    assert.equal((await c.checkConfig(file)).refusal, undefined);
  });

  it('the host it saw changes with an interface (carrier, a new device)', async () => {
    const dp = new VethModel(MODEL_CAPACITY, ['a', 'b']);
    const c = new Controller(dp, { mode: 'auto', fixVethPeers: true });
    const before = (await c.checkConfig(file)).host;
    dp.noCarrier.add('b');
    const after = (await c.checkConfig(file)).host;
    assert.notEqual(after, before);
  });

  it('a link into a veth whose peer is down (no carrier) is written, not refused: it waits', async () => {
    const dp = new VethModel(MODEL_CAPACITY, ['a', 'b']);
    const c = new Controller(dp, { mode: 'native', fixVethPeers: true });
    dp.noCarrier.add('b');
    dp.peers.set('b', {
      ok: false,
      waitsForPeer: true,
      detail: 'native XDP redirects into b would be dropped: its peer eth0 is down',
    });
    assert.equal((await c.checkConfig(file)).refusal, undefined);
    await c.connect({ a: 'a', b: 'b', direction: 'a-to-b' });
    assert.equal(dp.snapshot().xcLinks.length, 1, 'the direction is in the datapath');
    const l = c.listLinks().find((x) => x.a === 'a')!;
    assert.equal(l.active[0], false);
    assert.ok(
      l.warnings.some((w) => w.includes('egress b has no carrier')),
      l.warnings.join('; '),
    );
  });

  it('an egress without carrier that cannot take native redirects for good (not a veth peer down): refused', async () => {
    const dp = new VethModel(MODEL_CAPACITY, ['a', 'b']);
    const c = new Controller(dp, { mode: 'native', fixVethPeers: true });
    dp.noCarrier.add('b');
    dp.peers.set('b', { ok: false, detail: 'b (bridge) cannot transmit native XDP redirects' });
    assert.match((await c.checkConfig(file)).refusal ?? '', /^links\[0\]: b \(bridge\) cannot transmit/);
    await assert.rejects(c.connect({ a: 'a', b: 'b', direction: 'a-to-b' }), /b \(bridge\) cannot transmit/);
    assert.deepEqual(dp.snapshot().xcLinks, [], 'nothing written');
  });
});
