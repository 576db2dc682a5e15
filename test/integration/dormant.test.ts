/**
 * A device that userspace holds DORMANT (RFC 2863; `ip link set DEV state dormant`, what an 802.1X
 * supplicant or a VRRP agent does) with its carrier on is not "without carrier" (tenth review, findings 9 and
 * 10): the kernel still receives and transmits on it, XDP redirects included (they check IFF_UP only). Before,
 * IFF_RUNNING (off while dormant) was read as the carrier: an ingress was INACTIVE "has no carrier ... it
 * receives nothing" (health NOT_SERVING) while 100/100 datagrams were delivered, a backend egress was taken out
 * of its rule ("no carrier"), and a link was listed as forwarding in neither direction while pings crossed it.
 * Real veths, a real daemon, real datagrams and pings.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus as Serving } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients } from '../helpers/daemon.js';
import { sh, shQuiet, sleep, kernelOnly } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const PORT = 7611;

describe('a DORMANT device with carrier is not taken as "no carrier"', kernelOnly(), () => {
  const lab = new Lab();
  let c: Clients;
  let vm: Host, b1: Host, b2: Host, x: Host, y: Host;
  const dormant = (dev: string) => {
    sh('ip', ['link', 'set', dev, 'mode', 'dormant']);
    sh('ip', ['link', 'set', dev, 'state', 'dormant']);
  };
  const awake = (dev: string) => {
    shQuiet('ip', ['link', 'set', dev, 'state', 'up']);
    shQuiet('ip', ['link', 'set', dev, 'mode', 'default']);
  };
  const operstate = (dev: string) => sh('cat', [`/sys/class/net/${dev}/operstate`]).trim();

  before(async () => {
    ({ vm, b1, b2 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', b2: '198.18.3.1/24' }));
    ({ x, y } = lab.addHosts({ x: '198.18.8.1/24', y: '198.18.8.2/24' }));
    ({ c } = await lab.start(['--log-level', 'info']));
    await c.rules.createRule({ rule: lab.rule('web', PORT, [backendOf(b1), backendOf(b2)]) });
    await c.links.connect({ link: { a: x.hostIf, b: y.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH } });
    await lab.untilActive('web');
  });
  after(() => {
    for (const h of [vm, b1, b2, x, y]) if (h) awake(h.hostIf);
  });
  after(() => lab.destroy());

  it('a backend egress held dormant stays in its rule and receives its share', async () => {
    dormant(b2.hostIf);
    try {
      assert.equal(operstate(b2.hostIf), 'dormant');
      await sleep(2500); // reconciler passes
      const st = await lab.status('web');
      assert.equal(st.state, RuleState.RULE_STATE_ACTIVE, st.message);
      assert.doesNotMatch(JSON.stringify(st), /no carrier/);
      const r = await lab.send(PORT, [b1, b2], 200, 40);
      assert.equal(r.total, 200, JSON.stringify(r));
      assert.ok(r.got[1] > 0, `b2 takes its share while dormant: ${JSON.stringify(r.got)}`);
    } finally {
      awake(b2.hostIf);
    }
  });

  it('an ingress held dormant: ACTIVE, SERVING, every datagram delivered', async () => {
    dormant(vm.hostIf);
    try {
      assert.equal(operstate(vm.hostIf), 'dormant');
      await sleep(2500);
      const st = await lab.status('web');
      assert.equal(st.state, RuleState.RULE_STATE_ACTIVE, st.message);
      assert.equal(await lab.health(), Serving.SERVING);
      const r = await lab.send(PORT, [b1, b2], 100, 20);
      assert.equal(r.total, 100, JSON.stringify(r));
    } finally {
      awake(vm.hostIf);
    }
  });

  it('a link end held dormant: both directions listed as forwarding, and pings cross it', async () => {
    dormant(x.hostIf);
    try {
      await sleep(2500);
      const s = await lab.linkStatus(x.hostIf);
      assert.deepEqual([s.aToBActive, s.bToAActive], [true, true], JSON.stringify(s));
      assert.doesNotMatch(JSON.stringify(s.warnings), /no carrier/);
      assert.equal(lab.topo.ping('x', y.ip!), true);
    } finally {
      awake(x.hostIf);
    }
  });
});
