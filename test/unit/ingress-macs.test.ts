/**
 * ingress_macs sync (dataplane/ingress-macs.ts): the map ends up holding exactly what is wanted, entries of
 * ingresses no longer given are removed, and what does not fit the map's entries is returned by ingress (the
 * adapter says it in the interface's warnings: frames to those MACs are passed, counted not_for_us).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { BpfMap } from '../../src/server/dataplane/bpf-map.js';
import { macKey, type MacKey } from '../../src/server/dataplane/codec.js';
import { isUnicastMac, syncMacMap } from '../../src/server/dataplane/ingress-macs.js';

/** A map of the BpfMap calls syncMacMap makes, keyed as the kernel would (the encoded key). */
function fakeMap(initial: MacKey[] = []) {
  const m = new Map<string, MacKey>();
  const key = (k: MacKey) => macKey.encode(k).toString('hex');
  for (const k of initial) m.set(key(k), k);
  const writes = { put: 0, del: 0 };
  const map = {
    entriesBatch: () => [...m.values()].map((k) => [k, 1] as [MacKey, number]),
    put: (k: MacKey) => {
      writes.put++;
      m.set(key(k), k);
    },
    delete: (k: MacKey) => {
      writes.del++;
      return m.delete(key(k));
    },
  } as unknown as BpfMap<MacKey, number>;
  const held = () => [...m.values()].map((k) => `${k.ifindex}/${k.mac}`).sort();
  return { map, held, writes };
}

describe('ingress_macs sync', () => {
  it('writes what is wanted, removes what is not, leaves what is there', () => {
    const f = fakeMap([
      { ifindex: 7, mac: '00:00:5e:00:01:32' },
      { ifindex: 9, mac: '02:00:00:00:00:09' },
    ]);
    const left = syncMacMap(f.map, new Map([[7, new Set(['00:00:5e:00:01:32', '02:32:bb:00:00:01'])]]), 4096);
    assert.deepEqual(left, new Map());
    assert.deepEqual(f.held(), ['7/00:00:5e:00:01:32', '7/02:32:bb:00:00:01']);
    assert.deepEqual(f.writes, { put: 1, del: 1 });
  });

  it('returns, by ingress, the MACs that do not fit', () => {
    const f = fakeMap();
    const left = syncMacMap(
      f.map,
      new Map([
        [3, new Set(['02:00:00:00:00:01', '02:00:00:00:00:02'])],
        [4, new Set(['02:00:00:00:00:03'])],
      ]),
      2,
    );
    assert.deepEqual(left, new Map([[4, ['02:00:00:00:00:03']]]));
    assert.deepEqual(f.held(), ['3/02:00:00:00:00:01', '3/02:00:00:00:00:02']);
  });

  it('the key codec round-trips a MAC', () => {
    const k = { ifindex: 70033, mac: '00:00:5e:00:01:fe' };
    assert.equal(macKey.encode(k).toString('hex'), '91110100' + '00005e0001fe' + '0000');
    assert.deepEqual(macKey.decode(macKey.encode(k)), k);
  });

  it('only unicast MACs are taken', () => {
    assert.equal(isUnicastMac('00:00:5e:00:01:32'), true);
    assert.equal(isUnicastMac('33:33:00:00:00:01'), false);
    assert.equal(isUnicastMac('01:00:5e:00:00:01'), false);
    assert.equal(isUnicastMac('00:00:00:00:00:00'), false);
  });
});
