/**
 * The host's ARP input filtered (an nftables `arp` table whose input hook drops what arrives on the egress):
 * the kernel never sees the backend's ARP replies, so its neighbour entry fails, while the daemon's own packet
 * socket (ETH_P_ARP) reads them (packet sockets see frames before the arp input hook). Real namespaces, veths,
 * nftables and datagrams. Before: the MAC-less backend was taken out ("its neighbour entry failed", then "no
 * neighbour entry ... until its MAC is known", 0 delivered), and a static MAC stayed "cannot be verified" though
 * the host answered every request of ours. Now the answers the daemon reads are the evidence: the MAC-less
 * backend is resolved from them and kept, the static MAC confirmed, the status naming the failing kernel entry.
 * A kernel entry set FAILED by hand while the host answers does not take the backend out either.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { Protocol, RuleState, UdpChecksumMode, type RuleStatus } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';

describe("the host's ARP input filtered (nftables arp family)", kernelOnly(), () => {
  const id = runId();
  const n = parseInt(id.slice(0, 2), 16);
  const net = `10.${n}.3`;
  const table = `xdpt${id}`;
  const topo = new Topology(id);
  let d: DaemonProcess | undefined;
  let c: Clients;
  let vm: Host, b: Host;
  const listeners: UdpListener[] = [];
  const status = async (name: string) => (await c.rules.getRule({ name })).rule!.status! as RuleStatus;
  const entry = () => sh('ip', ['neigh', 'show', b.ip!, 'dev', b.hostIf]).trim();
  const rule = (name: string, port: number, mac: string) => ({
    rule: {
      name,
      match: { protocol: Protocol.PROTOCOL_UDP, port, destination: '', sourcePrefixes: [] },
      ingressInterfaces: [vm.hostIf],
      backends: [{ ip: b.ip!, mac, interface: b.hostIf, weight: 1 }],
      udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
      labels: {},
      generation: 0n,
    },
  });
  const delivered = async (port: number) => {
    const l = await UdpListener.start(b.netns, b.ip!, port);
    listeners.push(l);
    const { sent } = await sendUdp(vm.netns, NOWHERE, port, 50, { flows: 10 }).done;
    await sleep(150);
    return { sent, got: (await l.stop()).unique };
  };

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    topo.defaultRouteVia('vm', '198.18.1.254', vm.hostMac);
    b = topo.addHost('b', `${net}.2/24`);
    sh('ip', ['addr', 'add', `${net}.1/24`, 'dev', b.hostIf]);
  });
  after(async () => {
    listeners.forEach((l) => l.kill());
    await d?.destroy();
    shQuiet('nft', ['delete', 'table', 'arp', table]);
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  it('keeps a resolved MAC-less backend receiving when the filter comes', async () => {
    d = await DaemonProcess.start(id, ['--log-level', 'info']);
    c = d.clients();
    await c.rules.createRule(rule('f1', 7991, ''));
    let s = await status('f1');
    await until(
      () => `${s.state} ${s.message}`,
      async () => (s = await status('f1')).state === RuleState.RULE_STATE_ACTIVE,
      8000,
    );
    sh('nft', ['add', 'table', 'arp', table]);
    sh('nft', ['add', 'chain', 'arp', table, 'in', '{ type filter hook input priority 0 ; }']);
    sh('nft', ['add', 'rule', 'arp', table, 'in', 'iifname', b.hostIf, 'counter', 'drop']);
    // The kernel's own entry fails (its probes' replies are dropped): make it probe now, as it will by itself.
    sh('ip', ['neigh', 'change', b.ip!, 'dev', b.hostIf, 'nud', 'probe']);
    await until(
      () => `the kernel's entry failed: '${entry()}'`,
      () => / FAILED$/.test(entry()) || !/lladdr/.test(entry()),
      8000,
    );
    const t0 = Date.now();
    let out = 0;
    while (Date.now() - t0 < 4000) {
      s = await status('f1');
      if (!s.backendStatus[0]?.active) out++;
      await sleep(100);
    }
    console.log(`# filtered: kernel entry '${entry()}'; f1 ${s.state}: ${s.backendStatus[0]?.message}; out ${out}/~40`);
    assert.equal(out, 0, `never taken out while the host answers: ${s.backendStatus[0]?.message}`);
    assert.equal(s.backendStatus[0].mac, b.mac);
    assert.match(s.backendStatus[0].message, /neighbour entry for \S+ on \S+ failed .*ARP input may be filtered/);
    const r = await delivered(7991);
    assert.equal(r.got, r.sent, `delivered: ${r.got} of ${r.sent}`);
  });

  it('resolves a new MAC-less backend and confirms a static MAC from the answers it reads', async () => {
    // Nothing of f1's asking left: its answers older than any hold (8 s), the kernel's entry gone.
    await c.rules.deleteRule({ name: 'f1', expectedGeneration: 0n });
    await sleep(9000);
    shQuiet('ip', ['neigh', 'del', b.ip!, 'dev', b.hostIf]);
    const t0 = Date.now();
    await c.rules.createRule(rule('f2', 7992, ''));
    await c.rules.createRule(rule('f3', 7993, b.mac));
    let s2 = await status('f2');
    let s3 = await status('f3');
    await until(
      () => `f2 ${s2.state} ${s2.backendStatus[0]?.message}; f3 ${s3.state} ${s3.message}`,
      async () => {
        s2 = await status('f2');
        s3 = await status('f3');
        return s2.backendStatus[0]?.active === true && s3.state === RuleState.RULE_STATE_ACTIVE;
      },
      12_000,
    );
    const counted = /packets (\d+)/.exec(sh('nft', ['list', 'table', 'arp', table]))?.[1];
    console.log(
      `# after ${Date.now() - t0} ms: f2 ${s2.state}: ${s2.backendStatus[0].message}; f3 ${s3.state}: ${s3.message}; kernel entry ` +
        `'${entry()}'; ${counted} ARP frames dropped by the filter`,
    );
    assert.ok(Number(counted) > 0, 'the filter dropped ARP frames');
    assert.doesNotMatch(entry(), /REACHABLE|STALE/, 'the kernel itself never resolved it');
    assert.equal(s2.backendStatus[0].mac, b.mac);
    const r2 = await delivered(7992);
    assert.equal(r2.got, r2.sent, `f2 delivered: ${r2.got} of ${r2.sent}`);
    const r3 = await delivered(7993);
    assert.equal(r3.got, r3.sent, `f3 delivered: ${r3.got} of ${r3.sent}`);
  });

  it('follows the kernel again once the filter is gone; an entry set FAILED by hand does not take it out', async () => {
    sh('nft', ['delete', 'table', 'arp', table]);
    let s = await status('f2');
    await until(
      () => `kernel entry '${entry()}'; ${s.state}: ${s.backendStatus[0]?.message}`,
      async () =>
        /lladdr/.test(entry()) &&
        (s = await status('f2')).backendStatus[0]?.message === 'MAC resolved from the neighbour table',
      12_000,
    );
    let out = 0;
    for (let i = 0; i < 10; i++) {
      shQuiet('ip', ['neigh', 'change', b.ip!, 'dev', b.hostIf, 'nud', 'failed']);
      await sleep(150);
      s = await status('f2');
      if (!s.backendStatus[0]?.active) out++;
      await sleep(150);
    }
    console.log(`# hand-set FAILED x10: f2 out in ${out} of 10 samples; ${s.backendStatus[0]?.message}`);
    assert.equal(out, 0, `kept: ${s.backendStatus[0]?.message}`);
  });
});
