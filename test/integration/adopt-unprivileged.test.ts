/**
 * Ours or foreign, decided from what the daemon can observe without CAP_SYS_ADMIN (docs/architecture.md, promises 1, 4
 * and 6; the documented container runs with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON only). Opening a
 * program by id (BPF_PROG_GET_FD_BY_ID) needs CAP_SYS_ADMIN; the programs pinned under the daemon's own
 * pin root (BPF_OBJ_GET, then their info) do not. With real daemons, real traffic:
 *  - a --max-rules migration and a program upgrade started without CAP_SYS_ADMIN swap the previous
 *    daemon's program (pinned by it) for the new one: the interface runs the new program on exactly the
 *    pinned maps, a delete takes effect, and a later restart with no rules leaves nothing attached
 *    (before: the old program was taken for a foreign one and kept forwarding on maps no longer pinned);
 *  - an attached program the daemon cannot identify (not pinned under its pin root, and no
 *    CAP_SYS_ADMIN to open it by id) is reported as such, never as ours nor as green.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { Protocol, RuleState, UdpChecksumMode, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, OBJECT_NEXT, ROOT, runId, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const PORT = 7999;
const { SERVING, NOT_SERVING } = HealthCheckResponse_ServingStatus;
/** The documented container's capabilities: no CAP_SYS_ADMIN (root uid, bounding set limited). */
const CONTAINER = ['setpriv', '--bounding-set', '-all,+bpf,+net_admin,+perfmon', '--'];

