/**
 * Host settings the datapath relies on drift under a running daemon (docs/architecture.md, promise 1: "observe, don't
 * assume"; the reconciler repairs what is safe and reports what it cannot). Real daemon, veths, traffic:
 *  - an egress's own MAC changes (ip link set dev X address ...): every frame redirected through it
 *    carries that MAC as its source, so the backend entries behind it are rewritten within a second,
 *    logged once (seen on the wire with a packet socket on the backend's side); the same after a restart
 *    when it changed while the daemon was stopped;
 *  - device settings the attach made for XDP are turned on again by someone else (TSO/GSO on a generic
 *    ingress's veth peer: generic XDP cannot redirect GSO packets, TCP through the link stalls; tx VLAN
 *    offload on a native ingress's peer): the reconciler puts them back, logged once, and TCP flows again.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { after, afterEach, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { Protocol, RuleState, UdpChecksumMode, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, runId, sh, sleep, until as pollUntil } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const { SERVING } = HealthCheckResponse_ServingStatus;

/** Receive one TCP stream on (ip, port) and print how many bytes came, or TIMEOUT. */
const TCP_SINK = `
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(10)
print('READY', flush=True)
n = 0
try:
    c, _ = s.accept()
    c.settimeout(4)
    while True:
        b = c.recv(65536)
        if not b:
            break
        n += len(b)
    print(n, flush=True)
except socket.timeout:
    print('TIMEOUT', n, flush=True)
`;
/** Send `bytes` bytes over TCP to (ip, port); prints the seconds it took, or fails after 4 s. */
const TCP_SOURCE = `
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=4)
t = time.time()
c.sendall(b'x' * int(sys.argv[3]))
c.shutdown(socket.SHUT_WR)
c.recv(1)
print('%.3f' % (time.time() - t), flush=True)
`;

/** Print the source MAC of every UDP frame to `port` that eth0 receives, until killed. */
const CAPTURE = `
import socket, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind(('eth0', 0))
print('READY', flush=True)
while True:
    f, a = s.recvfrom(65535)
    if a[2] == socket.PACKET_OUTGOING or len(f) < 34 or f[23] != 17:
        continue
    ihl = (f[14] & 15) * 4
    if int.from_bytes(f[14 + ihl + 2:14 + ihl + 4], 'big') == port:
        print(f[6:12].hex(':'), flush=True)
`;

