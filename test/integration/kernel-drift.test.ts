/**
 * The contents of our pinned maps changed by another tool are found and repaired while the daemon runs
 * (a fault found: "a second daemon rewrites the maps unnoticed"; a review found: `bpftool map update` of a
 * backend's MAC sent that backend 0 of ~300 datagrams for as long as it lasted, the rule ACTIVE, health
 * SERVING, nothing logged; `xdpctl rules update web` with the same spec said "unchanged"). Real daemons,
 * real `bpftool` writes into the pins, real datagrams through namespaces:
 *  - the reconciler compares what the kernel holds for every rule with what it should hold, rewrites what
 *    differs and logs it once, naming the rule, the backend or entry, the field, the kernel's value and the
 *    desired one: a backend's destination MAC, a deleted match entry, a match entry no rule holds, the
 *    per-port index; a link's devmap entry pointed elsewhere or deleted;
 *  - a map another tool froze (`bpftool map freeze`: the daemon can no longer write it) leaves the
 *    difference unrepaired: the datapath health service says NOT_SERVING, naming it, for as long as it lasts;
 *  - UpdateRule with the rule's own specification (the reconciler's timer off, so only the call can see it)
 *    compares and rewrites, and its reply (and the CLI) says what was rewritten instead of "unchanged";
 *    ApplyRules says CHANGE_ACTION_REPAIRED for such a rule.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';

import { createChannel, createClient, type Channel } from 'nice-grpc';
import { pino } from 'pino';

import { ChangeAction } from '../../src/gen/xdpctl/v1/common.js';
import { Protocol, RuleServiceDefinition, UdpChecksumMode, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { capacityForRules, Daemon, DEFAULTS } from '../../src/server/daemon.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess, xdpctl, type Clients } from '../helpers/daemon.js';
import { kernelOnly, runId, sh, sleep, until } from '../helpers/env.js';
import { backendOf, Lab, udpRule } from '../helpers/lab.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const BAD_MAC = '02:de:ad:be:ef:01';
const REWRITTEN = 'kernel entries differed from the desired state: rewritten';

type Line = { level: number; msg: string; repaired?: string[]; differed?: string[] };

/** bpftool's hex byte list of a number's little-endian u32. */
const u32 = (n: number) => [n & 255, (n >> 8) & 255, (n >> 16) & 255, (n >>> 24) & 255].map(String);
const hex = (bytes: number[]) => bytes.map(String);

/** A pinned map's entries as bpftool shows them (keys and values as byte lists). */
function dump(pin: string): { key: string[]; value: string[] }[] {
  return JSON.parse(sh('bpftool', ['-j', 'map', 'dump', 'pinned', pin], { maxBuffer: 1 << 28 })) as {
    key: string[];
    value: string[];
  }[];
}
const bytesOf = (x: string[]) => x.map((b) => parseInt(b, 16));
const macOf = (b: number[]) => b.map((x) => x.toString(16).padStart(2, '0')).join(':');

/** The backend entry (id and bytes) whose destination IP is `ip`. */
function backendEntry(pinRoot: string, ip: string): { id: number; value: number[] } {
  const want = ip.split('.').map(Number);
  for (const e of dump(`${pinRoot}/maps/backends`)) {
    const v = bytesOf(e.value);
    if (v[20] === 2 && want.every((x, i) => v[24 + i] === x))
      return { id: Buffer.from(bytesOf(e.key)).readUInt32LE(0), value: v };
  }
  throw new Error(`no backend entry for ${ip}`);
}

/** Another tool (bpftool) writes BAD_MAC as the destination MAC of the backend entry for `ip`: the entry before. */
function tamperMac(pinRoot: string, ip: string): { id: number; value: number[] } {
  const e = backendEntry(pinRoot, ip);
  const bad = [...BAD_MAC.split(':').map((x) => parseInt(x, 16)), ...e.value.slice(6)];
  sh('bpftool', ['map', 'update', 'pinned', `${pinRoot}/maps/backends`, 'key', ...u32(e.id), 'value', ...hex(bad)]);
  return e;
}

