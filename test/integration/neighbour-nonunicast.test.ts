/**
 * A MAC-less backend whose neighbour entry holds a MAC no station has as its own (broadcast, multicast, zero),
 * e.g. set by hand `ip neigh replace IP lladdr ff:ff:ff:ff:ff:ff dev IFACE nud permanent`: the API refuses such
 * a MAC as a static one, and it is never written from a neighbour entry either. A review found it
 * in the backend map (50 of 50 datagrams delivered as L2 broadcasts, which every station of a shared segment
 * gets), the status "not confirmed yet ... probing it" for good while the host answered every request of ours
 * from its own MAC within 1 ms. Now the backend is out of the table with that reason, and the MAC that answers
 * the daemon's ARP requests is named. Real namespaces, veths, ARP and datagrams.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients } from '../helpers/daemon.js';
import { kernelOnly, sh, shQuiet, until } from '../helpers/env.js';
import { Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

describe('a neighbour entry with a MAC that is not a station’s own', kernelOnly(), () => {
  const lab = new Lab();
  const { status, rule, topo } = lab;
  let c: Clients;
  let b1: Host;
  const ip = '198.18.2.7';

  before(async () => {
    ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    topo.exec('b1', 'ip', ['addr', 'add', `${ip}/24`, 'dev', 'eth0']);
    ({ c } = await lab.start(['--log-level', 'info']));
  });
  after(async () => {
    shQuiet('ip', ['neigh', 'del', ip, 'dev', b1.hostIf]);
    await lab.destroy();
  });

  for (const [what, mac] of [
    ['the broadcast MAC', 'ff:ff:ff:ff:ff:ff'],
    ['a multicast MAC', '01:00:5e:00:00:01'],
  ] as const) {
    it(`${what} from a neighbour entry is never written: out, with the reason and the MAC that answers`, async (t) => {
      sh('ip', ['neigh', 'replace', ip, 'lladdr', mac, 'dev', b1.hostIf, 'nud', 'permanent']);
      const name = `nu${mac.slice(0, 2)}`;
      const port = mac.startsWith('ff') ? 7061 : 7062;
      const created = await c.rules.createRule({ rule: rule(name, port, [{ ip, mac: '', interface: b1.hostIf }]) });
      const reason = new RegExp(
        `the neighbour entry for ${ip.replace(/\./g, '\\.')} on ${b1.hostIf} holds ${mac}, which is`,
      );
      const b0 = created.rule!.status!.backendStatus[0];
      assert.equal(b0.active, false, `out of the table in the reply (${b0.message})`);
      assert.match(b0.message, reason);
      assert.equal(created.rule!.status!.state, RuleState.RULE_STATE_INACTIVE, created.rule!.status!.message);
      // The host answers the daemon's ARP requests from its own MAC: named.
      const t0 = Date.now();
      await until(
        'the MAC that answers named',
        async () =>
          new RegExp(`${ip.replace(/\./g, '\\.')} answers ARP requests of ours from ${b1.mac}`).test(
            (await status(name)).backendStatus[0]?.message ?? '',
          ),
        10_000,
      );
      t.diagnostic(`the answering MAC named ${Date.now() - t0} ms after the create`);
      const st = await status(name);
      assert.equal(st.backendStatus[0].active, false);
      assert.match(st.backendStatus[0].message, reason);
      // Nothing is sent to it as an L2 broadcast/multicast (before: 50 of 50 arrived so).
      const r = await lab.send(port, [{ netns: b1.netns, ip }], 50, 10);
      assert.equal(r.total, 0, `0 of ${r.sent} delivered (${r.got})`);
      await c.rules.deleteRule({ name, expectedGeneration: 0n });
      sh('ip', ['neigh', 'del', ip, 'dev', b1.hostIf]);
    });
  }
});
