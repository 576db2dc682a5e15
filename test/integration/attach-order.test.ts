/**
 * Attach and detach in a safe order, and --cleanup-on-exit leaves the host
 * as it found it (docs/architecture.md, promise 6). A rule's ingress moves from a bridge
 * port to the bridge: the kernel refuses any XDP change on a port while its
 * bridge has a program (EEXIST), so the port's program must go first, and
 * cleanup must detach the bridge before the port. GRO that the daemon
 * switched on (a veth peer without NAPI, for native redirects) is switched
 * off again at cleanup, and the VLAN offloads it turned off on an ingress
 * veth's peer (tags as metadata look untagged to XDP) are turned on again,
 * also by a later daemon with the same state dir. Real traffic before and
 * after each move, both ways.
 */
import assert from 'node:assert/strict';
import { existsSync, rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';
import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { Protocol, RuleState, UdpChecksumMode, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, runId, sh, shQuiet, sleep } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const PORT = 7999;
const NOWHERE = '198.18.9.9';
const { SERVING } = HealthCheckResponse_ServingStatus;

describe('attach order and --cleanup-on-exit', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const bridge = `xb${id}`;
  let d: DaemonProcess | undefined;
  let c: Clients;
  let vm: Host, b1: Host;
  const listeners: UdpListener[] = [];

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    sh('ip', ['link', 'add', bridge, 'type', 'bridge']);
    sh('ip', ['link', 'set', vm.hostIf, 'master', bridge]);
    sh('ip', ['link', 'set', bridge, 'up']);
    // The sender's frames go to the port's MAC: the bridge delivers them to itself (a local fdb entry).
    topo.defaultRouteVia('vm', '198.18.1.254', vm.hostMac);
  });
  after(async () => {
    listeners.forEach((l) => l.kill());
    await d?.destroy();
    shQuiet('ip', ['link', 'del', bridge]);
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
  });

  const xdpOf = (ifname: string) => JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', ifname]))[0].xdp;
  const gro = () => /^generic-receive-offload: (\w+)/m.exec(topo.exec('b1', 'ethtool', ['-k', 'eth0']))![1];
  /** The sender's (the ingress veth's peer's) VLAN tag offloads, e.g. `tx-vlan-offload: on`. */
  const txVlan = () =>
    topo
      .exec('vm', 'ethtool', ['-k', 'eth0'])
      .split('\n')
      .filter((l) => /^tx-vlan-(offload|stag-hw-insert):/.test(l));
  const VLAN_ON = ['tx-vlan-offload: on', 'tx-vlan-stag-hw-insert: on'];
  const VLAN_OFF = ['tx-vlan-offload: off', 'tx-vlan-stag-hw-insert: off'];
  const rule = (ingress: string): Rule => ({
    name: 'web',
    match: { protocol: Protocol.PROTOCOL_UDP, port: PORT, destination: '', sourcePrefixes: [] },
    ingressInterfaces: [ingress],
    backends: [{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf, weight: 1 }],
    udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
    labels: {},
    generation: 0n,
  });
  const health = async () => (await c.health.check({ service: 'xdpctl.datapath' })).status;
  /** The daemon's log records with message `msg`, parsed. */
  const records = (msg: string) =>
    d!.output
      .split('\n')
      .filter((l) => l.includes(`"msg":"${msg}"`))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  async function until(what: string, ok: () => Promise<boolean>, ms = 5000) {
    for (const end = Date.now() + ms; Date.now() < end; await sleep(50)) if (await ok()) return;
    assert.fail(`not within ${ms} ms: ${what}`);
  }
  async function delivered(n: number): Promise<number> {
    const l = await UdpListener.start(b1.netns, b1.ip!, PORT);
    listeners.push(l);
    await sendUdp(vm.netns, NOWHERE, PORT, n).done;
    await sleep(200);
    return (await l.stop()).unique;
  }

  it('moves a rule from a bridge port to the bridge and back, and cleans up everything at exit', async () => {
    const groBefore = gro();
    assert.deepEqual(txVlan(), VLAN_ON, "a new veth's default");
    d = await DaemonProcess.start(id, ['--cleanup-on-exit', '--log-level', 'info']);
    c = d.clients();
    await c.rules.createRule({ rule: rule(vm.hostIf) });
    assert.equal(xdpOf(vm.hostIf)?.mode, 1, 'native XDP on the port');
    assert.deepEqual(txVlan(), VLAN_OFF, "the daemon turned the ingress peer's VLAN tag offloads off for XDP");
    assert.equal(gro(), 'on', "the daemon switched GRO on on the backend veth's peer (NAPI for native redirects)");
    assert.equal(
      d.output
        .split('\n')
        .filter((l) =>
          l.includes(`"msg":"GRO switched on on eth0 in netns ${b1.netns}, the veth peer of ${b1.hostIf}:`),
        ).length,
      1,
      'the change to the host is logged, once',
    );
    assert.equal(await delivered(50), 50, 'the rule forwards from the port');
    assert.equal((await c.rules.getRule({ name: 'web' })).rule!.status!.state, RuleState.RULE_STATE_ACTIVE);
    await until('health SERVING', async () => (await health()) === SERVING);
    const logAt = d.output.length;

    const cur = (await c.rules.getRule({ name: 'web' })).rule!;
    await c.rules.updateRule({ rule: { ...rule(bridge), generation: cur.generation } });
    assert.ok(xdpOf(bridge), 'the program is on the bridge');
    assert.equal(xdpOf(vm.hostIf), undefined, 'and no longer on the port');
    // Interfaces that need the program (the backend's egress is listed too, as "rule/web/egress").
    const names = (await c.interfaces.listInterfaces({})).interfaces
      .filter((i) => i.usedBy.some((u) => !u.endsWith('/egress')) || i.programId !== 0)
      .map((i) => i.name);
    assert.deepEqual(names, [bridge], 'ListInterfaces shows exactly what is attached');
    assert.equal(await delivered(50), 50, 'the rule forwards from the bridge');
    const st = (await c.rules.getRule({ name: 'web' })).rule!.status!;
    assert.equal(st.state, RuleState.RULE_STATE_ACTIVE, st.message);
    assert.equal(await health(), SERVING, 'the datapath is as desired');
    assert.doesNotMatch(d.output, /detach failed|"level":(40|50)/, 'no warning, no error');
    // The log says what was done, in the order it was done: off the port, then onto the bridge.
    const moved = d.output
      .slice(logAt)
      .split('\n')
      .filter((l) => /"msg":"(attached|detached)"/.test(l))
      .map((l) => JSON.parse(l) as { msg: string; ifname: string })
      .map((r) => `${r.msg} ${r.ifname}`);
    assert.deepEqual(moved, [`detached ${vm.hostIf}`, `attached ${bridge}`]);

    // And back: the bridge's program must go before the port can take one (EEXIST otherwise).
    const back = d.output.length;
    const cur2 = (await c.rules.getRule({ name: 'web' })).rule!;
    await c.rules.updateRule({ rule: { ...rule(vm.hostIf), generation: cur2.generation } });
    assert.equal(xdpOf(vm.hostIf)?.mode, 1, 'native XDP on the port again');
    assert.equal(xdpOf(bridge), undefined, 'and no longer on the bridge');
    assert.equal(await delivered(50), 50, 'the rule forwards from the port again');
    const st2 = (await c.rules.getRule({ name: 'web' })).rule!.status!;
    assert.equal(st2.state, RuleState.RULE_STATE_ACTIVE, st2.message);
    await until('health SERVING', async () => (await health()) === SERVING);
    assert.doesNotMatch(d.output.slice(back), /detach failed|EEXIST|"level":(40|50)/, 'no warning, no error');
    assert.deepEqual(
      d.output
        .slice(back)
        .split('\n')
        .filter((l) => /"msg":"(attached|detached)"/.test(l))
        .map((l) => JSON.parse(l) as { msg: string; ifname: string })
        .map((r) => `${r.msg} ${r.ifname}`),
      [`detached ${bridge}`, `attached ${vm.hostIf}`],
    );

    assert.equal(await d.stop('SIGTERM'), 0);
    for (const ifname of [bridge, vm.hostIf, b1.hostIf]) assert.equal(xdpOf(ifname), undefined, `${ifname} detached`);
    assert.equal(gro(), groBefore, 'GRO is back as the daemon found it');
    assert.deepEqual(txVlan(), VLAN_ON, 'the VLAN tag offloads are back as the daemon found them');
    assert.equal(existsSync(d.pinRoot), false, 'every pin removed');
    assert.doesNotMatch(d.output, /cleanup incomplete/);
    const [done] = records('cleanup: host restored');
    assert.deepEqual(
      done.restored,
      [
        `eth0 in netns ${b1.netns}: GRO off again`,
        `eth0 in netns ${vm.netns}: tx-vlan-offload, tx-vlan-stag-hw-insert on again`,
      ],
      'the log names each setting restored',
    );
    assert.deepEqual(done.detached, [vm.hostIf], 'and every interface it detached');
    assert.deepEqual(
      records('detached').map((r) => r.ifname),
      [vm.hostIf, bridge, vm.hostIf],
      'each detach logged once: the port and the bridge at the moves, the port at exit',
    );
    d = undefined;
  });

  it('a later daemon with the same state dir turns the offloads an earlier one turned off on again at cleanup', async () => {
    assert.deepEqual(txVlan(), VLAN_ON);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true }); // the first test's rule
    d = await DaemonProcess.start(id, ['--log-level', 'info']);
    c = d.clients();
    await c.rules.createRule({ rule: rule(vm.hostIf) });
    assert.deepEqual(txVlan(), VLAN_OFF, 'turned off for XDP');
    assert.equal(await d.stop('SIGTERM'), 0);
    assert.deepEqual(txVlan(), VLAN_OFF, 'without --cleanup-on-exit the daemon leaves the datapath and its settings');
    d = await DaemonProcess.start(id, ['--cleanup-on-exit', '--log-level', 'info']);
    c = d.clients();
    await c.rules.deleteRule({ name: 'web' });
    assert.equal(await d.stop('SIGTERM'), 0);
    assert.deepEqual(txVlan(), VLAN_ON, 'the restarted daemon turned them on again at its cleanup');
    assert.ok(
      (records('cleanup: host restored')[0].restored as string[]).includes(
        `eth0 in netns ${vm.netns}: tx-vlan-offload, tx-vlan-stag-hw-insert on again`,
      ),
      'and says so',
    );
    d = undefined;
  });

  it('cleanup detaches the bridge before its port when both carry the program', async () => {
    d = await DaemonProcess.start(id, ['--cleanup-on-exit', '--no-state', '--log-level', 'info']);
    c = d.clients();
    await c.rules.createRule({ rule: rule(vm.hostIf) });
    await c.rules.createRule({
      rule: { ...rule(bridge), name: 'web2', match: { ...rule(bridge).match!, port: PORT + 1 } },
    });
    assert.ok(xdpOf(vm.hostIf) && xdpOf(bridge), 'both attached');
    assert.equal(await d.stop('SIGTERM'), 0);
    for (const ifname of [bridge, vm.hostIf]) assert.equal(xdpOf(ifname), undefined, `${ifname} detached`);
    assert.doesNotMatch(d.output, /cleanup incomplete|detach failed/);
    assert.deepEqual(records('cleanup: host restored')[0].detached, [bridge, vm.hostIf], 'the bridge first');
    d = undefined;
  });

  it('a port cannot take a rule while its bridge still needs the program: FAILED_PRECONDITION, nothing changed', async () => {
    d = await DaemonProcess.start(id, ['--cleanup-on-exit', '--no-state', '--log-level', 'info']);
    c = d.clients();
    await c.rules.createRule({ rule: rule(bridge) });
    assert.equal(await delivered(20), 20, 'the rule on the bridge forwards');
    const err = await c.rules
      .createRule({ rule: { ...rule(vm.hostIf), name: 'web2', match: { ...rule(vm.hostIf).match!, port: PORT + 1 } } })
      .then(
        () => assert.fail('accepted'),
        (e: { code: number; message: string }) => e,
      );
    assert.equal(err.code, Status.FAILED_PRECONDITION, err.message);
    assert.match(err.message, new RegExp(`rule\\.ingress_interfaces: ${vm.hostIf} is a port of ${bridge}`));
    assert.equal(xdpOf(vm.hostIf), undefined, 'no program on the port');
    assert.ok(xdpOf(bridge), 'the bridge keeps its program');
    assert.equal((await c.rules.listRules({})).rules.length, 1, 'the rule was not created');
    assert.equal(await delivered(20), 20, 'the rule on the bridge still forwards');
    assert.equal(await d.stop('SIGTERM'), 0);
    d = undefined;
  });
});
