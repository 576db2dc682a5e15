/**
 * The reconciler reads the IPv4 neighbour table with one RTM_GETNEIGH dump (netdev.ts neighbourTable)
 * instead of forking `ip -j -4 -s neigh show` at every pass. The dump must say what `ip` says: for entries
 * written by hand in every NUD state `ip` accepts (and one NOARP-only entry, which `ip neigh show` leaves
 * out and the dump keeps, as `ip neigh show nud noarp` shows it: an entry the kernel never asks is there, not
 * absent), the same keys, MACs (none for FAILED or INCOMPLETE), states and confirmation age (±1 s: the two
 * reads are not at the same instant). Only the entries of this test's own device are compared (other
 * tests change the namespace's table meanwhile).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { neighbourTable } from '../../src/server/dataplane/netdev.js';
import { kernelOnly, runId, sh } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';

describe('the neighbour table read through rtnetlink', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let h: Host;

  before(() => {
    h = topo.addHost('nd', '198.18.77.1/24');
  });
  after(() => topo.destroy());

  it('says what `ip -4 -s neigh show` says, entry by entry', () => {
    const states = ['permanent', 'reachable', 'stale', 'delay', 'probe', 'noarp', 'incomplete', 'failed'];
    states.forEach((nud, i) => {
      const args = ['neigh', 'replace', `198.18.77.${10 + i}`];
      if (nud !== 'incomplete' && nud !== 'failed') args.push('lladdr', `02:00:5e:00:0a:${(16 + i).toString(16)}`);
      sh('ip', [...args, 'nud', nud, 'dev', h.hostIf]);
    });
    const mine = (key: string) => key.endsWith(`@${h.hostIf}`);
    const readIp = (nud: string[] = []) =>
      new Map(
        (
          JSON.parse(sh('ip', ['-j', '-4', '-s', 'neigh', 'show', ...nud, 'dev', h.hostIf])) as {
            dst: string;
            lladdr?: string;
            state?: string[];
            confirmed?: number;
          }[]
        ).map((e) => [
          `${e.dst}@${h.hostIf}`,
          {
            mac: (e.state ?? []).includes('FAILED') ? undefined : e.lladdr,
            states: e.state ?? [],
            confirmed: e.confirmed,
          },
        ]),
      );
    const readDump = () => new Map([...neighbourTable()].filter(([k]) => mine(k)));
    const compare = (viaIp: ReturnType<typeof readIp>, viaDump: ReturnType<typeof readDump>) => {
      assert.ok(viaIp.size >= 6, `ip shows the entries written (${[...viaIp.keys()].join(', ')})`);
      assert.ok(!viaIp.has(`198.18.77.15@${h.hostIf}`), 'ip neigh show leaves the NOARP-only entry out');
      // The dump keeps it: what `ip neigh show nud noarp` shows.
      const noarp = readIp(['nud', 'noarp']);
      assert.deepEqual([...noarp.keys()], [`198.18.77.15@${h.hostIf}`]);
      for (const [k, e] of noarp) viaIp.set(k, e);
      assert.deepEqual([...viaDump.keys()].sort(), [...viaIp.keys()].sort());
      for (const [key, e] of viaIp) {
        const d = viaDump.get(key)!;
        assert.equal(d.mac, e.mac, `${key}: MAC`);
        assert.deepEqual(d.states, e.states, `${key}: states`);
        if (e.confirmed === undefined) assert.equal(d.confirmed, undefined, `${key}: confirmed`);
        else assert.ok(Math.abs(d.confirmed! - e.confirmed) <= 1, `${key}: confirmed ${d.confirmed} vs ${e.confirmed}`);
      }
    };
    // The kernel moves entries on by itself (PROBE and INCOMPLETE fail after their probes, DELAY becomes
    // PROBE): a transition between the two reads is retried, a difference that stays is not.
    let viaDump = readDump();
    for (let attempt = 1; ; attempt++) {
      const viaIp = readIp();
      viaDump = readDump();
      try {
        compare(viaIp, viaDump);
        break;
      } catch (e) {
        if (attempt === 3) throw e;
      }
    }
    assert.equal(viaDump.get(`198.18.77.10@${h.hostIf}`)?.mac, '02:00:5e:00:0a:10', 'a permanent entry has its MAC');
    assert.deepEqual(viaDump.get(`198.18.77.10@${h.hostIf}`)?.states, ['PERMANENT']);
  });
});
