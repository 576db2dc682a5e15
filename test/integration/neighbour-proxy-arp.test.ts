/**
 * A backend behind a Linux proxy-ARP router, with real namespaces, veths and datagrams: the router (netns B,
 * eth0 10.N.3.254/24 on the egress, forwarding, proxy_arp on) answers for 10.N.3.250, which lives behind
 * it (netns P, route 10.N.3.250/32 dev p0). Linux answers an ARP request whose sender IP is 0.0.0.0 (the RFC
 * 5227 probe form) only for its own addresses, never by proxy: with the daemon's requests in that form the
 * router's MAC was never confirmed, the rule stayed DEGRADED ("not confirmed yet ... probing it"), health
 * NOT_SERVING, while the kernel's entry was REACHABLE and 50 of 50 were delivered. Requests sent as the
 * kernel sends its own (sender IP the egress's own address in the backend's subnet) are answered: the rule
 * is ACTIVE within a few seconds.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { Protocol, RuleState, UdpChecksumMode } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sh, shQuiet, sleep } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const { SERVING } = HealthCheckResponse_ServingStatus;
const RESOLVED = 'MAC resolved from the neighbour table';

describe('a backend behind a proxy-ARP router', kernelOnly(), () => {
  const id = runId();
  const net = `10.${parseInt(id.slice(0, 2), 16)}.3`;
  const backend = `${net}.250`;
  const topo = new Topology(id);
  const pNetns = `xdpt-${id}-p`;
  let d: DaemonProcess | undefined;
  let c: Clients;
  let vm: Host, b: Host;
  const listeners: UdpListener[] = [];

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    topo.defaultRouteVia('vm', '198.18.1.254', vm.hostMac);
    b = topo.addHost('b', `${net}.254/24`);
    // Our side of the egress has an address in the backend's subnet (what ARP requests are sent from).
    sh('ip', ['addr', 'add', `${net}.1/24`, 'dev', b.hostIf]);
    sh('ip', ['netns', 'add', pNetns]);
    sh('ip', ['-n', b.netns, 'link', 'add', 'p0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', pNetns]);
    const inB = (...a: string[]) => sh('ip', ['netns', 'exec', b.netns, ...a]);
    const inP = (...a: string[]) => sh('ip', ['netns', 'exec', pNetns, ...a]);
    sh('ip', ['-n', b.netns, 'link', 'set', 'p0', 'up']);
    sh('ip', ['-n', pNetns, 'link', 'set', 'lo', 'up']);
    sh('ip', ['-n', pNetns, 'link', 'set', 'eth0', 'up']);
    sh('ip', ['-n', pNetns, 'addr', 'add', `${backend}/24`, 'dev', 'eth0']);
    sh('ip', ['-n', pNetns, 'route', 'add', 'default', 'dev', 'eth0']);
    inB('sysctl', '-qw', 'net.ipv4.ip_forward=1');
    for (const dev of ['all', 'eth0', 'p0']) inB('sysctl', '-qw', `net.ipv4.conf.${dev}.rp_filter=0`);
    for (const dev of ['all', 'eth0']) inP('sysctl', '-qw', `net.ipv4.conf.${dev}.rp_filter=0`);
    for (const dev of ['eth0', 'p0']) inB('sysctl', '-qw', `net.ipv4.conf.${dev}.proxy_arp=1`);
    sh('ip', ['-n', b.netns, 'route', 'add', `${backend}/32`, 'dev', 'p0']);
    sh('ip', ['-n', b.netns, 'route', 'add', 'default', 'dev', 'eth0']);
  });
  after(async () => {
    listeners.forEach((l) => l.kill());
    await d?.destroy();
    topo.destroy();
    shQuiet('ip', ['netns', 'del', pNetns]);
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  it('is confirmed (the router answers our requests by proxy): rule ACTIVE, health SERVING, all delivered', async () => {
    d = await DaemonProcess.start(id, ['--log-level', 'info']);
    c = d.clients();
    const t0 = Date.now();
    await c.rules.createRule({
      rule: {
        name: 'pa',
        match: { protocol: Protocol.PROTOCOL_UDP, port: 7971, destination: '', sourcePrefixes: [] },
        ingressInterfaces: [vm.hostIf],
        backends: [{ ip: backend, mac: '', interface: b.hostIf, weight: 1 }],
        udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
        labels: {},
        generation: 0n,
      },
    });
    let s = (await c.rules.getRule({ name: 'pa' })).rule!.status!;
    let activeAt = 0;
    while (Date.now() - t0 < 8000) {
      s = (await c.rules.getRule({ name: 'pa' })).rule!.status!;
      if (s.state === RuleState.RULE_STATE_ACTIVE) {
        activeAt = Date.now();
        break;
      }
      await sleep(100);
    }
    const entry = sh('ip', ['neigh', 'show', backend, 'dev', b.hostIf]).trim();
    console.log(`# proxy-ARP backend: ACTIVE after ${activeAt ? activeAt - t0 : 'never (8000+)'} ms; entry: ${entry}`);
    assert.ok(activeAt > 0, `ACTIVE within 8 s: ${s.message}; backend: ${s.backendStatus[0]?.message}`);
    assert.equal(s.backendStatus[0].mac, b.mac, "the router's MAC");
    assert.equal(s.backendStatus[0].message, RESOLVED);
    assert.equal(
      s.conditions.find((x) => x.type === 'BackendsReceiving')!.status,
      ConditionStatus.CONDITION_STATUS_TRUE,
    );
    const until = Date.now() + 3000;
    let h = (await c.health.check({ service: 'xdpctl.datapath' })).status;
    while (h !== SERVING && Date.now() < until) {
      await sleep(100);
      h = (await c.health.check({ service: 'xdpctl.datapath' })).status;
    }
    assert.equal(h, SERVING, 'health SERVING');
    const l = await UdpListener.start(pNetns, backend, 7971);
    listeners.push(l);
    const { sent } = await sendUdp(vm.netns, NOWHERE, 7971, 50, { flows: 10 }).done;
    await sleep(150);
    const g = await l.stop();
    assert.equal(g.unique, sent, `delivered through the router: ${g.unique} of ${sent}`);
    await c.rules.deleteRule({ name: 'pa', expectedGeneration: 0n });
  });

  it('an egress without an IPv4 address asks in the RFC 5227 form; unanswered broadcasts back off', async () => {
    // Without an address of our own on the egress the requests' sender IP is 0.0.0.0, which the router does
    // not answer by proxy: the backend stays unconfirmed (true: nothing we sent was answered) and the
    // broadcasts nobody answers are sent at growing intervals (1, 2, 4, 8 s ...), not 3 a second for ever.
    sh('ip', ['addr', 'flush', 'dev', b.hostIf]);
    shQuiet('ip', ['neigh', 'del', backend, 'dev', b.hostIf]);
    const inB = (...a: string[]) => sh('ip', ['netns', 'exec', b.netns, ...a]);
    inB('nft', 'add', 'table', 'arp', 'xdpt');
    inB('nft', 'add chain arp xdpt in { type filter hook input priority 0 ; }');
    inB('nft', 'add rule arp xdpt in meta pkttype broadcast arp operation request arp saddr ip 0.0.0.0 counter');
    await c.rules.createRule({
      rule: {
        name: 'pb',
        match: { protocol: Protocol.PROTOCOL_UDP, port: 7972, destination: '', sourcePrefixes: [] },
        ingressInterfaces: [vm.hostIf],
        backends: [{ ip: backend, mac: '', interface: b.hostIf, weight: 1 }],
        udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
        labels: {},
        generation: 0n,
      },
    });
    const count = () => Number(/packets (\d+)/.exec(inB('nft', 'list', 'table', 'arp', 'xdpt'))?.[1] ?? NaN);
    await sleep(3000);
    const c0 = count();
    await sleep(10_000);
    const c1 = count();
    const s = (await c.rules.getRule({ name: 'pb' })).rule!.status!;
    console.log(
      `# egress without IPv4: ${c0} broadcast probes in the first 3 s, ${c1 - c0} in the next 10 s; ${s.message}`,
    );
    assert.equal(s.state, RuleState.RULE_STATE_DEGRADED, s.message);
    assert.match(s.backendStatus[0].message, /not confirmed yet/);
    // At all: how many of a question's requests fall in the first 3 s depends on when the first pass runs (a
    // fresh-clone CI run saw 2).
    assert.ok(c0 >= 1, `asked by broadcast at all: ${c0}`);
    // Once a second it would be ~30 (3 a question); backed off, 1, 2, 4, 8 s apart: at most 3 questions (9 requests) in any 10 s.
    assert.ok(c1 - c0 <= 9, `unanswered broadcasts backed off: ${c1 - c0} in 10 s`);
  });
});
