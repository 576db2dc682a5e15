/**
 * The per-interface flags word (map if_flags) written by another tool is compared and rewritten like every
 * other kernel entry of ours (a review found: `bpftool map update pinned PIN/maps/if_flags key <ingress>
 * value 0x04 0 0 0`, the generic-mode bit on an ingress that runs native, sent 0 of 100 datagrams of a
 * sender with tx-checksumming on to the backend, UdpInCsumErrors +100, for good; the rule ACTIVE, nothing
 * logged). Real daemon, real `bpftool` and `ip` changes, real datagrams and pings through namespaces:
 *  - the generic-mode bit set on a native ingress: found within a pass, rewritten, logged once naming the
 *    interface, the kernel's word and the desired one; the backend receives every datagram again with valid
 *    checksums (UdpInCsumErrors unchanged);
 *  - our program moved to generic mode by another tool (`ip link set ... xdpgeneric pinned`): the bit follows
 *    the observed mode (set), and is cleared when ours runs natively again;
 *  - a link direction's counter index cleared from its ingress's word, or pointed at the other direction's
 *    counters: the recorded index is put back (logged), the direction's counters go on from where they were
 *    (before: cleared, a new index from 0; pointed elsewhere, never noticed: two directions in one entry); its
 *    counters themselves overwritten (xc_stats, which nothing can restore): the decrease said once, in the log
 *    and the link's warnings;
 *  - a per-port index entry (map rule_ports) on a port no rule uses, holding an any-destination count of one
 *    whose fold names a rule's slot (the datapath takes such a fold for the match entry itself, so that
 *    port's datagrams went to the rule's backends): zeroed by the 30 s sweep, logged.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Protocol, UdpChecksumMode, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, sleep, until } from '../helpers/env.js';
import { Lab, moveToGenericMode } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const REWRITTEN = 'kernel entries differed from the desired state: rewritten';

type Line = { level: number; msg: string; repaired?: string[] };

/** bpftool's byte list of a number's little-endian u32. */
const u32 = (n: number) => [n & 255, (n >> 8) & 255, (n >> 16) & 255, (n >>> 24) & 255].map(String);
const ifindexOf = (name: string) => Number(sh('cat', [`/sys/class/net/${name}/ifindex`]).trim());
const xdpMode = (name: string) =>
  (JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', name]))[0].xdp?.mode ?? 0) as number;

describe('the interface flags (if_flags) are compared with the desired state and rewritten', kernelOnly(), () => {
  const lab = new Lab();
  const { topo, listeners } = lab;
  let d: DaemonProcess | undefined;
  let c: Clients;
  let vm: Host, b1: Host, h1: Host, h2: Host;

  before(async () => {
    ({ vm, b1, h1, h2 } = lab.addHosts({
      vm: '198.18.1.1/24',
      b1: '198.18.2.1/24',
      h1: '198.18.6.1/24',
      h2: '198.18.6.2/24',
    }));
    ({ d, c } = await lab.start(['--xdp-mode', 'auto']));
  });
  after(() => lab.destroy());

  const flagsPin = () => `${d!.pinRoot}/maps/if_flags`;
  /** The if_flags word of an interface, as bpftool reads it from the pin. */
  const flags = (name: string): number => {
    const v = JSON.parse(sh('bpftool', ['-j', 'map', 'lookup', 'pinned', flagsPin(), 'key', ...u32(ifindexOf(name))]))
      .value as string[];
    return Buffer.from(v.map((b) => parseInt(b, 16))).readUInt32LE(0);
  };
  const writeFlags = (name: string, word: number) =>
    sh('bpftool', ['map', 'update', 'pinned', flagsPin(), 'key', ...u32(ifindexOf(name)), 'value', ...u32(word)]);
  const lines = (from: number) => d!.logLines<Line>(from);
  const rewritten = (from: number) => lines(from).filter((l) => l.msg === REWRITTEN);

  const port = 7821;
  const rule: Rule = {
    name: 'web',
    match: { protocol: Protocol.PROTOCOL_UDP, port, destination: '', sourcePrefixes: [] },
    ingressInterfaces: [],
    backends: [],
    // The default: the checksum updated, a partial one (an offloaded sender's) completed in native mode.
    udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_UNSPECIFIED,
    labels: {},
    generation: 0n,
  };
  /** 100 datagrams of 20 flows from vm (tx-checksumming on, the veth default): how many b1 received intact. */
  async function delivered(n = 100): Promise<{ got: number; csumErrors: number }> {
    const errors = topo.snmp('b1', 'Udp', 'InCsumErrors');
    const l = await UdpListener.start(b1.netns, b1.ip!, port);
    listeners.push(l);
    await sendUdp(vm.netns, NOWHERE, port, n, { flows: 20 }).done;
    await sleep(200);
    return { got: (await l.stop()).unique, csumErrors: topo.snmp('b1', 'Udp', 'InCsumErrors') - errors };
  }

  it('the generic-mode bit written on a native ingress: rewritten within a pass, logged once; the backend receives every datagram with a valid checksum', async () => {
    const tx = sh('ip', ['netns', 'exec', vm.netns, 'ethtool', '-k', 'eth0']);
    assert.match(tx, /^tx-checksumming: on/m, 'the sender offloads its checksums (CHECKSUM_PARTIAL)');
    await c.rules.createRule({
      rule: {
        ...rule,
        ingressInterfaces: [vm.hostIf],
        backends: [{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf, weight: 1 }],
      },
    });
    assert.equal(xdpMode(vm.hostIf), 1, 'native (XDP_ATTACHED_DRV)');
    assert.equal(flags(vm.hostIf), 0, 'no flag: native, no link');
    assert.deepEqual(await delivered(), { got: 100, csumErrors: 0 });
    const quiet = d!.output.length;
    await sleep(2500);
    assert.deepEqual(rewritten(quiet), [], 'nothing rewritten while the kernel holds the desired state');

    const at = d!.output.length;
    writeFlags(vm.hostIf, 0x4);
    await until('the flags rewritten', () => rewritten(at).length > 0, 4000);
    const [line] = rewritten(at);
    assert.equal(line.level, 40, 'a warning');
    assert.deepEqual(line.repaired, [
      `interface flags of ${vm.hostIf} (map if_flags, ifindex ${ifindexOf(vm.hostIf)}): kernel 0x4 (generic mode), ` +
        'desired 0x0 (none): our program runs in native mode there',
    ]);
    assert.equal(flags(vm.hostIf), 0, 'the word holds the desired value again');
    assert.deepEqual(await delivered(), { got: 100, csumErrors: 0 }, 'every datagram, every checksum valid');
    await sleep(2500);
    assert.equal(rewritten(at).length, 1, 'logged once');
  });

  it('our program moved to generic mode by another tool: the bit follows the mode the kernel reports, both ways', async () => {
    const at = await moveToGenericMode(d!, vm.hostIf);
    assert.equal(xdpMode(vm.hostIf), 2, 'generic now (XDP_ATTACHED_SKB)');
    await until('the flags rewritten', () => rewritten(at).length > 0, 4000);
    assert.equal(flags(vm.hostIf), 0x4, 'the generic-mode bit set');
    assert.deepEqual(
      rewritten(at).flatMap((l) => l.repaired),
      [
        `interface flags of ${vm.hostIf} (map if_flags, ifindex ${ifindexOf(vm.hostIf)}): kernel 0x0 (none), ` +
          'desired 0x4 (generic mode): our program runs in generic mode there',
      ],
    );
    assert.deepEqual(await delivered(), { got: 100, csumErrors: 0 }, 'generic mode: every datagram intact');

    // The other tool's generic attachment removed: ours re-attached natively, the bit cleared with it.
    sh('ip', ['link', 'set', 'dev', vm.hostIf, 'xdpgeneric', 'off']);
    await until('native again', () => xdpMode(vm.hostIf) === 1, 4000);
    await until('the bit cleared', () => flags(vm.hostIf) === 0, 4000);
    assert.deepEqual(await delivered(), { got: 100, csumErrors: 0 }, 'native mode: every datagram intact');
  });

  it("a link direction's counter index cleared from its word, or pointed at the other direction's counters: put back, the counters go on", async () => {
    await c.links.connect({ link: { a: h1.hostIf, b: h2.hostIf } });
    assert.equal(topo.ping('h1', h2.ip!, 5), true);
    const counters = async () => {
      const { counters: k } = await c.counters.getCounters({ filter: { interfaces: [h1.hostIf] } });
      const of = (from: string) => Number(k!.links.find((l) => l.fromInterface === from)?.packets ?? -1);
      return { ab: of(h1.hostIf), ba: of(h2.hostIf) };
    };
    const before = await counters();
    assert.ok(before.ab >= 5 && before.ba >= 5, JSON.stringify(before));
    const word = flags(h1.hostIf);
    const other = flags(h2.hostIf);
    assert.equal(word & 0x3, 0x3, 'cross-connect and link counters');
    assert.notEqual(word >>> 8, other >>> 8, 'one index per direction');
    const ifindex = ifindexOf(h1.hostIf);

    // The index cleared (only the cross-connect bit left).
    let at = d!.output.length;
    writeFlags(h1.hostIf, 0x1);
    await until('the word rewritten', () => rewritten(at).length > 0, 4000);
    assert.equal(flags(h1.hostIf), word, 'the index it had (before: a new one, its counters from 0)');
    assert.deepEqual(rewritten(at)[0].repaired, [
      `interface flags of ${h1.hostIf} (map if_flags, ifindex ${ifindex}): kernel 0x1 (cross-connect), ` +
        `desired 0x${word.toString(16)} (cross-connect, link counters at ${word >>> 8}): its link counters are at ${word >>> 8}`,
    ]);
    const kept = await counters();
    assert.ok(kept.ab >= before.ab, `the counters go on from where they were (${before.ab} -> ${kept.ab})`);

    // The index pointed at the other direction's counters: both directions would count into one entry.
    at = d!.output.length;
    writeFlags(h1.hostIf, ((word & 0xff) | (other & ~0xff)) >>> 0);
    await until('the word rewritten', () => rewritten(at).length > 0, 4000);
    assert.deepEqual(rewritten(at)[0].repaired, [
      `interface flags of ${h1.hostIf} (map if_flags, ifindex ${ifindex}): kernel 0x${(((word & 0xff) | (other & ~0xff)) >>> 0).toString(16)} ` +
        `(cross-connect, link counters at ${other >>> 8}), desired 0x${word.toString(16)} (cross-connect, link counters at ${word >>> 8}): ` +
        `its link counters are at ${word >>> 8}`,
    ]);
    assert.equal(flags(h1.hostIf), word);
    assert.equal(topo.ping('h1', h2.ip!, 5), true);
    const after = await counters();
    assert.ok(after.ab >= kept.ab + 5, `h1 -> h2 counted in its own entry (${kept.ab} -> ${after.ab})`);
    assert.ok(after.ba >= kept.ba + 5 && after.ba < kept.ba + 20, `h2 -> h1 only its own (${kept.ba} -> ${after.ba})`);

    // The counters themselves overwritten (zeroed) by another tool: nothing can put back what they held; the
    // decrease is said once (log, the link's warnings), and they count on from there.
    at = d!.output.length;
    const stats = `${d!.pinRoot}/maps/xc_stats`;
    const size = (JSON.parse(sh('bpftool', ['-j', 'map', 'show', 'pinned', stats])) as { bytes_value: number })
      .bytes_value;
    sh('bpftool', ['map', 'update', 'pinned', stats, 'key', ...u32(word >>> 8), 'value', ...Array(size).fill('0')]);
    const went = new RegExp(`the counters of link direction ${h1.hostIf} -> ${h2.hostIf} went down at `);
    await until('the decrease said', () => lines(at).some((l) => went.test(l.msg)), 4000);
    const said = lines(at).filter((l) => went.test(l.msg));
    assert.equal(said.length, 1);
    assert.equal(said[0].level, 40);
    assert.match(
      said[0].msg,
      new RegExp(
        `\\(packets \\d+ -> \\d+, bytes \\d+ -> \\d+\\): their kernel entry \\(map xc_stats\\) was written by another tool; they count on from there$`,
      ),
    );
    const link = (await c.links.listLinks({})).links.find((x) => x.a === h1.hostIf)!;
    assert.ok(
      link.status!.warnings.some((w) => went.test(w)),
      `among the link's warnings: ${JSON.stringify(link.status!.warnings)}`,
    );
    assert.equal(topo.ping('h1', h2.ip!, 3), true);
    const later = await counters();
    assert.ok(later.ab >= 3 && later.ab < after.ab, `they count on from 0 (${later.ab})`);
    await sleep(2500);
    assert.equal(lines(at).filter((l) => went.test(l.msg)).length, 1, 'said once');
    await c.links.disconnect({ a: h1.hostIf, b: h2.hostIf });
  });

  it("a per-port index entry on a port no rule uses, naming a rule's slot: zeroed within a sweep (30 s), logged; that port's datagrams stay with the host", async () => {
    const stray = 7822;
    const pin = `${d!.pinRoot}/maps`;
    const entries = JSON.parse(sh('bpftool', ['-j', 'map', 'dump', 'pinned', `${pin}/rule_match`])) as {
      value: string[];
    }[];
    assert.equal(entries.length, 1, "web's one match entry");
    const slot = Buffer.from(entries[0].value.map((b) => parseInt(b, 16))).readUInt32LE(0);
    // {any: 1, dst: 0, any_fold: ingress vm, slot, count 1}: the datapath takes the fold for the entry itself.
    const value = Buffer.alloc(16);
    value.writeUInt32LE(1, 0);
    value.writeUInt32LE(ifindexOf(vm.hostIf), 8);
    value.writeUInt32LE((slot | (1 << 24)) >>> 0, 12);
    const at = d!.output.length;
    sh('bpftool', [
      'map',
      'update',
      'pinned',
      `${pin}/rule_ports`,
      'key',
      ...u32(stray),
      'value',
      ...[...value].map(String),
    ]);
    await until('the entry zeroed', () => rewritten(at).length > 0, 45_000); // a sweep every 30 s, at a comparison
    assert.deepEqual(rewritten(at)[0].repaired, [
      `port index (map rule_ports, port ${stray}): kernel {"any":1,"dst":0,"xorIfindex":${ifindexOf(vm.hostIf)}${slot ? `,"xorSlot":${slot}` : ''}}, ` +
        'desired {"any":0,"dst":0} (no match entry uses the port)',
    ]);
    const l = await UdpListener.start(b1.netns, b1.ip!, stray);
    listeners.push(l);
    await sendUdp(vm.netns, NOWHERE, stray, 50, { flows: 10 }).done;
    await sleep(200);
    assert.equal((await l.stop()).unique, 0, "no rule for the port: nothing reaches web's backend");
  });
});
