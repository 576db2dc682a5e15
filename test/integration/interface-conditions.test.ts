/**
 * Interface conditions state what each interface is used for and what is true of it (docs/architecture.md, per-object
 * conditions), with real namespaces, veths and datagrams: an ingress has ProgramAttached; a backend's
 * egress, where no program is meant, has no ProgramAttached False/NotAttached (was: always, as if something
 * were missing) but EgressReady: True while it is up with carrier, False naming why when its veth peer or
 * itself goes down (was: no condition on the interface, only the rule said so), True again when it is back;
 * and FramesFit (True here: its MTU is the ingress's; egress-interface-truth.test.ts has it False).
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { Protocol, UdpChecksumMode } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sh, sleep, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const { CONDITION_STATUS_TRUE: TRUE, CONDITION_STATUS_FALSE: FALSE } = ConditionStatus;
const FITS = [
  'FramesFit',
  TRUE,
  'MTUFits',
  'its MTU (and its veth peer MTU) is at least every ingress MTU sending to it',
];

describe('interface conditions: what each interface is used for', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess;
  let c: Clients;
  let vm: Host, b1: Host;
  const listeners: UdpListener[] = [];

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    topo.defaultRouteVia('vm', '198.18.1.254', vm.hostMac);
    d = await DaemonProcess.start(id, ['--log-level', 'info']);
    c = d.clients();
  });
  after(async () => {
    listeners.forEach((l) => l.kill());
    await d?.destroy();
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  const conds = async (name: string) =>
    (await c.interfaces.getInterface({ name })).interface!.conditions.map((x) => [
      x.type,
      x.status,
      x.reason,
      x.message,
    ]);
  async function delivered(n = 20): Promise<number> {
    const l = await UdpListener.start(b1.netns, b1.ip!, 7987);
    listeners.push(l);
    await sendUdp(vm.netns, NOWHERE, 7987, n).done;
    await sleep(150);
    return (await l.stop()).unique;
  }

  it('an ingress has ProgramAttached; an egress has EgressReady, False while it is down', async () => {
    await c.rules.createRule({
      rule: {
        name: 'web',
        match: { protocol: Protocol.PROTOCOL_UDP, port: 7987, destination: '', sourcePrefixes: [] },
        ingressInterfaces: [vm.hostIf],
        backends: [{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf, weight: 1 }],
        udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
        labels: {},
        generation: 0n,
      },
    });
    assert.deepEqual(
      (await conds(vm.hostIf)).map((x) => x.slice(0, 3)),
      [['ProgramAttached', TRUE, 'Attached']],
    );
    assert.deepEqual(await conds(b1.hostIf), [
      ['EgressReady', TRUE, 'Up', 'up with carrier (egress of rule/web)'],
      FITS,
    ]);
    assert.equal(await delivered(), 20);

    // Its veth peer down: no carrier here.
    sh('ip', ['-n', b1.netns, 'link', 'set', 'eth0', 'down']);
    try {
      await until('EgressReady false', async () => (await conds(b1.hostIf))[0][1] === FALSE, 5000);
      assert.deepEqual(await conds(b1.hostIf), [
        [
          'EgressReady',
          FALSE,
          'EgressDown',
          `egress ${b1.hostIf} has no carrier (nothing at its other end: for a veth, its peer is down) (egress of rule/web)`,
        ],
        FITS,
      ]);
      assert.equal(await delivered(), 0, 'nothing goes out of it');
    } finally {
      sh('ip', ['-n', b1.netns, 'link', 'set', 'eth0', 'up']);
    }
    await until('EgressReady true again', async () => (await conds(b1.hostIf))[0][1] === TRUE, 5000);
    // Itself down.
    sh('ip', ['link', 'set', b1.hostIf, 'down']);
    try {
      await until('EgressReady false', async () => (await conds(b1.hostIf))[0][1] === FALSE, 5000);
      assert.deepEqual((await conds(b1.hostIf))[0].slice(0, 4), [
        'EgressReady',
        FALSE,
        'EgressDown',
        `egress ${b1.hostIf} is down (egress of rule/web)`,
      ]);
    } finally {
      sh('ip', ['link', 'set', b1.hostIf, 'up']);
    }
    await until('EgressReady true again', async () => (await conds(b1.hostIf))[0][1] === TRUE, 5000);
    await until('delivered again', async () => (await delivered()) === 20, 10_000);
    await c.rules.deleteRule({ name: 'web', expectedGeneration: 0n });
  });
});