describe('maps changed by another tool are found, repaired and reported', kernelOnly(), () => {
  const lab = new Lab();
  const { topo, listeners } = lab;
  let d: DaemonProcess | undefined;
  let c: Clients;
  let vm: Host, b1: Host, b2: Host, h1: Host, h2: Host;

  before(async () => {
    ({ vm, b1, b2, h1, h2 } = lab.addHosts({
      vm: '198.18.1.1/24',
      b1: '198.18.2.1/24',
      b2: '198.18.3.1/24',
      h1: '198.18.6.1/24',
      h2: '198.18.6.2/24',
    }));
    ({ d, c } = await lab.start(['--log-level', 'info']));
  });
  after(() => lab.destroy());

  const rule = (port: number): Rule => udpRule('web', port, [vm.hostIf], [backendOf(b1), backendOf(b2)]);
  /** Datagrams of 40 flows to `port`: how many each backend received. */
  async function delivered(port: number, n = 200): Promise<[number, number]> {
    const l1 = await UdpListener.start(b1.netns, b1.ip!, port);
    const l2 = await UdpListener.start(b2.netns, b2.ip!, port);
    listeners.push(l1, l2);
    await sendUdp(vm.netns, NOWHERE, port, n, { flows: 40 }).done;
    await sleep(200);
    return [(await l1.stop()).unique, (await l2.stop()).unique];
  }
  const lines = (from: number) => d!.logLines<Line>(from);
  const rewritten = (from: number) => lines(from).filter((l) => l.msg === REWRITTEN);
  const datapathHealth = async () => (await c.health.check({ service: 'xdpctl.datapath' })).status;

  it("a backend's destination MAC overwritten with bpftool: found within seconds, rewritten, logged once naming rule, backend, field, kernel and desired values; both backends receive again", async () => {
    const port = 7801;
    await c.rules.createRule({ rule: rule(port) });
    const [x1, x2] = await delivered(port);
    assert.ok(x1 > 0 && x2 > 0 && x1 + x2 === 200, `both backends receive (${x1} + ${x2})`);
    // Nothing differs: nothing is rewritten or logged, pass after pass.
    const quiet = d!.output.length;
    await sleep(2500);
    assert.deepEqual(rewritten(quiet), [], 'no repair while the kernel holds the desired state');

    const at = d!.output.length;
    assert.equal(macOf(backendEntry(d!.pinRoot, b2.ip!).value.slice(0, 6)), b2.mac.toLowerCase());
    const e = tamperMac(d!.pinRoot, b2.ip!);
    await until('the reconciler rewrote the entry', () => rewritten(at).length > 0, 4000);
    const [line] = rewritten(at);
    assert.equal(line.level, 40, 'a warning');
    assert.deepEqual(line.repaired, [
      `rule web: backend ${b2.ip}@${b2.hostIf} (map backends, entry ${e.id}): destination MAC: kernel ${BAD_MAC}, desired ${b2.mac.toLowerCase()}`,
    ]);
    assert.deepEqual(backendEntry(d!.pinRoot, b2.ip!).value, e.value, 'the entry holds the desired bytes again');
    const [y1, y2] = await delivered(port);
    assert.ok(y2 > 0 && y1 + y2 === 200, `both backends receive again (${y1} + ${y2})`);
    await sleep(2500);
    assert.equal(rewritten(at).length, 1, 'logged once');
    assert.equal(await datapathHealth(), 1, 'SERVING: nothing differs now');
  });

  it('a match entry deleted, one no rule holds added, the per-port index zeroed: each found, named and rewritten; traffic flows again', async () => {
    const port = 7801;
    const pin = `${d!.pinRoot}/maps`;
    const [entry] = dump(`${pin}/rule_match`);
    const slot = Buffer.from(bytesOf(entry.value)).readUInt32LE(0);
    let at = d!.output.length;
    sh('bpftool', ['map', 'delete', 'pinned', `${pin}/rule_match`, 'key', ...entry.key]);
    await until('the match entry put back', () => rewritten(at).length > 0, 4000);
    const [line] = rewritten(at);
    // Only the match entry: bpftool's delete left the port's index entry as it was (counting the entry), and
    // putting the entry back does not count it a second time (before: the repair's own +1 was then "found" as
    // `port index (map rule_ports, port 7801): kernel {"any":2,...}, desired {"any":1,...}`).
    assert.equal(line.repaired!.length, 1, JSON.stringify(line.repaired));
    assert.match(
      line.repaired![0],
      new RegExp(
        `^rule web: match entry \\(map rule_match: ingress ${vm.hostIf} ifindex \\d+, UDP port ${port}, any destination\\): ` +
          `kernel absent, desired rule slot ${slot}$`,
      ),
    );
    assert.equal(dump(`${pin}/rule_match`).length, 1);
    const [y1, y2] = await delivered(port);
    assert.equal(y1 + y2, 200, 'forwarded again');
    assert.deepEqual(
      lines(at)
        .flatMap((l) => l.repaired ?? [])
        .filter((r) => r.includes('rule_ports')),
      [],
      'no per-port index line: nothing wrote it',
    );

    // A match entry for another port, pointing at the rule's slot, that no rule holds (it took port 7802's
    // datagrams to the rule's backends): deleted.
    at = d!.output.length;
    const key = bytesOf(entry.key);
    const other = [...key];
    other[4] = 7802 >> 8; // dport (network order) at offset 4
    other[5] = 7802 & 255;
    sh('bpftool', ['map', 'update', 'pinned', `${pin}/rule_match`, 'key', ...hex(other), 'value', ...entry.value]);
    await until('the foreign match entry deleted', () => rewritten(at).length > 0, 4000);
    assert.match(
      rewritten(at)[0].repaired!.join('\n'),
      new RegExp(
        `^match entry \\(map rule_match: ingress ${vm.hostIf} ifindex \\d+, UDP port 7802, any destination\\): ` +
          `kernel rule slot ${slot}, desired absent \\(no rule holds it\\): deleted$`,
        'm',
      ),
    );
    assert.equal(dump(`${pin}/rule_match`).length, 1, "only the rule's own entry");
    // bpftool wrote the match entry only: its delete leaves port 7802's index entry as bpftool left it (zero).
    assert.equal(rewritten(at)[0].repaired!.length, 1, JSON.stringify(rewritten(at)[0].repaired));

    // The per-port index zeroed (the datapath then skips every lookup for the port: nothing forwarded).
    at = d!.output.length;
    sh('bpftool', [
      'map',
      'update',
      'pinned',
      `${pin}/rule_ports`,
      'key',
      ...u32(port),
      'value',
      ...Array(16).fill('0'),
    ]);
    await until('the index rewritten', () => rewritten(at).length > 0, 4000);
    assert.deepEqual(
      rewritten(at)[0].repaired!.map((l) => l.replace(/desired .*/, 'desired')),
      [`port index (map rule_ports, port ${port}): kernel {"any":0,"dst":0}, desired`],
    );
    const [z1, z2] = await delivered(port);
    assert.equal(z1 + z2, 200, 'forwarded again');
  });

  it("a link's devmap entry pointed elsewhere or deleted: named (kernel vs desired) and re-applied; pings pass again", async () => {
    await c.links.connect({ link: { a: h1.hostIf, b: h2.hostIf } });
    assert.equal(topo.ping('h1', h2.ip!), true);
    const pin = `${d!.pinRoot}/maps/xc_links`;
    const from = Number(sh('cat', [`/sys/class/net/${h1.hostIf}/ifindex`]));
    const to = Number(sh('cat', [`/sys/class/net/${h2.hostIf}/ifindex`]));
    let at = d!.output.length;
    sh('bpftool', ['map', 'update', 'pinned', pin, 'key', ...u32(from), 'value', ...u32(1)]); // to lo
    const differed = () => lines(at).filter((l) => l.msg.startsWith('link entries in the kernel differ'));
    await until('the link re-applied', () => differed().length > 0, 4000);
    assert.deepEqual(differed()[0].differed, [
      `link direction ${h1.hostIf} -> ${h2.hostIf} (map xc_links, ifindex ${from}): kernel egress ifindex 1, desired egress ifindex ${to}`,
    ]);
    assert.equal(topo.ping('h1', h2.ip!), true, 'forwards again');
    at = d!.output.length;
    sh('bpftool', ['map', 'delete', 'pinned', pin, 'key', ...u32(to)]);
    await until('the link re-applied', () => differed().length > 0, 4000);
    assert.deepEqual(differed()[0].differed, [
      `link direction ${h2.hostIf} -> ${h1.hostIf} (map xc_links, ifindex ${to}): kernel absent, desired egress ifindex ${from}`,
    ]);
    assert.equal(topo.ping('h2', h1.ip!), true, 'forwards again');
    await c.links.disconnect({ a: h1.hostIf, b: h2.hostIf });
  });

  it('a difference the daemon cannot rewrite (another tool froze the map): health NOT_SERVING naming it, while it lasts', async () => {
    const port = 7801;
    const at = d!.output.length;
    tamperMac(d!.pinRoot, b1.ip!);
    // Frozen: no syscall may write it any more (BPF_MAP_FREEZE), the daemon's included.
    sh('bpftool', ['map', 'freeze', 'pinned', `${d!.pinRoot}/maps/backends`]);
    const errors = () => lines(at).filter((l) => l.level === 50 && /could not be compared .* or rewritten/.test(l.msg));
    // Both, whichever comes first: health may already be NOT_SERVING for an earlier test's reason when the
    // freeze happens (a CI run saw the wait end after 28 ms, before the pass that meets the frozen map).
    await until(
      'NOT_SERVING and the error logged',
      async () => errors().length > 0 && (await datapathHealth()) === 2,
      4000,
    );
    assert.equal(errors().length, 1, 'logged once');
    assert.match(
      errors()[0].msg,
      /kernel entries of the rules could not be compared with the desired state or rewritten: /,
    );
    // Named as frozen, from what the kernel shows (the map fd's fdinfo), not a bare EPERM.
    assert.match(
      errors()[0].msg,
      /map backends refuses writes: it is frozen \(fdinfo frozen: 1; another tool ran bpftool map freeze\)/,
    );
    await sleep(2500);
    assert.equal(await datapathHealth(), 2, 'still NOT_SERVING: still not rewritten');
    assert.equal(
      lines(at).filter((l) => l.level === 50 && /could not be compared/.test(l.msg)).length,
      1,
      'still logged once',
    );
    const [y1] = await delivered(port);
    assert.equal(y1, 0, 'what the status says: b1 receives nothing');
  });
});

