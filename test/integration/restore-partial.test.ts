/**
 * One object that cannot be applied never takes the others down (docs/architecture.md,
 * promise 5): a daemon restarted with fewer privileges (no CAP_SYS_ADMIN, as the
 * documented container runs) restores a rule whose backend veth peer is in
 * another network namespace, because the kernel's xdp-features of the egress
 * say whether it can receive (it once needed to enter that namespace to
 * check). When that peer lost NAPI while the daemon was stopped, the daemon
 * cannot repair it (GRO there takes CAP_SYS_ADMIN): that rule says so, and
 * the daemon starts and serves every other rule.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { Protocol, RuleState, UdpChecksumMode, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, runId, sh, shQuiet, sleep } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const { SERVING } = HealthCheckResponse_ServingStatus;

describe('a rule that cannot be restored does not take the others down', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  // A backend veth whose peer is in our own namespace: checking it needs no CAP_SYS_ADMIN.
  const local = `xo${id}a`;
  let d: DaemonProcess | undefined;
  let c: Clients;
  let vm: Host, vm2: Host, b: Host;
  const listeners: UdpListener[] = [];

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    vm2 = topo.addHost('vm2', '198.18.3.1/24');
    b = topo.addHost('b', '198.18.2.1/24');
    topo.defaultRouteVia('vm', '198.18.1.254', vm.hostMac);
    topo.defaultRouteVia('vm2', '198.18.3.254', vm2.hostMac);
    sh('ip', ['link', 'add', local, 'type', 'veth', 'peer', 'name', `xo${id}b`]);
    sh('ip', ['link', 'set', local, 'up']);
    sh('ip', ['link', 'set', `xo${id}b`, 'up']);
    // The other rule's backend 198.18.4.1 is held where the peer is (our namespace): the peer's own MAC, given as
    // its static MAC, is confirmed by the peer (core/static-mac.ts), so that rule is ACTIVE, as it means.
    sh('ip', ['addr', 'add', '198.18.4.1/32', 'dev', `xo${id}b`]);
  });
  after(async () => {
    listeners.forEach((l) => l.kill());
    await d?.destroy();
    shQuiet('ip', ['link', 'del', local]);
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
  });

  const rule = (name: string, port: number, from: Host, ip: string, mac: string, iface: string): Rule => ({
    name,
    match: { protocol: Protocol.PROTOCOL_UDP, port, destination: '', sourcePrefixes: [] },
    ingressInterfaces: [from.hostIf],
    backends: [{ ip, mac, interface: iface, weight: 1 }],
    udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
    labels: {},
    generation: 0n,
  });
  async function web(): Promise<number> {
    const l = await UdpListener.start(b.netns, b.ip!, 7999);
    listeners.push(l);
    await sendUdp(vm.netns, NOWHERE, 7999, 50).done;
    await sleep(150);
    return (await l.stop()).unique;
  }
  const redirected = async (name: string) =>
    (await c.counters.getCounters({})).counters!.rules.find((r) => r.rule === name)?.redirectedPackets ?? 0;

  const fewer = () =>
    DaemonProcess.start(id, ['--log-level', 'info'], {}, [
      'setpriv',
      '--bounding-set',
      '-all,+bpf,+net_admin,+perfmon',
      '--',
    ]);
  const state = async (name: string) => (await c.rules.getRule({ name })).rule!.status!;

  it('starts with fewer privileges: what the kernel says can receive is restored; what needs a repair it cannot make does not take the others down', async () => {
    d = await DaemonProcess.start(id, ['--log-level', 'info']);
    c = d.clients();
    await c.rules.createRule({ rule: rule('web', 7999, vm, b.ip!, b.mac, b.hostIf) });
    // The backend's MAC is its veth peer's own (a static MAC the peer does not have is taken out of the table).
    const peerMac = (JSON.parse(sh('ip', ['-j', 'link', 'show', `xo${id}b`])) as { address: string }[])[0].address;
    await c.rules.createRule({ rule: rule('other', 7998, vm2, '198.18.4.1', peerMac, local) });
    assert.equal(await web(), 50, 'web forwards');
    assert.equal(await d.stop(), 0);
    assert.equal(await web(), 50, 'the datapath forwards while the daemon is stopped');

    // Without CAP_SYS_ADMIN xdpctld cannot enter the netns of web's backend peer: the kernel's xdp-features
    // of the egress say it may receive (the first daemon switched GRO on there), so web is restored with the
    // backend in its table, but only traffic can show it receives (core/egress-watch.ts): DEGRADED, "cannot be
    // verified", until the kernel takes frames redirected to it; then ACTIVE.
    d = await fewer();
    c = d.clients();
    await until('web restored, its backend not verified', async () =>
      /cannot be verified/.test((await state('web')).backendStatus[0]?.message ?? ''),
    );
    assert.equal((await state('web')).state, RuleState.RULE_STATE_DEGRADED, (await state('web')).message);
    assert.equal((await state('web')).backendStatus[0].active, true, 'in the table');
    assert.equal(await web(), 50, 'web restored and forwarding');
    await until(
      'web ACTIVE: verified by traffic',
      async () => (await state('web')).state === RuleState.RULE_STATE_ACTIVE,
    );
    assert.equal(await d.stop(), 0);

    // The peer loses NAPI while the daemon is stopped: native redirects into it are dropped (the fault), and the
    // restarted daemon cannot repair it (switching GRO on in that netns takes CAP_SYS_ADMIN).
    topo.exec('b', 'ethtool', ['-K', 'eth0', 'gro', 'off']);
    d = await fewer();
    c = d.clients();
    await until(
      'web not forwarding, naming CAP_SYS_ADMIN',
      async () =>
        (await state('web')).state !== RuleState.RULE_STATE_ACTIVE &&
        /CAP_SYS_ADMIN/.test((await state('web')).message),
    );
    assert.equal((await state('other')).state, RuleState.RULE_STATE_ACTIVE);
    const before = Number(await redirected('other'));
    await sendUdp(vm2.netns, NOWHERE, 7998, 20).done;
    await sleep(150);
    assert.equal(Number(await redirected('other')) - before, 20, 'the other rule is served');
    await sleep(1200);
    assert.equal(
      (await c.health.check({ service: 'xdpctl.datapath' })).status,
      HealthCheckResponse_ServingStatus.NOT_SERVING,
    );
    assert.match(d.output, /rule web (FAILED|is INACTIVE)/);
  });
  async function until(what: string, ok: () => Promise<boolean>, ms = 5000) {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      if (await ok()) return;
      await sleep(50);
    }
    assert.fail(`not within ${ms} ms: ${what}`);
  }
});

describe('pins removed under a stopped daemon', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess | undefined;
  let vm: Host, b: Host;
  const listeners: UdpListener[] = [];

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b = topo.addHost('b', '198.18.2.1/24');
    topo.defaultRouteVia('vm', '198.18.1.254', vm.hostMac);
  });
  after(async () => {
    listeners.forEach((l) => l.kill());
    await d?.destroy();
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
  });

  async function delivered(port = 7999): Promise<number> {
    const l = await UdpListener.start(b.netns, b.ip!, port);
    listeners.push(l);
    await sendUdp(vm.netns, NOWHERE, port, 50).done;
    await sleep(150);
    return (await l.stop()).unique;
  }
  const progOn = (ifname: string): number =>
    JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', ifname]))[0].xdp?.prog?.id ?? 0;

  it('a restart after `rm -rf PIN/maps` runs a program on the new maps: changes take effect', async () => {
    const rule = (name: string, port: number): Rule => ({
      name,
      match: { protocol: Protocol.PROTOCOL_UDP, port, destination: '', sourcePrefixes: [] },
      ingressInterfaces: [vm.hostIf],
      backends: [{ ip: b.ip!, mac: b.mac, interface: b.hostIf, weight: 1 }],
      udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
      labels: {},
      generation: 0n,
    });
    d = await DaemonProcess.start(id, ['--log-level', 'info']);
    let c = d.clients();
    await c.rules.createRule({ rule: rule('web', 7999) });
    assert.equal(await delivered(), 50);
    const before = progOn(vm.hostIf);
    assert.equal(await d.stop(), 0);
    rmSync(`${d.pinRoot}/maps`, { recursive: true });

    d = await DaemonProcess.start(id, ['--log-level', 'info']);
    c = d.clients();
    assert.match(d.output, /the pinned program uses other maps than the pinned ones/);
    const now = (await c.daemon.getStatus({})).datapath!.programId;
    assert.notEqual(now, before, 'not the program on the old maps');
    assert.equal(progOn(vm.hostIf), now, 'the interface runs the program on the new maps');
    assert.equal(await delivered(), 50, 'the restored rule forwards through the new maps');
    // Status and health say so, and they are true: a new rule forwards, a delete takes effect.
    assert.equal((await c.rules.getRule({ name: 'web' })).rule!.status!.state, RuleState.RULE_STATE_ACTIVE);
    const health = async () => (await c.health.check({ service: 'xdpctl.datapath' })).status;
    for (const end = Date.now() + 5000; Date.now() < end && (await health()) !== SERVING;) await sleep(50);
    assert.equal(await health(), SERVING);
    await c.rules.createRule({ rule: rule('new', 7996) });
    assert.equal((await c.rules.getRule({ name: 'new' })).rule!.status!.state, RuleState.RULE_STATE_ACTIVE);
    assert.equal(await delivered(7996), 50, 'a rule created after the restart forwards');
    await c.rules.deleteRule({ name: 'web', expectedGeneration: 0 });
    assert.equal(await delivered(), 0, 'a delete takes effect');
    assert.equal(
      d.output.split('\n').filter((l) => /the pinned program uses other maps than the pinned ones/.test(l)).length,
      1,
      'the swap logged once',
    );
    assert.doesNotMatch(d.output, /"level":50/, 'no error');
  });

  it('pins removed under a running daemon are put back at once; the next start adopts them', async () => {
    // Continues from the test above: rule "new" (port 7996) is served by the daemon d.
    const c = d!.clients();
    const programId = (await c.daemon.getStatus({})).datapath!.programId;
    const pinned = () => existsSync(`${d!.pinRoot}/maps/rule_cfg`) && existsSync(`${d!.pinRoot}/progs/xdpctl_main`);
    const logAt = d!.output.length;
    rmSync(`${d!.pinRoot}/maps`, { recursive: true });
    rmSync(`${d!.pinRoot}/progs`, { recursive: true });
    for (const end = Date.now() + 5000; Date.now() < end && !pinned();) await sleep(50);
    assert.ok(pinned(), 'the pins are back');
    // The pins are what runs: the pinned program is the attached one, and it uses exactly the pinned maps.
    const prog = JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'pinned', `${d!.pinRoot}/progs/xdpctl_main`])) as {
      id: number;
      map_ids: number[];
    };
    assert.equal(prog.id, programId);
    assert.equal(progOn(vm.hostIf), programId);
    const mapIds = new Set(
      readdirSync(`${d!.pinRoot}/maps`).map(
        (f) =>
          (JSON.parse(sh('bpftool', ['-j', 'map', 'show', 'pinned', `${d!.pinRoot}/maps/${f}`])) as { id: number }).id,
      ),
    );
    assert.deepEqual(
      prog.map_ids.filter((id) => !mapIds.has(id)),
      [],
      'every map the program uses is pinned',
    );
    await sleep(1100); // another pass: nothing more to repair
    const repairs = d!.output
      .slice(logAt)
      .split('\n')
      .filter((l) => l.includes('re-pinned'));
    assert.equal(repairs.length, 1, 'the repair logged once');
    assert.match(repairs[0], /maps\/rule_cfg.*progs\/xdpctl_main/);
    assert.equal((await c.health.check({ service: 'xdpctl.datapath' })).status, SERVING);
    assert.equal((await c.rules.getRule({ name: 'new' })).rule!.status!.state, RuleState.RULE_STATE_ACTIVE);
    assert.equal(await delivered(7996), 50, 'forwarding all along');

    // A restart adopts the program and maps that forward now: no swap, no empty maps.
    assert.equal(await d!.stop(), 0);
    d = await DaemonProcess.start(id, ['--log-level', 'info']);
    const c2 = d.clients();
    assert.doesNotMatch(d.output, /uses other maps than the pinned ones|created maps/);
    assert.match(d.output, /"msg":"adopted pinned maps"/);
    assert.equal((await c2.daemon.getStatus({})).datapath!.programId, programId, 'the same program');
    assert.equal(await delivered(7996), 50);
    await c2.rules.deleteRule({ name: 'new', expectedGeneration: 0 });
    assert.equal(await delivered(7996), 0, 'a delete takes effect');
  });
});
