/**
 * Host settings the datapath relies on drift under a running daemon (issue 16, item 1: "observe, don't
 * assume"; the reconciler repairs what is safe and reports what it cannot). Real daemon, veths, traffic:
 *  - an egress's own MAC changes (ip link set dev X address ...): every frame redirected through it
 *    carries that MAC as its source, so the backend entries behind it are rewritten within a second,
 *    logged once (seen on the wire with a packet socket on the backend's side); the same after a restart
 *    when it changed while the daemon was stopped.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { after, afterEach, describe, it } from 'node:test';

import { Protocol, RuleState, UdpChecksumMode, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, runId, sh, sleep, until as pollUntil } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';

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