describe('host settings drift under a running daemon', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess | undefined;
  let c: Clients;
  const procs: ChildProcess[] = [];

  afterEach(async () => {
    procs.splice(0).forEach((p) => p.kill('SIGKILL'));
    await d?.destroy();
    d = undefined;
  });
  after(async () => {
    procs.forEach((p) => p.kill('SIGKILL'));
    await d?.destroy();
    topo.destroy();
  });

  const until = (what: string, ok: () => Promise<boolean> | boolean, ms = 8000) => pollUntil(what, ok, ms);
  const count = (re: RegExp) => d!.output.split('\n').filter((l) => re.test(l)).length;
  const rule = (name: string, port: number, ingress: string[], to: Host[]): Rule => ({
    name,
    match: { protocol: Protocol.PROTOCOL_UDP, port, destination: '', sourcePrefixes: [] },
    ingressInterfaces: ingress,
    backends: to.map((b) => ({ ip: b.ip!, mac: b.mac, interface: b.hostIf, weight: 1 })),
    udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
    labels: {},
    generation: 0n,
  });

  /** Send `n` datagrams from `from` to `port`; the source MACs `to`'s eth0 saw on them. */
  async function sourceMacs(from: Host, to: Host, port: number, n = 20): Promise<string[]> {
    const cap = spawn('nsenter', [`--net=/run/netns/${to.netns}`, 'python3', '-c', CAPTURE, String(port)]);
    procs.push(cap);
    let out = '';
    cap.stdout.on('data', (x) => (out += x));
    cap.stderr.on('data', (x) => (out += x));
    await until('capture ready', () => out.includes('READY'), 5000);
    await sendUdp(from.netns, NOWHERE, port, n, { flows: 5 }).done;
    await sleep(300);
    cap.kill('SIGKILL');
    return out
      .split('\n')
      .filter((l) => /^[0-9a-f:]{17}$/.test(l))
      .map((l) => l.trim());
  }

  /** A 2 MB TCP transfer from `from` to `to` (port `port`): the bytes `to` received and how long it took. */
  async function tcpTransfer(from: Host, to: Host, port: number, bytes = 2_000_000) {
    const sink = spawn('nsenter', [`--net=/run/netns/${to.netns}`, 'python3', '-c', TCP_SINK, to.ip!, String(port)]);
    procs.push(sink);
    let out = '';
    sink.stdout.on('data', (x) => (out += x));
    sink.stderr.on('data', (x) => (out += x));
    const exited = new Promise<void>((r) => sink.on('exit', () => r()));
    await until('TCP sink ready', () => out.includes('READY'), 5000);
    let seconds = -1;
    try {
      seconds = Number(topo.exec(from.role, 'python3', ['-c', TCP_SOURCE, to.ip!, String(port), String(bytes)]));
    } catch {
      // timed out: the sink says how much came
    }
    await exited;
    const got = Number(/^(?:TIMEOUT )?(\d+)$/m.exec(out)?.[1] ?? -1);
    return { got, seconds };
  }
  const feature = (h: Host, name: string) =>
    new RegExp(`^${name}: (on|off)`, 'm').exec(topo.exec(h.role, 'ethtool', ['-k', 'eth0']))?.[1];
  const drifted =
    /"msg":"[^"]*: device settings this daemon had made for XDP were found undone \(not by this daemon\): made again/;

  it("puts back TSO/GSO turned on again on a generic ingress's veth peer: TCP through the link flows again", async () => {
    const la = topo.addHost('dla', '198.18.5.1/24');
    const lb = topo.addHost('dlb', '198.18.5.2/24');
    d = await DaemonProcess.start(`${id}d`, ['--log-level', 'info', '--xdp-mode', 'generic']);
    c = d.clients();
    await c.links.connect({ link: { a: la.hostIf, b: lb.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH } });
    let r = await tcpTransfer(la, lb, 7401);
    assert.equal(r.got, 2_000_000, `2 MB through the link at first (${r.seconds} s)`);
    assert.equal(feature(la, 'tcp-segmentation-offload'), 'off', 'the attach turned TSO off on the peer');

    // Someone turns TSO/GSO on again on the ingress's veth peer (generic XDP cannot redirect GSO packets).
    topo.exec(la.role, 'ethtool', ['-K', 'eth0', 'tso', 'on', 'gso', 'on']);
    await until('the drift put back and logged', () => count(drifted) > 0, 8000);
    assert.equal(feature(la, 'tcp-segmentation-offload'), 'off', 'TSO off again');
    assert.equal(feature(la, 'generic-segmentation-offload'), 'off', 'GSO off again');
    r = await tcpTransfer(la, lb, 7402);
    assert.equal(r.got, 2_000_000, `2 MB through the link again (${r.seconds} s)`);
    await sleep(2500);
    assert.equal(count(drifted), 1, 'logged once');
    assert.match(
      d.output.split('\n').find((l) => drifted.test(l))!,
      /tcp-segmentation-offload.*off on eth0 in netns/,
    );
    const l = (await c.links.listLinks({})).links[0];
    assert.ok(l.status!.aToBActive && l.status!.bToAActive, 'the link forwards both ways');
    assert.equal((await c.health.check({ service: 'xdpctl.datapath' })).status, SERVING);
  });

  it("puts back tx VLAN offload turned on again on a native ingress's veth peer", async () => {
    const vm = topo.addHost('evm', '198.18.1.1/24');
    const b1 = topo.addHost('eb1', '198.18.2.1/24');
    topo.routeToXdp(vm.role);
    d = await DaemonProcess.start(`${id}e`, ['--log-level', 'info', '--xdp-mode', 'native']);
    c = d.clients();
    await c.rules.createRule({ rule: rule('web', 7501, [vm.hostIf], [b1]) });
    assert.equal(feature(vm, 'tx-vlan-offload'), 'off', 'the attach turned tx VLAN offload off on the peer');
    topo.exec(vm.role, 'ethtool', ['-K', 'eth0', 'txvlan', 'on']);
    // Not read back here: the feature change is an rtnetlink event, and the pass it starts may have put it
    // back already (a suite run read 'off' here). The log line below is the daemon having seen it on.
    await until('the drift put back and logged', () => count(drifted) > 0, 8000);
    assert.equal(feature(vm, 'tx-vlan-offload'), 'off', 'tx VLAN offload off again');
    await sleep(2500);
    assert.equal(count(drifted), 1, 'logged once');
    const st = (await c.rules.getRule({ name: 'web' })).rule!.status!;
    assert.equal(st.state, RuleState.RULE_STATE_ACTIVE, st.message);
  });

  it('follows the egress MAC: backend entries rewritten with the new source MAC within 1 s, logged once', async () => {
    const vm = topo.addHost('cvm', '198.18.1.1/24');
    const b1 = topo.addHost('cb1', '198.18.2.1/24');
    topo.routeToXdp(vm.role);
    const args = ['--log-level', 'info', '--xdp-mode', 'generic'];
    d = await DaemonProcess.start(`${id}c`, args);
    c = d.clients();
    const port = 7301;
    await c.rules.createRule({ rule: rule('web', port, [vm.hostIf], [b1]) });

    let macs = await sourceMacs(vm, b1, port);
    assert.equal(macs.length, 20, `all 20 frames seen at b1 (${macs.length})`);
    assert.deepEqual([...new Set(macs)], [b1.hostMac], 'the egress MAC is the source MAC');

    // The egress's own MAC changes while the rule forwards.
    const mac1 = '02:5e:00:00:01:01';
    sh('ip', ['link', 'set', 'dev', b1.hostIf, 'address', mac1]);
    const t0 = Date.now();
    let took = -1;
    await until(
      'frames leave with the new source MAC',
      async () => {
        macs = await sourceMacs(vm, b1, port, 10);
        if (macs.length === 10 && macs.every((m) => m === mac1)) took = Date.now() - t0;
        return took >= 0;
      },
      6000,
    ).catch((e: Error) => assert.fail(`${e.message}: seen ${[...new Set(macs)].join(', ')}, not ${mac1}`));
    console.log(`# egress MAC change: frames with the new source MAC seen ${took} ms after the change`);
    await sleep(2500); // later passes find nothing to change
    assert.equal(count(/"msg":"[^"]* has a new MAC, /), 1, 'logged once');
    assert.match(
      d.output.split('\n').find((l) => /"msg":"[^"]* has a new MAC, /.test(l))!,
      new RegExp(`${b1.hostIf} has a new MAC, ${b1.hostMac} -> ${mac1}: the backend entries behind it are rewritten`),
    );
    const st = (await c.rules.getRule({ name: 'web' })).rule!.status!;
    assert.equal(st.state, RuleState.RULE_STATE_ACTIVE, st.message);
    macs = await sourceMacs(vm, b1, port);
    assert.deepEqual([...new Set(macs)], [mac1], 'still the new MAC later');

    // Changed while the daemon is stopped: the restart rewrites the entries.
    await d.stop();
    const mac2 = '02:5e:00:00:01:02';
    sh('ip', ['link', 'set', 'dev', b1.hostIf, 'address', mac2]);
    d = await DaemonProcess.start(`${id}c`, args);
    c = d.clients();
    macs = await sourceMacs(vm, b1, port);
    assert.equal(macs.length, 20, `all 20 frames seen at b1 after the restart (${macs.length})`);
    assert.deepEqual([...new Set(macs)], [mac2], 'the restart wrote the MAC the egress has now');
  });
});