describe(
  'UpdateRule / ApplyRules with the same specification compare the kernel and say what they rewrote',
  kernelOnly(),
  () => {
    const id = runId();
    const topo = new Topology(id);
    const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
    const socket = `/tmp/xdpctl-test-${id}.sock`;
    const logged: Line[] = [];
    let daemon: Daemon | undefined;
    let channel: Channel | undefined;
    let vm: Host, b1: Host;
    const port = 7811;

    before(async () => {
      vm = topo.addHost('vm', '198.18.1.1/24');
      b1 = topo.addHost('b1', '198.18.2.1/24');
      topo.routeToXdp('vm');
      const sink = new Writable({
        write(chunk, _enc, done) {
          for (const l of String(chunk).split('\n').filter(Boolean)) logged.push(JSON.parse(l) as Line);
          done();
        },
      });
      daemon = await Daemon.start({
        listen: [`unix:${socket}`],
        pinRoot,
        objectPath: DEFAULTS.objectPath,
        descriptorPath: DEFAULTS.descriptorPath,
        mode: 'native',
        fixVethPeers: true,
        cleanupOnExit: true,
        capacity: capacityForRules(16),
        log: pino({ level: 'info' }, sink),
        resyncMs: 0, // no reconciler pass: only the call itself can see the difference
      });
      channel = createChannel(`unix://${socket}`);
    });
    after(async () => {
      channel?.close();
      await daemon?.stop();
      topo.destroy();
      XdpDatapath.unpinAll(pinRoot);
    });

    async function delivered(n = 20): Promise<number> {
      const l = await UdpListener.start(b1.netns, b1.ip!, port);
      try {
        await sendUdp(vm.netns, NOWHERE, port, n).done;
        await sleep(200);
      } catch (e) {
        await l.stop();
        throw e;
      }
      return (await l.stop()).unique;
    }
    const tamper = () => tamperMac(pinRoot, b1.ip!).id;
    const cli = (args: string[]) => xdpctl(`unix:${socket}`, args);

    it('UpdateRule: the reply names what was rewritten, the generation stays; traffic flows again; the CLI says so', async () => {
      const rules = createClient(RuleServiceDefinition, channel!);
      const spec: Rule = {
        name: 'web',
        match: { protocol: Protocol.PROTOCOL_UDP, port, destination: '', sourcePrefixes: [] },
        ingressInterfaces: [vm.hostIf],
        backends: [{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf, weight: 1 }],
        udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
        labels: {},
        generation: 0n,
      };
      const created = (await rules.createRule({ rule: spec })).rule!;
      assert.equal(await delivered(), 20);
      const same = await rules.updateRule({ rule: { ...spec, generation: created.generation } });
      assert.deepEqual(same.repaired, [], 'the kernel held it as desired: nothing rewritten');

      const backend = tamper();
      assert.equal(await delivered(), 0, 'the tampered MAC: nothing arrives');
      const r = await rules.updateRule({ rule: { ...spec, generation: created.generation } });
      assert.equal(r.rule!.generation, created.generation, 'nothing stored: same generation');
      assert.deepEqual(r.repaired, [
        `backend ${b1.ip}@${b1.hostIf} (map backends, entry ${backend}): destination MAC: kernel ${BAD_MAC}, desired ${b1.mac.toLowerCase()}`,
      ]);
      assert.equal(logged.filter((l) => l.msg === REWRITTEN).length, 1, 'and the daemon logged it');
      assert.equal(await delivered(), 20, 'forwards again');

      tamper();
      const out = await cli(['rules', 'update', 'web', '--port', String(port)]);
      assert.equal(out.code, 0, out.stderr);
      assert.match(
        out.stdout,
        new RegExp(
          `^rule web: specification unchanged \\(generation ${created.generation}\\), but the kernel held it otherwise: rewritten:\\n` +
            `  backend ${b1.ip}@${b1.hostIf} \\(map backends, entry ${backend}\\): destination MAC: kernel ${BAD_MAC}, `,
        ),
      );
      assert.doesNotMatch(out.stdout, /^rule web unchanged/);
      assert.equal(await delivered(), 20, 'forwards again');
      const again = await cli(['rules', 'update', 'web', '--port', String(port)]);
      assert.match(again.stdout, new RegExp(`^rule web unchanged \\(generation ${created.generation}\\)`));
    });

    it('ApplyRules: a rule whose kernel entries differed is CHANGE_ACTION_REPAIRED with the lines, not UNCHANGED', async () => {
      const rules = createClient(RuleServiceDefinition, channel!);
      const cur = (await rules.getRule({ name: 'web' })).rule!;
      const backend = tamper();
      const r = await rules.applyRules({ rules: [cur], validateOnly: false });
      assert.deepEqual(
        r.changes.map((x) => [x.name, x.action, x.repaired]),
        [
          [
            'web',
            ChangeAction.CHANGE_ACTION_REPAIRED,
            [
              `backend ${b1.ip}@${b1.hostIf} (map backends, entry ${backend}): destination MAC: kernel ${BAD_MAC}, desired ${b1.mac.toLowerCase()}`,
            ],
          ],
        ],
      );
      assert.equal(await delivered(), 20, 'forwards again');
      const r2 = await rules.applyRules({ rules: [cur], validateOnly: false });
      assert.deepEqual(
        r2.changes.map((x) => [x.name, x.action]),
        [['web', ChangeAction.CHANGE_ACTION_UNCHANGED]],
      );
    });
  },
);
