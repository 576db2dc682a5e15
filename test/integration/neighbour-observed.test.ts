/**
 * A backend's MAC is what was observed on the wire or in the kernel, whatever the egress's ARP flag or master
 * device, with real namespaces, veths, a bridge and datagrams:
 *  - an egress switched to NOARP by another tool (`ip link set DEV arp off; ip neigh flush dev DEV`: the kernel
 *    then holds a NOARP entry with the egress's own MAC and never asks): the MAC-less backend is resolved by ARP
 *    requests of ours and says so (was "MAC resolved from the neighbour table", no request sent at all), a
 *    second rule with the same backend says the same (was INACTIVE "no neighbour entry"), and a later MAC
 *    change of the host is followed (was 0 of 100 delivered, ACTIVE);
 *  - a hand-set `nud noarp` entry with a wrong MAC on an ARP device: the same (was "resolved from the
 *    neighbour table" with the kernel's entry saying otherwise, no request sent, a MAC change missed);
 *  - a static MAC behind a NOARP egress: still confirmed by our requests, and contradicted when the host
 *    changes its MAC (was ACTIVE with an empty message, 0 of 100 delivered);
 *  - a backend behind a bridge port (the egress enslaved to a bridge holding the host's address, the
 *    docker0/veth layout): the MAC-less one resolved from the bridge's entry, the static one confirmed (were
 *    INACTIVE "no neighbour entry" for ever / DEGRADED "ARP asked; no answer yet" though the host answered
 *    every request: the replies are delivered on the bridge);
 *  - a backend IP that is this host's own address on the egress, its subnet's broadcast address, or an
 *    address this host also holds elsewhere: the reason named (was "no neighbour entry" for ever).
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { Protocol, RuleState, UdpChecksumMode } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const RESOLVED = 'MAC resolved from the neighbour table';
const BY_ARP = 'MAC resolved by ARP requests of ours, not from the neighbour table: ';
const re = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('a backend MAC is what was observed, whatever the egress ARP flag or master', kernelOnly(), () => {
  const id = runId();
  const n = parseInt(id.slice(0, 2), 16);
  const net = (k: number) => `10.${n}.${k}`;
  const topo = new Topology(id);
  const bridge = `x${id}br`;
  let d: DaemonProcess;
  let c: Clients;
  let vm: Host, a: Host, s: Host, h: Host, b: Host;
  const listeners: UdpListener[] = [];

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    topo.defaultRouteVia('vm', '198.18.1.254', vm.hostMac);
    a = topo.addHost('a', `${net(40)}.2/24`);
    sh('ip', ['addr', 'add', `${net(40)}.1/24`, 'dev', a.hostIf]);
    s = topo.addHost('s', `${net(41)}.2/24`);
    sh('ip', ['addr', 'add', `${net(41)}.1/24`, 'dev', s.hostIf]);
    h = topo.addHost('h', `${net(42)}.2/24`);
    sh('ip', ['addr', 'add', `${net(42)}.1/24`, 'dev', h.hostIf]);
    b = topo.addHost('b', `${net(43)}.2/24`);
    // The README's docker0/veth layout: the egress is a port of a bridge that holds the host's address.
    sh('ip', ['link', 'add', bridge, 'type', 'bridge']);
    sh('ip', ['link', 'set', bridge, 'up']);
    sh('ip', ['link', 'set', b.hostIf, 'master', bridge]);
    sh('ip', ['addr', 'add', `${net(43)}.1/24`, 'dev', bridge]);
    d = await DaemonProcess.start(id, ['--log-level', 'info']);
    c = d.clients();
  });
  after(async () => {
    listeners.forEach((l) => l.kill());
    await d?.destroy();
    shQuiet('ip', ['addr', 'del', `${net(42)}.2/32`, 'dev', 'lo']);
    shQuiet('ip', ['link', 'del', bridge]);
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  const status = async (name: string) => (await c.rules.getRule({ name })).rule!.status!;
  const backend = async (name: string) => (await status(name)).backendStatus[0];
  /** Send `n` datagrams from vm to the port over 10 flows; how many `to` received. */
  async function send(to: Host, port: number, count = 50) {
    const l = await UdpListener.start(to.netns, to.ip!, port);
    listeners.push(l);
    const { sent } = await sendUdp(vm.netns, NOWHERE, port, count, { flows: 10 }).done;
    await sleep(150);
    return { sent, got: (await l.stop()).unique };
  }
  const rule = (name: string, port: number, backends: { ip: string; mac: string; interface: string }[]) => ({
    name,
    match: { protocol: Protocol.PROTOCOL_UDP, port, destination: '', sourcePrefixes: [] },
    ingressInterfaces: [vm.hostIf],
    backends: backends.map((x) => ({ ...x, weight: 1 })),
    udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
    labels: {},
    generation: 0n,
  });
  const newMac = (k: string) => `02:16:3e:${id.slice(0, 2)}:${id.slice(2, 4)}:${k}`;

  it('an egress switched to NOARP: resolved by ARP requests of ours, one verdict across rules, a MAC change followed', async () => {
    await c.rules.createRule({ rule: rule('na1', 7961, [{ ip: a.ip!, mac: '', interface: a.hostIf }]) });
    await until('resolved', async () => (await backend('na1'))?.message === RESOLVED, 10_000);
    sh('ip', ['link', 'set', a.hostIf, 'arp', 'off']);
    sh('ip', ['neigh', 'flush', 'dev', a.hostIf]);
    try {
      // The kernel's entry now holds the egress's own MAC (NOARP), which says nothing of the host.
      // (made by a packet the kernel itself routes there: a ping, which goes nowhere with that MAC)
      shQuiet('ping', ['-c', '1', '-W', '1', a.ip!]);
      assert.match(sh('ip', ['neigh', 'show', 'nud', 'all', a.ip!, 'dev', a.hostIf]), new RegExp(`${a.hostMac} NOARP`));
      const via = new RegExp(`^${re(BY_ARP)}${re(a.hostIf)} has ARP off \\(NOARP\\): the kernel never asks`);
      await until(
        async () => `says so: ${(await backend('na1'))?.message}`,
        async () => via.test((await backend('na1'))?.message ?? ''),
        10_000,
      );
      assert.equal((await backend('na1')).mac, a.mac);
      assert.equal((await status('na1')).state, RuleState.RULE_STATE_ACTIVE);
      const r1 = await send(a, 7961);
      assert.equal(r1.got, r1.sent, `delivered: ${r1.got} of ${r1.sent}`);
      // A second rule with the same backend: the same verdict.
      await c.rules.createRule({ rule: rule('na2', 7962, [{ ip: a.ip!, mac: '', interface: a.hostIf }]) });
      await until(
        async () => `na2: ${(await backend('na2'))?.message}`,
        async () => via.test((await backend('na2'))?.message ?? ''),
        10_000,
      );
      assert.equal((await status('na2')).state, RuleState.RULE_STATE_ACTIVE);
      // The host takes another MAC (no gratuitous ARP): followed by our requests.
      const moved = newMac('a1');
      sh('ip', ['-n', a.netns, 'link', 'set', 'eth0', 'address', moved]);
      const t0 = Date.now();
      await until(
        async () => `followed: ${JSON.stringify(await backend('na1'))}`,
        async () =>
          (await backend('na1'))?.mac === moved &&
          (await backend('na2'))?.mac === moved &&
          via.test((await backend('na1')).message),
        10_000,
      );
      console.log(`# the new MAC followed after ${Date.now() - t0} ms`);
      const r2 = await send(a, 7961);
      const r3 = await send(a, 7962);
      assert.equal(r2.got, r2.sent, `na1 after the MAC change: ${r2.got} of ${r2.sent}`);
      assert.equal(r3.got, r3.sent, `na2 after the MAC change: ${r3.got} of ${r3.sent}`);
    } finally {
      sh('ip', ['link', 'set', a.hostIf, 'arp', 'on']);
    }
    await until('back to the table', async () => (await backend('na1'))?.message === RESOLVED, 10_000);
    const r4 = await send(a, 7962);
    assert.equal(r4.got, r4.sent);
    await c.rules.deleteRule({ name: 'na1', expectedGeneration: 0n });
    await c.rules.deleteRule({ name: 'na2', expectedGeneration: 0n });
  });

  it('a hand-set nud noarp entry with a wrong MAC: not taken, the answered MAC used and followed', async () => {
    await c.rules.createRule({ rule: rule('hn', 7963, [{ ip: h.ip!, mac: '', interface: h.hostIf }]) });
    await until('resolved', async () => (await backend('hn'))?.message === RESOLVED, 10_000);
    const wrong = newMac('77');
    sh('ip', ['neigh', 'replace', h.ip!, 'lladdr', wrong, 'dev', h.hostIf, 'nud', 'noarp']);
    try {
      const via = new RegExp(
        `^${re(BY_ARP)}the neighbour entry for ${re(h.ip!)} on ${re(h.hostIf)} is NOARP, set by hand: .*\\(it holds ${wrong}\\)`,
      );
      await until(
        async () => `says so: ${(await backend('hn'))?.message}`,
        async () => via.test((await backend('hn'))?.message ?? ''),
        10_000,
      );
      assert.equal((await backend('hn')).mac, h.mac);
      const r1 = await send(h, 7963);
      assert.equal(r1.got, r1.sent, `the answered MAC kept: ${r1.got} of ${r1.sent}`);
      const moved = newMac('c1');
      sh('ip', ['-n', h.netns, 'link', 'set', 'eth0', 'address', moved]);
      await until(
        async () => `followed: ${(await backend('hn'))?.mac}`,
        async () => (await backend('hn'))?.mac === moved,
        10_000,
      );
      const r2 = await send(h, 7963);
      assert.equal(r2.got, r2.sent, `after the MAC change: ${r2.got} of ${r2.sent}`);
    } finally {
      shQuiet('ip', ['neigh', 'del', h.ip!, 'dev', h.hostIf]);
    }
    await c.rules.deleteRule({ name: 'hn', expectedGeneration: 0n });
  });

  it('a static MAC behind a NOARP egress: confirmed by our requests, contradicted when the host changes its MAC', async () => {
    // The case is about our ARP requests as the evidence: s's eth0 (the veth peer, read in s's namespace, which
    // would decide alone) is promiscuous, so it may take frames for other MACs and is no evidence either way.
    sh('ip', ['-n', s.netns, 'link', 'set', 'eth0', 'promisc', 'on']);
    await c.rules.createRule({ rule: rule('st', 7964, [{ ip: s.ip!, mac: s.mac, interface: s.hostIf }]) });
    await until('active', async () => (await status('st')).state === RuleState.RULE_STATE_ACTIVE, 10_000);
    sh('ip', ['link', 'set', s.hostIf, 'arp', 'off']);
    sh('ip', ['neigh', 'flush', 'dev', s.hostIf]);
    try {
      await sleep(2500);
      assert.equal((await status('st')).state, RuleState.RULE_STATE_ACTIVE, (await status('st')).message);
      const r1 = await send(s, 7964);
      assert.equal(r1.got, r1.sent, `${r1.got} of ${r1.sent}`);
      const moved = newMac('51');
      sh('ip', ['-n', s.netns, 'link', 'set', 'eth0', 'address', moved]);
      await until(
        async () => `contradicted: ${JSON.stringify(await status('st'))}`,
        async () => (await status('st')).state === RuleState.RULE_STATE_INACTIVE,
        10_000,
      );
      assert.match(
        (await backend('st')).message,
        new RegExp(
          `static MAC contradicted: ${re(s.ip!)} answers ARP requests of ours on ${re(s.hostIf)} from ${moved}, not from the static ${s.mac}.*ARP off \\(NOARP\\)`,
        ),
      );
      assert.equal((await backend('st')).active, false);
    } finally {
      sh('ip', ['link', 'set', s.hostIf, 'arp', 'on']);
      sh('ip', ['-n', s.netns, 'link', 'set', 'eth0', 'promisc', 'off']);
    }
    await c.rules.deleteRule({ name: 'st', expectedGeneration: 0n });
  });

  it('a backend behind a bridge port: MAC-less resolved from the bridge entry, static confirmed; both deliver', async () => {
    await c.rules.createRule({ rule: rule('bm', 7965, [{ ip: b.ip!, mac: '', interface: b.hostIf }]) });
    await c.rules.createRule({ rule: rule('bs', 7966, [{ ip: b.ip!, mac: b.mac, interface: b.hostIf }]) });
    await until(
      async () => `bm resolved: ${JSON.stringify(await backend('bm'))}`,
      async () => (await backend('bm'))?.message === RESOLVED,
      10_000,
    );
    await until(
      async () => `bs active: ${JSON.stringify(await status('bs'))}`,
      async () => (await status('bs')).state === RuleState.RULE_STATE_ACTIVE,
      10_000,
    );
    assert.equal((await backend('bm')).mac, b.mac);
    assert.equal((await status('bm')).state, RuleState.RULE_STATE_ACTIVE);
    assert.match(
      sh('ip', ['neigh', 'show', b.ip!, 'dev', bridge]),
      new RegExp(b.mac),
      'the kernel entry is on the bridge',
    );
    const r1 = await send(b, 7965);
    const r2 = await send(b, 7966);
    assert.equal(r1.got, r1.sent, `bm: ${r1.got} of ${r1.sent}`);
    assert.equal(r2.got, r2.sent, `bs: ${r2.got} of ${r2.sent}`);
    await c.rules.deleteRule({ name: 'bm', expectedGeneration: 0n });
    await c.rules.deleteRule({ name: 'bs', expectedGeneration: 0n });
  });

  it("this host's own address, its subnet's broadcast address, an address it also holds: the reason named", async () => {
    await c.rules.createRule({ rule: rule('own', 7967, [{ ip: `${net(42)}.1`, mac: '', interface: h.hostIf }]) });
    await c.rules.createRule({ rule: rule('bc', 7968, [{ ip: `${net(42)}.255`, mac: '', interface: h.hostIf }]) });
    const own = new RegExp(
      `^no MAC known for ${re(net(42))}\\.1 on ${re(h.hostIf)}: ${re(net(42))}\\.1 is this host's own address \\(on ${re(h.hostIf)}\\)`,
    );
    const bc = new RegExp(
      `^no MAC known for ${re(net(42))}\\.255 on ${re(h.hostIf)}: ${re(net(42))}\\.255 is the broadcast address of ${re(h.hostIf)}'s subnet ${re(net(42))}\\.0/24`,
    );
    await until(
      async () => `own: ${(await backend('own'))?.message}`,
      async () => own.test((await backend('own'))?.message ?? ''),
      10_000,
    );
    await until(
      async () => `bc: ${(await backend('bc'))?.message}`,
      async () => bc.test((await backend('bc'))?.message ?? ''),
      10_000,
    );
    assert.equal((await status('own')).state, RuleState.RULE_STATE_INACTIVE);
    assert.equal((await status('bc')).state, RuleState.RULE_STATE_INACTIVE);
    await c.rules.deleteRule({ name: 'own', expectedGeneration: 0n });
    await c.rules.deleteRule({ name: 'bc', expectedGeneration: 0n });
    // The backend's address held by this host too (on lo): the kernel keeps no entry; our requests find it.
    sh('ip', ['addr', 'add', `${h.ip!}/32`, 'dev', 'lo']);
    try {
      await c.rules.createRule({ rule: rule('dup', 7969, [{ ip: h.ip!, mac: '', interface: h.hostIf }]) });
      const dup = new RegExp(`^${re(BY_ARP)}${re(h.ip!)} is also an address of this host \\(on lo\\)`);
      await until(
        async () => `dup: ${(await backend('dup'))?.message}`,
        async () => dup.test((await backend('dup'))?.message ?? ''),
        10_000,
      );
      assert.equal(
        (await backend('dup')).mac.toLowerCase(),
        JSON.parse(sh('ip', ['-n', h.netns, '-j', 'link', 'show', 'eth0']))[0].address,
      );
      const r = await send(h, 7969);
      assert.equal(r.got, r.sent, `dup: ${r.got} of ${r.sent}`);
    } finally {
      shQuiet('ip', ['addr', 'del', `${h.ip!}/32`, 'dev', 'lo']);
    }
    await c.rules.deleteRule({ name: 'dup', expectedGeneration: 0n });
  });
});
