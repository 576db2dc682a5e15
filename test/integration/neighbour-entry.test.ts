/**
 * netdev.neighbourEntry, the one-entry read behind Dataplane.neighbourMac (the reader a dataplane without the
 * batched neighbourMacs falls back to), against a real neighbour table: an entry set `nud noarp` (or one the
 * kernel makes on an egress switched to NOARP) is one the kernel holds and never asks. It used to be read with
 * `ip neigh show`, which hides NOARP entries: such an entry was taken for none. It now comes from the same
 * RTM_GETNEIGH dump as the table the reconciler reads, NOARP entries included. Real veth, real entries.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { KernelError } from '../../src/server/dataplane/errors.js';
import { neighbourEntry } from '../../src/server/dataplane/netdev.js';
import { kernelOnly, runId, sh } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';

describe('neighbourEntry: what the kernel holds, NOARP entries too', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let h: Host;
  const mac = (last: string) => `02:16:3e:${id.slice(0, 2)}:${id.slice(2, 4)}:${last}`;

  before(() => {
    h = topo.addHost('n', '198.18.61.1/24');
    sh('ip', ['addr', 'add', '198.18.61.254/24', 'dev', h.hostIf]);
  });
  after(() => topo.destroy());

  it('reads NOARP, PERMANENT and REACHABLE entries as the kernel holds them, and none as none', async () => {
    const entry = (ip: string, m: string, nud: string) =>
      sh('ip', ['neigh', 'replace', ip, 'lladdr', m, 'dev', h.hostIf, 'nud', nud]);
    entry('198.18.61.2', mac('02'), 'noarp');
    entry('198.18.61.3', mac('03'), 'permanent');
    entry('198.18.61.4', mac('04'), 'reachable');
    // The premise: `ip neigh show` does not list the NOARP entry, which the kernel holds.
    assert.doesNotMatch(sh('ip', ['neigh', 'show', 'dev', h.hostIf]), /198\.18\.61\.2 /);
    assert.match(
      sh('ip', ['neigh', 'show', 'dev', h.hostIf, 'nud', 'noarp']),
      new RegExp(`198\\.18\\.61\\.2 lladdr ${mac('02')}`),
    );

    const noarp = await neighbourEntry('198.18.61.2', h.hostIf);
    assert.deepEqual([noarp.mac, noarp.states], [mac('02'), ['NOARP']]);
    const permanent = await neighbourEntry('198.18.61.3', h.hostIf);
    assert.deepEqual([permanent.mac, permanent.states], [mac('03'), ['PERMANENT']]);
    const reachable = await neighbourEntry('198.18.61.4', h.hostIf);
    assert.deepEqual([reachable.mac, reachable.states], [mac('04'), ['REACHABLE']]);
    assert.equal(typeof reachable.confirmed, 'number');
    const none = await neighbourEntry('198.18.61.5', h.hostIf);
    assert.deepEqual([none.mac, none.states], [undefined, []]);
    await assert.rejects(neighbourEntry('198.18.61.2', `x${id}nope`), (e) => {
      assert.ok(e instanceof KernelError, String(e));
      assert.equal(e.kind, 'not-found');
      return true;
    });
  });
});