describe('ours or foreign without CAP_SYS_ADMIN', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const daemons: DaemonProcess[] = [];
  let vm: Host, b: Host;
  let n = 0;
  const bridge = `xb${id}`;

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b = topo.addHost('b', '198.18.2.1/24');
    topo.routeToXdp('vm');
  });
  // A test that fails leaves nothing to the next: its daemons go, and whatever they attached.
  afterEach(async () => {
    for (const d of daemons.splice(0)) await d.destroy();
    for (const h of [vm, b])
      for (const m of ['xdpgeneric', 'xdpdrv']) shQuiet('ip', ['link', 'set', 'dev', h.hostIf, m, 'off']);
  });
  after(async () => {
    for (const d of daemons) await d.destroy();
    shQuiet('ip', ['link', 'del', bridge]);
    topo.destroy();
    for (let i = 0; i <= n; i++) {
      XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}${i}`);
      rmSync(`/tmp/xdpctl-test-${id}${i}-state`, { recursive: true, force: true });
    }
  });

  /** A daemon on datapath number `k` (pin root and state directory), generic mode. */
  const start = async (k: number, extra: string[] = [], wrap: string[] = [], env: NodeJS.ProcessEnv = {}) => {
    const d = await DaemonProcess.start(
      `${id}${k}`,
      ['--xdp-mode', 'generic', '--log-level', 'info', ...extra],
      env,
      wrap,
    );
    daemons.push(d);
    return d;
  };
  /** Stop without --cleanup-on-exit: the program stays attached, the pins stay (a restart, an upgrade). */
  const stop = async (d: DaemonProcess) => {
    assert.equal(await d.stop(), 0);
    daemons.splice(daemons.indexOf(d), 1);
  };
  const rule = (ingress = vm): Rule => ({
    name: 'web',
    match: { protocol: Protocol.PROTOCOL_UDP, port: PORT, destination: '', sourcePrefixes: [] },
    ingressInterfaces: [ingress.hostIf],
    backends: [{ ip: b.ip!, mac: b.mac, interface: b.hostIf, weight: 1 }],
    udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
    labels: {},
    generation: 0n,
  });
  /** Datagrams sent and delivered to the backend. */
  const send = async (count = 100, from = vm) => {
    const l = await UdpListener.start(b.netns, b.ip!, PORT);
    try {
      const { sent } = await sendUdp(from.netns, NOWHERE, PORT, count, { flows: 20 }).done;
      await sleep(150);
      return { sent, delivered: (await l.stop()).unique };
    } finally {
      l.kill();
    }
  };
  const xdp = (ifname: string) => JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', ifname]))[0].xdp;
  const progOn = (ifname: string): number => xdp(ifname)?.prog?.id ?? xdp(ifname)?.attached?.[0]?.prog?.id ?? 0;
  /** The ids of the maps a program uses, and of the maps pinned under a pin root (bpftool, as root). */
  const mapsOf = (progId: number): number[] =>
    (JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'id', String(progId)])) as { map_ids: number[] }).map_ids.sort();
  const pinnedMaps = (pinRoot: string): Set<number> =>
    new Set(
      sh('ls', [`${pinRoot}/maps`])
        .split('\n')
        .filter(Boolean)
        .map(
          (m) =>
            (JSON.parse(sh('bpftool', ['-j', 'map', 'show', 'pinned', `${pinRoot}/maps/${m}`])) as { id: number }).id,
        ),
    );
  const health = async (d: DaemonProcess) =>
    (await d.clients(d.unix).health.check({ service: 'xdpctl.datapath' })).status;
  const lines = (d: DaemonProcess, re: RegExp) => d.output.split('\n').filter((l) => re.test(l));

  /**
   * The daemon runs its own program on the ingress, on exactly the pinned maps, the rule is ACTIVE, the
   * datapath SERVING, every datagram delivered; a delete takes effect (nothing delivered, nothing attached,
   * nothing listed); a restart with all capabilities and no rules leaves nothing attached.
   */
  const ownsTheDatapath = async (d: DaemonProcess, old: number, k: number) => {
    const c = d.clients(d.unix);
    const ours = (await c.daemon.getStatus({})).datapath!.programId;
    assert.notEqual(ours, old, 'a new program was loaded');
    await until(
      () =>
        `the new program on ${vm.hostIf} (attached: ${progOn(vm.hostIf)}, ours ${ours}, old ${old}): ${d.output.slice(-1500)}`,
      () => progOn(vm.hostIf) === ours,
      3000,
    );
    const pinned = pinnedMaps(d.pinRoot);
    assert.deepEqual(
      mapsOf(ours).filter((m) => !pinned.has(m)),
      [],
      'the attached program uses only the pinned maps',
    );
    const st = (await c.rules.getRule({ name: 'web' })).rule!.status!;
    assert.equal(st.state, RuleState.RULE_STATE_ACTIVE, st.message);
    const i = (await c.interfaces.getInterface({ name: vm.hostIf })).interface!;
    assert.equal(i.programId, ours);
    assert.deepEqual(
      i.warnings.filter((w) => /XDP program/.test(w)),
      [],
      'no other program reported (without CAP_SYS_ADMIN a generic ingress may warn that its veth peer cannot be prepared)',
    );
    await until('datapath SERVING', async () => (await health(d)) === SERVING, 3000);
    let r = await send();
    assert.equal(r.delivered, r.sent, `delivered ${r.delivered}/${r.sent} by the new program`);
    assert.deepEqual(lines(d, /another XDP program|cannot identify/), [], 'nothing taken for a foreign program');

    await c.rules.deleteRule({ name: 'web' });
    assert.equal(progOn(vm.hostIf), 0, 'the delete detached the program');
    r = await send();
    assert.equal(r.delivered, 0, `the deleted rule delivered ${r.delivered}/${r.sent}`);
    assert.deepEqual((await c.interfaces.listInterfaces({})).interfaces, []);
    await stop(d);

    const full = await start(k);
    const fc = full.clients(full.unix);
    assert.deepEqual((await fc.interfaces.listInterfaces({})).interfaces, []);
    assert.equal(progOn(vm.hostIf), 0, 'nothing attached that ListInterfaces does not show');
    assert.equal(await health(full), SERVING);
    await stop(full);
  };

  it('a --max-rules migration started without CAP_SYS_ADMIN swaps the previous program and owns the datapath', async () => {
    const k = ++n;
    const d1 = await start(k, ['--max-rules', '16']);
    await d1.clients(d1.unix).rules.createRule({ rule: rule() });
    const old = progOn(vm.hostIf);
    assert.equal(old, (await d1.clients(d1.unix).daemon.getStatus({})).datapath!.programId);
    const r = await send();
    assert.equal(r.delivered, r.sent, 'the first daemon forwards');
    await stop(d1);

    const d2 = await start(k, ['--max-rules', '64'], CONTAINER);
    assert.equal(lines(d2, /migrating to new maps/).length, 1, 'a migration');
    assert.equal(lines(d2, /migrated to the new maps/).length, 1, 'finished');
    assert.match(lines(d2, /migrated to the new maps/)[0], new RegExp(`"switched":\\["${vm.hostIf}"\\]`));
    await ownsTheDatapath(d2, old, k);
    assert.throws(() => sh('bpftool', ['prog', 'show', 'id', String(old)]), 'the old program (and its maps) freed');
  });

  it('pins of the maps removed, then a start as in the container (no CAP_SYS_ADMIN, no bpftool): the pinned program on the old maps is replaced, not adopted', async () => {
    const k = ++n;
    const d1 = await start(k);
    await d1.clients(d1.unix).rules.createRule({ rule: rule() });
    const old = progOn(vm.hostIf);
    await stop(d1);
    rmSync(`/sys/fs/bpf/xdpctl-test-${id}${k}/maps`, { recursive: true }); // the program pin stays
    // The image has ip, ethtool and nsenter, not bpftool: a PATH with only those.
    const bin = mkdtempSync(join(tmpdir(), `xdpctl-test-${id}-bin-`));
    try {
      for (const t of ['ip', 'ethtool', 'nsenter', 'setpriv']) symlinkSync(sh('which', [t]).trim(), join(bin, t));
      const d2 = await start(k, [], CONTAINER, { PATH: bin });
      assert.equal(lines(d2, /the pinned program uses other maps than the pinned ones/).length, 1);
      await ownsTheDatapath(d2, old, k);
    } finally {
      rmSync(bin, { recursive: true, force: true });
    }
  });

  it('a program upgrade started without CAP_SYS_ADMIN swaps the previous program and owns the datapath', async () => {
    const k = ++n;
    const d1 = await start(k);
    await d1.clients(d1.unix).rules.createRule({ rule: rule() });
    const old = progOn(vm.hostIf);
    await stop(d1);

    const d2 = await start(k, ['--bpf-object', OBJECT_NEXT], CONTAINER);
    assert.equal(
      lines(
        d2,
        /program replaced: the pinned xdpctl_main \(id \d+, tag \w+\) uses this datapath's maps and is other code/,
      ).length,
      1,
      'an upgrade',
    );
    await ownsTheDatapath(d2, old, k);
    assert.throws(() => sh('bpftool', ['prog', 'show', 'id', String(old)]), 'the old program freed');
  });

  it("a restart finds this datapath's program on an interface no rule uses: listed, detached, logged", async () => {
    const k = ++n;
    const d1 = await start(k);
    await d1.clients(d1.unix).rules.createRule({ rule: rule() });
    const ours = progOn(vm.hostIf);
    await stop(d1);
    // The rule gone from the desired state while the program stayed (an earlier run that could not detach).
    sh('sqlite3', [`/tmp/xdpctl-test-${id}${k}-state/state.db`, "DELETE FROM rules WHERE name = 'web'"]);
    assert.equal(progOn(vm.hostIf), ours);

    const d2 = await start(k, [], CONTAINER);
    const c = d2.clients(d2.unix);
    await until(`detached from ${vm.hostIf}`, () => progOn(vm.hostIf) === 0, 3000);
    assert.deepEqual((await c.interfaces.listInterfaces({})).interfaces, []);
    assert.equal(
      lines(d2, new RegExp(`${vm.hostIf} runs this datapath's XDP program, but no rule or link uses it: detaching it`))
        .length,
      1,
    );
    const r = await send();
    assert.equal(r.delivered, 0, `nothing forwarded for a rule that does not exist (${r.delivered}/${r.sent})`);
    assert.equal(await health(d2), SERVING);
    await stop(d2);
  });

  it('an attached program it cannot identify without CAP_SYS_ADMIN is reported as such, never as ours nor green', async () => {
    const k = ++n;
    const d1 = await start(k);
    await d1.clients(d1.unix).rules.createRule({ rule: rule() });
    const old = progOn(vm.hostIf);
    await stop(d1);
    // Its pins gone (removed by hand): nothing under the pin root names the attached program any more.
    rmSync(`/sys/fs/bpf/xdpctl-test-${id}${k}/progs`, { recursive: true });

    const d2 = await start(k, [], CONTAINER);
    const c = d2.clients(d2.unix);
    assert.equal(progOn(vm.hostIf), old, 'left alone');
    await until(
      'web not ACTIVE',
      async () => (await c.rules.getRule({ name: 'web' })).rule!.status!.state !== RuleState.RULE_STATE_ACTIVE,
    );
    const st = (await c.rules.getRule({ name: 'web' })).rule!.status!;
    assert.equal(st.state, RuleState.RULE_STATE_INACTIVE, st.message);
    const why = new RegExp(`XDP program \\(id ${old}\\b.*cannot identify.*CAP_SYS_ADMIN`);
    assert.match(st.message, why);
    const i = (await c.interfaces.getInterface({ name: vm.hostIf })).interface!;
    assert.match(i.warnings.join(' '), why);
    assert.equal(await health(d2), NOT_SERVING);
    await sleep(1500);
    const once = new RegExp(
      `"msg":"an XDP program \\(id ${old}\\b.*cannot identify.*CAP_SYS_ADMIN.*ip link set dev ${vm.hostIf} xdpgeneric off`,
    );
    assert.equal(lines(d2, once).length, 1, `logged once, with what to do: ${lines(d2, why).join('\n')}`);
    assert.deepEqual(lines(d2, /another XDP program|foreign/), [], 'not called foreign: the daemon does not know');
    // Someone detaches it: the daemon attaches its own and is green again.
    sh('ip', ['link', 'set', 'dev', vm.hostIf, 'xdpgeneric', 'off']);
    await until(
      async () =>
        `web ACTIVE (${JSON.stringify((await c.rules.getRule({ name: 'web' })).rule!.status!.message)}, attached ${progOn(vm.hostIf)}): ${d2.output.slice(-3000)}`,
      async () => (await c.rules.getRule({ name: 'web' })).rule!.status!.state === RuleState.RULE_STATE_ACTIVE,
    );
    await until('datapath SERVING', async () => (await health(d2)) === SERVING, 3000);
    const r = await send();
    assert.equal(r.delivered, r.sent);
    await c.rules.deleteRule({ name: 'web' });
    assert.equal(progOn(vm.hostIf), 0);
    await stop(d2);
  });
  it('an earlier program that a migration could not switch stays known (pinned) as ours, is reported, and is replaced once it can be', async () => {
    const k = ++n;
    // The ingress is a bridge port; a program on the bridge makes the kernel refuse any XDP change on its
    // ports (EEXIST), so the migration's switch fails there.
    const p = topo.addHost('p', '198.18.3.1/24');
    sh('ip', ['link', 'add', bridge, 'type', 'bridge']);
    sh('ip', ['link', 'set', p.hostIf, 'master', bridge]);
    sh('ip', ['link', 'set', bridge, 'up']);
    topo.defaultRouteVia('p', '198.18.3.254', p.hostMac); // to the port's MAC: the bridge takes it locally
    const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}${k}`;
    const d1 = await start(k, ['--max-rules', '16']);
    await d1.clients(d1.unix).rules.createRule({ rule: rule(p) });
    const old = progOn(p.hostIf);
    let r = await send(100, p);
    assert.equal(r.delivered, r.sent, 'the first daemon forwards from the port');
    await stop(d1);
    sh('ip', ['link', 'set', 'dev', bridge, 'xdpgeneric', 'obj', `${ROOT}build/bpf/baseline.bpf.o`, 'sec', 'xdp']);
    const foreign = progOn(bridge);

    const d2 = await start(k, ['--max-rules', '64'], CONTAINER);
    let c = d2.clients(d2.unix);
    assert.equal(progOn(p.hostIf), old, 'the switch was refused: the old program still runs on the port');
    assert.equal(
      lines(d2, new RegExp(`"msg":"migrated to the new maps; ${p.hostIf} still runs the old program`)).length,
      1,
      'the migration says what it did not switch',
    );
    assert.ok(existsSync(`${pinRoot}/progs/prev_${old}`), 'the old program stays pinned while it runs');
    const earlier = new RegExp(
      `${p.hostIf} runs an earlier program of this datapath \\(id ${old}\\) and replacing it failed`,
    );
    await until('web not ACTIVE', async () =>
      earlier.test((await c.rules.getRule({ name: 'web' })).rule!.status!.message),
    );
    // The health is set at the end of the pass that judged the rule (a read between may see the rule first).
    await until('datapath NOT_SERVING', async () => (await health(d2)) === NOT_SERVING, 3000);
    let i = (await c.interfaces.getInterface({ name: p.hostIf })).interface!;
    assert.deepEqual(
      i.conditions.map((x) => [x.type, x.reason]),
      [['ProgramAttached', 'EarlierProgram']],
    );
    await stop(d2);

    // A restart, still without CAP_SYS_ADMIN: the old program is known from its pin, not "unidentified".
    const d3 = await start(k, ['--max-rules', '64'], CONTAINER);
    c = d3.clients(d3.unix);
    await until('reported as an earlier program', async () =>
      (await c.interfaces.getInterface({ name: p.hostIf })).interface!.conditions.some(
        (x) => x.reason === 'EarlierProgram',
      ),
    );
    assert.deepEqual(lines(d3, /cannot identify|another XDP program/), [], 'known as ours');
    assert.equal(await health(d3), NOT_SERVING);

    // The bridge's program goes: the next pass replaces the old program, which is then unpinned and freed.
    sh('ip', ['link', 'set', 'dev', bridge, 'xdpgeneric', 'off']);
    const ours = (await c.daemon.getStatus({})).datapath!.programId;
    await until(`the program in use on ${p.hostIf}`, () => progOn(p.hostIf) === ours, 3000);
    await until(
      'web ACTIVE',
      async () => (await c.rules.getRule({ name: 'web' })).rule!.status!.state === RuleState.RULE_STATE_ACTIVE,
      15_000,
    );
    await until('datapath SERVING', async () => (await health(d3)) === SERVING, 3000);
    assert.equal(
      lines(d3, new RegExp(`${p.hostIf} ran an earlier program of this datapath \\(id ${old}\\): replaced`)).length,
      1,
    );
    assert.ok(!existsSync(`${pinRoot}/progs/prev_${old}`), 'its pin removed');
    assert.throws(() => sh('bpftool', ['prog', 'show', 'id', String(old)]), 'the old program (and its maps) freed');
    assert.ok(foreign > 0);
    i = (await c.interfaces.getInterface({ name: p.hostIf })).interface!;
    assert.deepEqual(
      i.conditions.map((x) => [x.type, x.reason]),
      [['ProgramAttached', 'Attached']],
    );
    r = await send(100, p);
    assert.equal(r.delivered, r.sent, `delivered ${r.delivered}/${r.sent} by the program in use`);
    await c.rules.deleteRule({ name: 'web' });
    assert.equal(progOn(p.hostIf), 0);
    await stop(d3);
  });
});
