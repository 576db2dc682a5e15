/**
 * Interfaces that come and go: the VM's veth is deleted while a rule uses it
 * (the daemon keeps serving and reports it), then created again with the
 * same name and a new ifindex: the program is re-attached and the rule
 * rewritten, and traffic flows again. Health and the log say so from the
 * first answer, each transition once.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { Protocol, RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sleep } from '../helpers/env.js';
import { Lab, NOWHERE } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';
const PORT = 7999;

describe('interface churn', kernelOnly(), () => {
  const lab = new Lab();
  const { topo, listeners, count } = lab;
  let d: DaemonProcess;
  let c: Clients;
  let vm: Host, b1: Host;

  before(async () => {
    // vm is routed to our veth by the test itself (prepareVm), as after its veth is plugged back.
    ({ vm, b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }, { routeVm: false }));
    ({ d, c } = await lab.start(['--log-level', 'info']));
  });
  after(() => lab.destroy());

  const prepareVm = () => topo.routeToXdp('vm');
  async function delivered(): Promise<[number, number]> {
    const l = await UdpListener.start(b1.netns, b1.ip!, PORT);
    listeners.push(l);
    const { sent } = await sendUdp(vm.netns, NOWHERE, PORT, 200).done;
    await sleep(100);
    return [(await l.stop()).unique, sent];
  }
  async function until(what: string, ok: () => Promise<boolean>) {
    for (let i = 0; i < 50; i++) {
      if (await ok()) return;
      await sleep(100);
    }
    assert.fail(`timed out waiting for ${what}`);
  }

  it('reports a vanished interface, keeps serving, and re-applies when it returns', async () => {
    prepareVm();
    await c.rules.createRule({
      rule: {
        name: 'web',
        match: { protocol: Protocol.PROTOCOL_UDP, port: PORT, destination: '', sourcePrefixes: [] },
        ingressInterfaces: [vm.hostIf],
        backends: [{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf }],
        udpChecksum: 0,
        labels: {},
        generation: 0,
      },
    });
    assert.deepEqual(await delivered(), [200, 200]);
    const oldIndex = (await c.interfaces.getInterface({ name: vm.hostIf })).interface!.ifindex;

    topo.unplug('vm');
    await until('the loss to be reported', async () => {
      const i = (await c.interfaces.getInterface({ name: vm.hostIf })).interface!;
      return !i.present;
    });
    const i = (await c.interfaces.getInterface({ name: vm.hostIf })).interface!;
    assert.match(i.warnings.join(' '), /does not exist/);
    await until(
      'datapath health NOT_SERVING',
      async () =>
        (await c.health.check({ service: 'xdpctl.datapath' })).status === HealthCheckResponse_ServingStatus.NOT_SERVING,
    );
    assert.equal((await c.health.check({ service: '' })).status, HealthCheckResponse_ServingStatus.SERVING);
    await until('the rule status', async () =>
      (await c.rules.getRule({ name: 'web' })).rule!.status!.warnings.some((w) => w.includes(vm.hostIf)),
    );
    await sleep(2200); // two more passes: nothing more to report
    assert.equal(count(/"msg":"rule web is INACTIVE: .*interface \w+ does not exist/), 1, 'the rule logged once');
    assert.equal(count(/"msg":"datapath not as desired"/), 1, 'the health transition logged once');

    // A restart while the interface is gone: the daemon starts and waits for it.
    assert.equal(await d.stop(), 0);
    ({ d, c } = await lab.start(['--log-level', 'info']));
    // INACTIVE from the first answer on: "waiting for its interfaces to exist" as restored, or already what
    // the first reconciler pass (at once after the start) observed.
    const restarted = (await c.rules.getRule({ name: 'web' })).rule!.status!;
    assert.equal(restarted.state, RuleState.RULE_STATE_INACTIVE);
    assert.match(
      restarted.message,
      new RegExp(
        `^(waiting for its interfaces to exist|not receiving on any ingress interface: interface ${vm.hostIf} does not exist)$`,
      ),
    );
    // From the first answer on, not only after a reconciler pass: the datapath is not as desired.
    assert.equal(
      (await c.health.check({ service: 'xdpctl.datapath' })).status,
      HealthCheckResponse_ServingStatus.NOT_SERVING,
      'health right after the restart',
    );
    await until('the restarted daemon logs the rule INACTIVE', async () => count(/"msg":"rule web is INACTIVE/) === 1);
    await until('and the datapath not as desired', async () => count(/"msg":"datapath not as desired"/) === 1);

    topo.replug('vm', '198.18.1.1/24');
    prepareVm();
    await until('re-attachment', async () => {
      const x = (await c.interfaces.getInterface({ name: vm.hostIf })).interface!;
      return x.present && x.programId > 0 && x.effectiveMode === 2;
    });
    const now = (await c.interfaces.getInterface({ name: vm.hostIf })).interface!;
    assert.notEqual(now.ifindex, oldIndex, 'a new ifindex');
    assert.deepEqual(await delivered(), [200, 200], 'traffic flows again');
    assert.equal((await c.rules.getRule({ name: 'web' })).rule!.generation, 1n, 'same rule, not a new version');
    await until('the rule warning to clear', async () => {
      const st = (await c.rules.getRule({ name: 'web' })).rule!.status!;
      return st.warnings.length === 0 && st.message.startsWith('forwarding');
    });
    await until(
      'datapath health SERVING',
      async () =>
        (await c.health.check({ service: 'xdpctl.datapath' })).status === HealthCheckResponse_ServingStatus.SERVING,
    );
    await sleep(1200);
    assert.equal(count(/"msg":"rule web is ACTIVE/), 1, 'the recovery logged once');
    assert.equal(count(/"msg":"datapath as desired again"/), 1);
    // The replugged veth exists for a moment before it is set up: a pass may see it down (it receives
    // nothing then), a transition of its own, logged once at most.
    assert.equal(count(/"msg":"rule web is INACTIVE: .*does not exist/), 1, 'the missing interface logged once');
    assert.ok(count(new RegExp(`"msg":"rule web is INACTIVE: .*ingress ${vm.hostIf} is down`)) <= 1);
    assert.equal(
      count(/"msg":"rule web is INACTIVE/) - count(/"msg":"rule web is INACTIVE: .*(does not exist|is down)/),
      0,
      'and nothing else',
    );
  });
});
