/**
 * A change the kernel refuses changes nothing: not the kernel, not the disk, not the host's device settings,
 * not the generations, and the client (or the config file's log) is told exactly what was refused (docs/architecture.md,
 * "observe, don't assume"; a review's findings on config-file mode and the API's kernel phase):
 *  - config-file mode: a file whose links the kernel refuses reached the kernel for a moment (its rules went
 *    in first, then the links failed, then the old rules were put back): 62 of 13 222 datagrams reached a
 *    backend only the refused file named, the rule's generation went +2 per refusal, and the GRO it switched
 *    on on a veth peer and the VLAN offloads it turned off for XDP stayed changed. Refusals a check can know
 *    before anything is written (a link into a bridge, which cannot transmit native redirects; with
 *    --xdp-mode native, an ingress whose driver takes no XDP program), and one only known once the file's new
 *    interfaces are attached (in mode auto only the attach tells native from generic) and its backends'
 *    peers repaired, which must be undone whole;
 *  - a file refused once its interfaces were attached was tried again, whole, by the periodic look at the path
 *    (which saw the same write), its host changes made and put back a second time, unsaid: tried once now;
 *  - the API: a CreateRule or Connect refused in the kernel phase left the VLAN offloads of an ingress it
 *    attached turned off and the GRO of a backend's peer switched on (and recorded in host-changes.json);
 *  - a refusal for a veth whose peer cannot be inspected (an unnamed namespace only a socket keeps) said "enable GRO" while GRO
 *    was on there: it must state what was observed (the kernel's xdp-features) and that the peer's settings
 *    cannot be read.
 * Real traffic flows while each config file is refused: every datagram of the good configuration arrives,
 * none reaches the refused file's backend.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import Database from 'better-sqlite3';
import { Status } from 'nice-grpc';

import { VERIFY_MS } from '../../src/server/config-watcher.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { Protocol, UdpChecksumMode, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, shQuiet, sleep } from '../helpers/env.js';
import { Lab, NOWHERE, sealedNetns, type SealedNetns } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const PORT = 7412;

describe('a refused change changes nothing: kernel, disk, host settings, generation', kernelOnly(), () => {
  const lab = new Lab();
  const { id, topo, listeners } = lab;
  const dir = `/tmp/xdpctl-test-${id}-cfg`;
  const stateDir = `/tmp/xdpctl-test-${id}-state`;
  const bridge = `xb${id}`;
  const lone = `x${id}un`;
  let d: DaemonProcess | undefined;
  let vm: Host, vm2: Host, vm3: Host, b1: Host, b2: Host, b3: Host, x: Host, y: Host;
  let ns: SealedNetns | undefined;

  before(() => {
    ({ vm, vm2, b1, b2, vm3, b3, x, y } = lab.addHosts({
      vm: '198.18.1.1/24',
      vm2: '198.18.1.2/24',
      b1: '198.18.2.1/24',
      b2: '198.18.2.2/24',
      // The API case's own ingress and backend, which no config file touched.
      vm3: '198.18.1.3/24',
      b3: '198.18.2.3/24',
      x: '198.18.7.1/24',
      y: '198.18.7.2/24',
    }));
    sh('ip', ['link', 'add', bridge, 'type', 'bridge']);
    sh('ip', ['link', 'set', bridge, 'up']);
    mkdirSync(dir, { recursive: true });
  });
  lab.onDestroy(() => {
    ns?.kill();
    shQuiet('ip', ['link', 'del', bridge]);
    shQuiet('ip', ['link', 'del', lone]);
    rmSync(dir, { recursive: true, force: true });
  });
  after(() => lab.destroy());

  /** Every device setting the daemon may change for these changes, as `ethtool -k` shows it, and XDP. */
  const settings = () => ({
    gro: Object.fromEntries(
      [b1, b2, b3, x, y].map((h) => [h.role, /^generic-receive-offload: (\w+)/m.exec(ethtoolK(h))![1]]),
    ),
    vlan: Object.fromEntries(
      [vm, vm2, vm3].map((h) => [
        h.role,
        ethtoolK(h)
          .split('\n')
          .filter((l) => /^tx-vlan-(offload|stag-hw-insert):/.test(l)),
      ]),
    ),
    xdp: Object.fromEntries([vm2.hostIf, vm3.hostIf, bridge].map((n) => [n, xdpOf(n)?.mode ?? 0])),
  });
  const ethtoolK = (h: Host) => topo.exec(h.role, 'ethtool', ['-k', 'eth0']);
  const xdpOf = (ifname: string) => JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', ifname]))[0].xdp;
  /** What is on disk: the state store's rows and the host-changes record. */
  const disk = () => {
    const db = new Database(`${stateDir}/state.db`, { readonly: true, fileMustExist: true });
    try {
      return {
        rules: db.prepare('SELECT * FROM rules ORDER BY name').all(),
        links: db.prepare('SELECT * FROM links ORDER BY key').all(),
        hostChanges: existsSync(`${stateDir}/host-changes.json`)
          ? readFileSync(`${stateDir}/host-changes.json`, 'utf8')
          : undefined,
      };
    } finally {
      db.close();
    }
  };
  const lines = (re: RegExp) => d!.output.split('\n').filter((l) => re.test(l));
  async function until(what: string, ok: () => Promise<boolean> | boolean, ms = 8000) {
    for (const end = Date.now() + ms; Date.now() < end; await sleep(100)) if (await ok()) return;
    assert.fail(`not within ${ms} ms: ${what}`);
  }
  const ruleYaml = (ingress: Host[], backends: Host[]) =>
    `rules:\n  - name: web\n    port: ${PORT}\n    ingress: [${ingress.map((h) => h.hostIf).join(', ')}]\n` +
    `    backends:\n${backends.map((b) => `      - {ip: ${b.ip}, mac: "${b.mac}", interface: ${b.hostIf}}\n`).join('')}`;
  const good = () => `links:\n  ${x.hostIf}: ${y.hostIf}\n${ruleYaml([vm], [b1])}`;
  const generation = async () => (await d!.clients().rules.getRule({ name: 'web' })).rule!.generation;

  /**
   * What a refusal under traffic must leave as it was: every datagram to the good configuration's backend, none
   * to the refused file's, the generation, the device settings (`host`) and what is on disk (`stored`).
   */
  async function assertUnchanged(
    seen: { sent: number; atGood: number; atRefused: number },
    gen: bigint,
    host: ReturnType<typeof settings>,
    stored: ReturnType<typeof disk>,
  ) {
    assert.ok(seen.sent > 500, `traffic flowed (${seen.sent} sent)`);
    assert.equal(
      seen.atRefused,
      0,
      `no datagram reached the refused file's backend (${seen.atRefused} of ${seen.sent})`,
    );
    assert.equal(
      seen.atGood,
      seen.sent,
      `every datagram of the good configuration arrived (${seen.atGood} of ${seen.sent})`,
    );
    assert.equal(await generation(), gen, `the generation is unchanged (${gen} before)`);
    assert.deepEqual(settings(), host, 'GRO, offloads and XDP of every involved device as before');
    assert.deepEqual(disk(), stored, 'state.db and host-changes.json unchanged');
  }

  /**
   * Write `refused` over the good file while 64 flows run through the rule; returns what arrived where. The
   * good configuration's backend must get every datagram, the refused file's backend none.
   */
  async function refuseUnderTraffic(file: string, refused: string) {
    const at1 = await UdpListener.start(b1.netns, b1.ip!, PORT);
    const at2 = await UdpListener.start(b2.netns, b2.ip!, PORT);
    listeners.push(at1, at2);
    const traffic = sendUdp(vm.netns, NOWHERE, PORT, 100_000, { flows: 64, perTick: 10, tickMs: 5 });
    await sleep(500);
    const before = lines(/not applied/).length;
    writeFileSync(file, refused);
    await until('the refusal is logged', () => lines(/not applied/).length > before);
    await sleep(500);
    traffic.stop();
    const { sent } = await traffic.done;
    await sleep(300);
    const [r1, r2] = [await at1.stop(), await at2.stop()];
    return { sent, atGood: r1.unique + r1.overflow, atRefused: r2.count + r2.overflow };
  }

  it('config file: a file a check refuses (a link into a bridge) never reaches the kernel', async () => {
    const file = `${dir}/a.yaml`;
    await fresh(file);
    const gen = await generation();
    const host = settings();
    const stored = disk();

    // The file's rule adds a backend (b2, whose peer has no GRO yet) and an ingress (vm2); its link goes
    // into a bridge, which cannot transmit native redirects.
    const refused = `links:\n  ${x.hostIf}: ${bridge}\n${ruleYaml([vm, vm2], [b1, b2])}`;
    const seen = await refuseUnderTraffic(file, refused);
    await assertUnchanged(seen, gen, host, stored);
    const [line] = lines(/not applied/);
    assert.match(line, /links\[0\]: .*cannot transmit native XDP redirects/, line);
    assert.match(line, /the last good configuration keeps running/);
    assert.equal(topo.ping('x', y.ip!), true, 'the link of the good configuration forwards');
    assert.deepEqual(lines(/device settings it changed were put back/), [], 'nothing was changed to put back');
    await d!.stop();
    d = undefined;
  });

  /** A new daemon on the good file, with nothing left attached or stored by an earlier case. */
  async function fresh(file: string, args: string[] = []) {
    await d?.destroy();
    d = undefined;
    for (const h of [vm, vm2, vm3, x, y]) shQuiet('ip', ['link', 'set', 'dev', h.hostIf, 'xdp', 'off']);
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(stateDir, { recursive: true, force: true });
    writeFileSync(file, good());
    ({ d } = await lab.start(['--config', file, '--log-level', 'info', ...args]));
    await until('the good file is applied', () => lines(/"msg":"config applied"/).length === 1);
  }

  it('config file: a file refused only after its interfaces were attached and its peers repaired is undone whole, host settings too', async () => {
    const file = `${dir}/b.yaml`;
    await fresh(file);
    const gen = await generation();
    const host = settings();
    assert.equal(host.gro.b2, 'off', "b2's peer has no GRO: the refused file's check switches it on");
    assert.deepEqual(host.vlan.vm2, ['tx-vlan-offload: on', 'tx-vlan-stag-hw-insert: on']);
    assert.deepEqual(host.vlan.vm3, ['tx-vlan-offload: on', 'tx-vlan-stag-hw-insert: on']);
    const stored = disk();

    // Everything a check can see before writing passes (b2's peer is repairable; vm2 and vm3 are new, and in
    // the default mode, auto, only the attach tells whether they run native XDP). In the transaction vm2 and
    // vm3 are attached (native: their peers' VLAN offloads turned off), b2's peer gets GRO, and then vm3's
    // link into the bridge is refused: native redirects into a bridge are dropped.
    const refused =
      `links:\n  - {a: ${x.hostIf}, b: ${y.hostIf}}\n  - {a: ${vm3.hostIf}, b: ${bridge}, direction: a-to-b}\n` +
      ruleYaml([vm, vm2], [b1, b2]);
    const seen = await refuseUnderTraffic(file, refused);
    await assertUnchanged(seen, gen, host, stored);
    const [undone] = lines(/device settings it changed were put back/).map((l) => JSON.parse(l));
    assert.deepEqual(
      [...undone.reverted].sort(),
      [
        `eth0 in netns ${b2.netns}: GRO off again`,
        `eth0 in netns ${vm2.netns}: tx-vlan-offload, tx-vlan-stag-hw-insert on again`,
        `eth0 in netns ${vm3.netns}: tx-vlan-offload, tx-vlan-stag-hw-insert on again`,
      ].sort(),
      'the log names each setting put back',
    );
    const [line] = lines(/not applied/);
    assert.match(line, new RegExp(`links\\[1\\]: ${bridge} \\(bridge\\) cannot transmit native XDP redirects`), line);
    // Tried once: neither the periodic look at the path (every VERIFY_MS, which sees the write too) nor another
    // event of the same write tries the refused text again while nothing changed. Before, such a second try
    // (0.3-2 s after the refusal) attached vm2 and vm3, switched b2's peer's GRO on and turned offloads off
    // again, then put it all back, saying nothing: a look at the host in between (this test's, under load) saw
    // it half-done.
    const refusedAt = (JSON.parse(line) as { time: number }).time;
    for (let n = 0; Date.now() < refusedAt + VERIFY_MS + 1000; n++) {
      assert.deepEqual(settings(), host, `GRO, offloads and XDP as before, look ${n} after the refusal`);
      await sleep(50);
    }
    assert.equal(lines(/device settings it changed were put back/).length, 1, 'the refused file tried once');
    assert.equal(topo.ping('x', y.ip!), true, 'the link of the good configuration forwards');
    await d!.stop();
    d = undefined;
  });

  it('config file: with --xdp-mode native, a file with an ingress that cannot run native XDP (a bridge) never reaches the kernel', async () => {
    const file = `${dir}/c.yaml`;
    await fresh(file, ['--xdp-mode', 'native']);
    const gen = await generation();
    const host = settings();
    const stored = disk();
    const refused =
      `links:\n  - {a: ${x.hostIf}, b: ${y.hostIf}}\n  - {a: ${bridge}, b: ${y.hostIf}, direction: a-to-b}\n` +
      ruleYaml([vm, vm2], [b1, b2]);
    const seen = await refuseUnderTraffic(file, refused);
    await assertUnchanged(seen, gen, host, stored);
    assert.deepEqual(lines(/device settings it changed were put back/), [], 'nothing was changed to put back');
    const [line] = lines(/not applied/);
    assert.match(
      line,
      new RegExp(
        `links\\[1\\]: ${bridge} cannot run a native-mode XDP program \\(the kernel reports xdp-features: none`,
      ),
      line,
    );
    await d!.stop();
    d = undefined;
  });

  it('API: a CreateRule or Connect refused in the kernel phase leaves host settings and records as they were', async () => {
    await d?.destroy();
    d = undefined;
    for (const h of [vm, vm2, vm3, x, y]) shQuiet('ip', ['link', 'set', 'dev', h.hostIf, 'xdp', 'off']);
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(stateDir, { recursive: true, force: true });
    ({ d } = await lab.start(['--log-level', 'info']));
    const c = d.clients();
    const rule = (backends: { ip: string; mac: string; interface: string }[]): Rule => ({
      name: 'api',
      match: { protocol: Protocol.PROTOCOL_UDP, port: PORT + 1, destination: '', sourcePrefixes: [] },
      ingressInterfaces: [vm2.hostIf],
      backends: backends.map((b) => ({ ...b, weight: 1 })),
      udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
      labels: {},
      generation: 0n,
    });
    await c.rules.createRule({ rule: { ...rule([{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf }]), name: 'ok' } });
    const host = settings();
    const stored = disk();
    const fails = <T>(p: Promise<T>) =>
      p.then(
        () => assert.fail('accepted'),
        (e: { code: number; message: string }) => e,
      );

    // A rule on a new ingress (vm3: its peer's VLAN offloads on, as a new veth has them) whose first backend's
    // peer has no GRO (b3: repairable) and whose second backend is a bridge: refused; b3's peer is not
    // repaired, vm3's offloads are not left turned off, no program is left on vm3.
    assert.equal(host.gro.b3, 'off');
    assert.deepEqual(host.vlan.vm3, ['tx-vlan-offload: on', 'tx-vlan-stag-hw-insert: on']);
    const r = rule([
      { ip: b3.ip!, mac: b3.mac, interface: b3.hostIf },
      { ip: '198.18.2.9', mac: '02:00:00:00:00:09', interface: bridge },
    ]);
    const e1 = await fails(c.rules.createRule({ rule: { ...r, ingressInterfaces: [vm3.hostIf] } }));
    assert.equal(e1.code, Status.FAILED_PRECONDITION, e1.message);
    assert.deepEqual(settings(), host, 'GRO, offloads and XDP as before');
    assert.deepEqual(disk(), stored, 'state.db and host-changes.json unchanged');
    assert.match(e1.message, new RegExp(`rule\\.backends\\[1\\]\\.interface: ${bridge} \\(bridge\\) cannot transmit`));

    // validate_only says what the change would be refused for (before: "would create"), changing nothing.
    const ok = (await c.rules.getRule({ name: 'ok' })).rule!;
    const e0 = await fails(
      c.rules.applyRules({
        rules: [ok, { ...r, ingressInterfaces: [vm2.hostIf], match: { ...r.match!, port: PORT + 2 } }],
        validateOnly: true,
      }),
    );
    assert.equal(e0.code, Status.FAILED_PRECONDITION, e0.message);
    assert.match(e0.message, new RegExp(`rules\\[1\\]\\.backends\\[1\\]\\.interface: ${bridge} \\(bridge\\)`));
    const l0 = await fails(
      c.links.applyLinks({
        links: [{ a: vm2.hostIf, b: bridge, direction: LinkDirection.LINK_DIRECTION_A_TO_B }],
        validateOnly: true,
      }),
    );
    assert.equal(l0.code, Status.FAILED_PRECONDITION, l0.message);
    assert.match(l0.message, new RegExp(`links\\[0\\]: ${bridge} \\(bridge\\) cannot transmit`));
    assert.deepEqual(settings(), host, 'GRO, offloads and XDP as before');
    assert.deepEqual(disk(), stored, 'state.db and host-changes.json unchanged');

    // A link from a new ingress into a bridge: refused; the ingress's offloads as they were.
    const e2 = await fails(
      c.links.connect({ link: { a: vm3.hostIf, b: bridge, direction: LinkDirection.LINK_DIRECTION_A_TO_B } }),
    );
    assert.equal(e2.code, Status.FAILED_PRECONDITION, e2.message);
    assert.deepEqual(settings(), host, 'GRO, offloads and XDP as before');
    assert.deepEqual(disk(), stored, 'state.db and host-changes.json unchanged');
    assert.match(e2.message, new RegExp(`${bridge} \\(bridge\\) cannot transmit native XDP redirects`));

    // A link into a veth whose peer is in an unnamed namespace, with GRO on there but switched on while it
    // was down (no NAPI; the kernel announces no ndo-xmit): the refusal says what was observed, never
    // "enable GRO".
    // (One that only a socket keeps: xdpctld has no file to enter it by; one it can enter is inspected there.)
    ns = await sealedNetns();
    ns.addVeth(lone, 'eth9');
    const inNs = ns.sh;
    inNs('ethtool -K eth9 gro on && ip link set eth9 up');
    assert.match(inNs('ethtool -k eth9'), /^generic-receive-offload: on/m);
    const e3 = await fails(
      c.links.connect({ link: { a: vm2.hostIf, b: lone, direction: LinkDirection.LINK_DIRECTION_A_TO_B } }),
    );
    assert.equal(e3.code, Status.FAILED_PRECONDITION, e3.message);
    assert.doesNotMatch(e3.message, /enable GRO/, e3.message);
    assert.match(
      e3.message,
      new RegExp(`the kernel reports no ndo_xdp_xmit for ${lone} \\(xdp-features [^)]*\\), so its peer has no NAPI`),
      e3.message,
    );
    assert.match(e3.message, /unnamed network namespace .*cannot read its settings/, e3.message);
    assert.match(e3.message, /if it is on, it was switched on while the peer was down/, e3.message);
    assert.deepEqual(disk(), stored, 'state.db and host-changes.json unchanged');
    await d.stop();
    d = undefined;
  });
});
