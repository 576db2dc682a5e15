/**
 * Re-applies that never take down what forwards, and ingress interfaces that
 * receive nothing (docs/architecture.md, promises 1, 2 and 5: "one object that cannot be
 * applied never takes the others down ... a start never removes a datapath
 * that was forwarding because it failed"). Real daemons, veths, a bridge and
 * traffic:
 *  - a backend whose egress cannot take native XDP redirects (a bridge) is
 *    kept out of the table with its reason on every re-apply (the reconciler
 *    rewriting the rule for a new ingress ifindex, a restart adopting it), the
 *    rule DEGRADED with the healthy backend forwarding, never FAILED;
 *  - a restart that asks for native mode on a bridge running our program in
 *    generic mode keeps it there (a bridge has no native XDP), forwarding, and
 *    says so; the same for a mode change at runtime (the datapath's attach);
 *  - an ingress that is down or has no carrier makes its rule DEGRADED or
 *    INACTIVE and its link direction inactive, said once, and back when up.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, afterEach, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { KernelDataplane } from '../../src/server/dataplane/adapter.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { EffectiveXdpMode, XdpMode } from '../../src/gen/xdpctl/v1/interface.js';
import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { Protocol, RuleState, UdpChecksumMode, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sh, shQuiet, sleep, until as pollUntil } from '../helpers/env.js';
import { openDatapath } from '../helpers/fixture.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const { SERVING, NOT_SERVING } = HealthCheckResponse_ServingStatus;

describe('re-applies keep what forwards; ingress down observed', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const extra: string[] = []; // devices made outside the topology, deleted at the end
  let d: DaemonProcess | undefined;
  let c: Clients;
  const listeners: UdpListener[] = [];

  /** A daemon of its own for each test (own pins, state, socket); the previous one is gone first. */
  async function start(tag: string, args: string[]) {
    await d?.destroy();
    d = await DaemonProcess.start(`${id}${tag}`, args);
    c = d.clients();
  }
  afterEach(async () => {
    await d?.destroy();
    d = undefined;
  });
  after(async () => {
    listeners.forEach((l) => l.kill());
    await d?.destroy();
    for (const x of extra) shQuiet('ip', ['link', 'del', x]);
    topo.destroy();
    for (const tag of ['a', 'b', 'c', 'd', 'e']) {
      XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}${tag}`);
      rmSync(`/tmp/xdpctl-test-${id}${tag}-state`, { recursive: true, force: true });
    }
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}-dp`);
    removeIproute2BpffsDirs();
  });

  const until = (what: string, ok: () => Promise<boolean> | boolean, ms = 8000) => pollUntil(what, ok, ms);
  const status = async (name: string) => (await c.rules.getRule({ name })).rule!.status!;
  const health = async () => (await c.health.check({ service: 'xdpctl.datapath' })).status;
  const count = (re: RegExp) => d!.output.split('\n').filter((l) => re.test(l)).length;
  const cond = (st: { conditions: { type: string }[] }, type: string) =>
    st.conditions.find((x) => x.type === type)! as {
      type: string;
      status: ConditionStatus;
      reason: string;
      message: string;
    };
  const xdpOf = (ifname: string) =>
    JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', ifname]))[0].xdp as
      { mode: number; prog?: { id: number } } | undefined;
  const rule = (name: string, port: number, ingress: string[], to: Host[], iface?: (h: Host) => string): Rule => ({
    name,
    match: { protocol: Protocol.PROTOCOL_UDP, port, destination: '', sourcePrefixes: [] },
    ingressInterfaces: ingress,
    backends: to.map((b) => ({ ip: b.ip!, mac: b.mac, interface: iface?.(b) ?? b.hostIf, weight: 1 })),
    udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
    labels: {},
    generation: 0n,
  });
  /** Send `n` datagrams over `flows` flows from `from` to `port`; what each backend received. */
  async function send(from: Host, port: number, to: Host[], n = 100, flows = 50) {
    const ls = await Promise.all(to.map((b) => UdpListener.start(b.netns, b.ip!, port)));
    listeners.push(...ls);
    const { sent } = await sendUdp(from.netns, NOWHERE, port, n, { flows }).done;
    await sleep(200);
    const got = await Promise.all(ls.map(async (l) => (await l.stop()).unique));
    return { sent, got, total: got.reduce((a, b) => a + b, 0) };
  }
  /** A bridge named `name` whose port veth leads to eth0 in `h`'s namespace (h's own veth deleted first). */
  function bridgeBehind(h: Host, name: string, port: string) {
    const mac = h.mac;
    topo.unplug(h.role);
    extra.push(name, port);
    sh('ip', ['link', 'add', name, 'type', 'bridge']);
    sh('ip', ['link', 'add', port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', h.netns]);
    sh('ip', ['-n', h.netns, 'link', 'set', 'eth0', 'address', mac]);
    sh('ip', ['-n', h.netns, 'addr', 'add', `${h.ip}/24`, 'dev', 'eth0']);
    sh('ip', ['-n', h.netns, 'link', 'set', 'eth0', 'up']);
    sh('ip', ['link', 'set', port, 'master', name]);
    sh('ip', ['link', 'set', port, 'up']);
    sh('ip', ['link', 'set', name, 'up']);
  }

  /**
   * Rule web on a native-mode ingress with b1 and b2; `breakB2` makes b2's egress unable to take native
   * redirects (its reason matches `why`); then the ingress name moves to a new device and the daemon restarts.
   */
  async function oneBackendCannot(
    tag: string,
    port: number,
    flags: string[],
    breakB2: (b2: Host) => void,
    why: RegExp,
    prepare: (hosts: Host[]) => void = () => undefined,
  ) {
    const vm = topo.addHost(`${tag}vm`, '198.18.1.1/24');
    const b1 = topo.addHost(`${tag}b1`, '198.18.2.1/24');
    const b2 = topo.addHost(`${tag}b2`, '198.18.2.2/24');
    topo.routeToXdp(vm.role);
    prepare([b1, b2]);
    await start(tag, ['--log-level', 'info', '--xdp-mode', 'native', ...flags]);
    await c.rules.createRule({ rule: rule('web', port, [vm.hostIf], [b1, b2]) });
    let r = await send(vm, port, [b1, b2]);
    assert.equal(r.total, r.sent, `all delivered at first (${r.got})`);

    // b2's egress can no longer take native redirects: out of the table, the rule DEGRADED.
    breakB2(b2);
    await until('web DEGRADED: b2 cannot receive', async () =>
      why.test((await status('web')).backendStatus[1]?.message ?? ''),
    );
    r = await send(vm, port, [b1, b2]);
    assert.deepEqual(r.got, [r.sent, 0], 'b1 gets every flow');

    // The ingress name moves to a new device (new ifindex): the reconciler writes the rule again.
    const v2 = topo.addHost(`${tag}v2`, '198.18.1.1/24');
    const oldIngress = `x${id}${tag}vo`;
    extra.push(oldIngress);
    for (const [from, to] of [
      [vm.hostIf, oldIngress],
      [v2.hostIf, vm.hostIf],
    ]) {
      sh('ip', ['link', 'set', from, 'down']);
      sh('ip', ['link', 'set', from, 'name', to]);
      sh('ip', ['link', 'set', to, 'up']);
    }
    v2.hostIf = vm.hostIf;
    vm.hostIf = oldIngress;
    topo.routeToXdp(v2.role);
    // The rule is written again for the new device: our program on it. (How a pass says so depends on what
    // it saw between the two renames: "X has a new ifindex", "X is back (ifindex N)", or, when the write in
    // between failed for the missing name, its retry.)
    await until('the rule rewritten for the new ingress ifindex: our program on the new device', () => {
      try {
        return xdpOf(v2.hostIf)?.prog?.id !== undefined;
      } catch {
        return false;
      }
    });
    await sleep(1500); // the pass that wrote the rule; later passes find nothing to change
    await until('web DEGRADED on the new ingress', async () => {
      const st = await status('web');
      return (
        st.state === RuleState.RULE_STATE_DEGRADED &&
        cond(st, 'ProgramAttached').status === ConditionStatus.CONDITION_STATUS_TRUE
      );
    });
    let st = await status('web');
    assert.deepEqual(
      st.backendStatus.map((b) => b.active),
      [true, false],
    );
    assert.match(st.backendStatus[1].message, why);
    assert.equal(count(/FAILED/), 0, 'never FAILED');
    r = await send(v2, port, [b1, b2]);
    assert.deepEqual(r.got, [r.sent, 0], `b1 gets every flow through the new ingress (${r.got})`);
    assert.equal(await health(), NOT_SERVING, 'DEGRADED: as before the move');

    // A restart adopts it the same way: DEGRADED, b1 forwarding.
    await d!.stop();
    d = await DaemonProcess.start(`${id}${tag}`, ['--log-level', 'info', '--xdp-mode', 'native', ...flags]);
    c = d.clients();
    st = await status('web');
    assert.equal(st.state, RuleState.RULE_STATE_DEGRADED, st.message);
    assert.deepEqual(
      st.backendStatus.map((b) => b.active),
      [true, false],
    );
    assert.match(st.backendStatus[1].message, why);
    r = await send(v2, port, [b1, b2]);
    assert.deepEqual(r.got, [r.sent, 0], `after the restart (${r.got})`);
    await sleep(1500);
    assert.equal(count(/FAILED/), 0, 'never FAILED after the restart either');
    assert.equal((await status('web')).state, RuleState.RULE_STATE_DEGRADED);
  }

  it('a backend behind a bridge stays out of the table on every re-apply: DEGRADED, never FAILED', () =>
    oneBackendCannot(
      'a',
      7901,
      [],
      (b2) => bridgeBehind(b2, b2.hostIf, `x${id}p2`),
      /\(bridge\) cannot transmit native XDP redirects/,
    ));

  it('a backend whose veth peer has GRO off (--no-fix-veth-peers) likewise: DEGRADED, never FAILED', () =>
    oneBackendCannot(
      'd',
      7904,
      ['--no-fix-veth-peers'],
      (b2) => topo.exec(b2.role, 'ethtool', ['-K', 'eth0', 'gro', 'off']),
      /would be dropped: its peer .* has neither an XDP program nor GRO/,
      // Without the daemon's repair the peers' NAPI is the operator's: GRO on, the subject of this case.
      (hosts) => hosts.forEach((h) => topo.exec(h.role, 'ethtool', ['-K', 'eth0', 'gro', 'on'])),
    ));

  it('a link whose egress cannot take native redirects never keeps another link out of the datapath', async () => {
    const a1 = topo.addHost('ea1', '198.18.6.1/24');
    const a2 = topo.addHost('ea2', '198.18.6.2/24');
    const c1 = topo.addHost('ec1', '198.18.5.1/24');
    const c2 = topo.addHost('ec2', '198.18.5.2/24');
    await start('e', ['--log-level', 'info', '--xdp-mode', 'native']);
    const both = LinkDirection.LINK_DIRECTION_BOTH;
    await c.links.connect({ link: { a: a1.hostIf, b: a2.hostIf, direction: both } });
    await c.links.connect({ link: { a: c1.hostIf, b: c2.hostIf, direction: both } });
    const link = async (h: Host) => (await c.links.listLinks({})).links.find((l) => l.a === h.hostIf)!.status!;
    assert.equal(topo.ping(a1.role, a2.ip!), true, 'a1 reaches a2');
    assert.equal(topo.ping(c1.role, c2.ip!), true, 'c1 reaches c2');

    // a2's end becomes a bridge: a1 -> a2 cannot forward (reported), the other link still does.
    bridgeBehind(a2, a2.hostIf, `x${id}pa`);
    await until('a1 -> a2 not forwarding: a bridge', async () =>
      (await link(a1)).warnings.some((w) => /\(bridge\) cannot transmit native XDP redirects/.test(w)),
    );
    assert.equal(topo.ping(c1.role, c2.ip!), true, 'c1 reaches c2');

    // c1 is recreated (new ifindex): its link is written again, whatever a1 -> a2 can do.
    topo.unplug(c1.role);
    topo.replug(c1.role, '198.18.5.1/24');
    await until('c1 <-> c2 forwarding again', async () => {
      const st = await link(c1);
      return st.aToBActive && st.bToAActive;
    });
    assert.equal(topo.ping(c1.role, c2.ip!), true, 'c1 reaches c2 through its new device');
    const la = await link(a1);
    assert.deepEqual([la.aToBActive, la.bToAActive], [false, false], 'a1 <-> a2 still reported');
    assert.ok(
      la.warnings.some((w) =>
        new RegExp(`${a2.hostIf} -> ${a1.hostIf}: our XDP program is not attached to ${a2.hostIf}`).test(w),
      ),
      la.warnings.join(' | '),
    );
    assert.equal(await health(), NOT_SERVING);
    assert.equal(count(/"msg":"links not re-applied"/), 0);
  });

  it('a restart asking for native mode keeps the generic program a bridge forwards with, and says so', async () => {
    const s = topo.addHost('s', '198.18.1.1/24');
    const b3 = topo.addHost('b3', '198.18.2.3/24');
    const bridge = `x${id}br`;
    extra.push(bridge);
    sh('ip', ['link', 'add', bridge, 'type', 'bridge']);
    sh('ip', ['link', 'set', s.hostIf, 'master', bridge]);
    sh('ip', ['link', 'set', bridge, 'up']);
    // The sender's frames go to the port's MAC: the bridge delivers them to itself (a local fdb entry).
    topo.defaultRouteVia('s', '198.18.1.254', s.hostMac);
    await start('b', ['--log-level', 'info']); // --xdp-mode auto: generic on a bridge
    await c.rules.createRule({ rule: rule('br', 7902, [bridge], [b3]) });
    assert.equal(xdpOf(bridge)?.mode, 2, 'generic on the bridge');
    const prog = xdpOf(bridge)!.prog!.id;
    assert.deepEqual((await send(s, 7902, [b3], 50)).got, [50]);
    await d!.stop();
    assert.deepEqual((await send(s, 7902, [b3], 50)).got, [50], 'while the daemon is stopped');

    d = await DaemonProcess.start(`${id}b`, ['--log-level', 'info', '--xdp-mode', 'native']);
    c = d.clients();
    assert.equal(xdpOf(bridge)?.mode, 2, 'still generic');
    assert.equal(xdpOf(bridge)?.prog?.id, prog, 'the same program');
    assert.deepEqual((await send(s, 7902, [b3], 50)).got, [50], 'forwarding after the restart');
    const st = await status('br');
    assert.equal(st.state, RuleState.RULE_STATE_ACTIVE, st.message);
    const ifs = (await c.interfaces.listInterfaces({})).interfaces;
    const br = ifs.find((i) => i.name === bridge)!;
    assert.equal(br.requestedMode, XdpMode.XDP_MODE_NATIVE);
    assert.equal(br.effectiveMode, EffectiveXdpMode.EFFECTIVE_XDP_MODE_GENERIC);
    assert.ok(
      br.warnings.some((w) =>
        /native XDP refused \(.*no native XDP support.*\); our program keeps running in generic mode/.test(w),
      ),
      br.warnings.join(' | '),
    );
    const pa = cond(br, 'ProgramAttached');
    assert.equal(pa.status, ConditionStatus.CONDITION_STATUS_TRUE);
    assert.match(pa.message, /runs in generic mode: native XDP refused/);
    const attached = d!.output
      .split('\n')
      .filter((l) => l.includes('"msg":"attached"') && l.includes(`"ifname":"${bridge}"`));
    assert.equal(attached.length, 1, 'the attach logged once');
    assert.match(attached[0], /"requested":"native","effective":"generic"/);
    assert.match(attached[0], /native XDP refused/);
    assert.equal(count(/FAILED/), 0);
    assert.equal(await health(), SERVING);
    await d.destroy();
    d = undefined;
    shQuiet('ip', ['link', 'set', 'dev', bridge, 'xdpgeneric', 'off']);
  });

  it('a mode change that the device refuses at runtime leaves our program where it was', () => {
    const bridge = `x${id}bm`;
    extra.push(bridge);
    sh('ip', ['link', 'add', bridge, 'type', 'bridge']);
    sh('ip', ['link', 'set', bridge, 'up']);
    const dp = openDatapath(`/sys/fs/bpf/xdpctl-test-${id}-dp`);
    try {
      const kd = new KernelDataplane(dp);
      assert.equal(kd.attach(bridge, 'generic').mode, 'generic');
      const prog = xdpOf(bridge)!.prog!.id;
      const r = kd.attach(bridge, 'native');
      assert.equal(r.mode, 'generic', 'kept in the mode it had');
      assert.match((r.warnings ?? []).join(' '), /native XDP refused .*keeps running in generic mode/);
      assert.equal(xdpOf(bridge)?.mode, 2);
      assert.equal(xdpOf(bridge)?.prog?.id, prog);
      kd.detach(bridge);
      assert.equal(xdpOf(bridge), undefined);
    } finally {
      dp.close();
      shQuiet('ip', ['link', 'set', 'dev', bridge, 'xdpgeneric', 'off']);
    }
  });

  it('an ingress that is down or has no carrier: the rule DEGRADED then INACTIVE, the link direction inactive, once each, and back', async () => {
    const i1 = topo.addHost('i1', '198.18.1.1/24');
    const i2 = topo.addHost('i2', '198.18.1.1/24');
    const b4 = topo.addHost('b4', '198.18.2.4/24');
    const b5 = topo.addHost('b5', '198.18.2.5/24');
    const l1 = topo.addHost('l1', '198.18.3.1/24');
    const l2 = topo.addHost('l2', '198.18.3.2/24');
    topo.routeToXdp('i1');
    topo.routeToXdp('i2');
    await start('c', ['--log-level', 'info']);
    await c.rules.createRule({ rule: rule('in', 7903, [i1.hostIf, i2.hostIf], [b4, b5]) });
    await c.links.connect({
      link: { a: l1.hostIf, b: l2.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH },
    });
    const link = async () => (await c.links.listLinks({})).links.find((l) => l.a === l1.hostIf)!;
    await until(
      'ACTIVE and SERVING',
      async () => (await status('in')).state === RuleState.RULE_STATE_ACTIVE && (await health()) === SERVING,
    );
    assert.equal((await send(i1, 7903, [b4, b5], 50)).total, 50);
    assert.equal((await send(i2, 7903, [b4, b5], 50)).total, 50);

    // i2 down: nothing arrives there; the rule forwards what i1 receives.
    // (Taking a veth down stops it, which drops its carrier, before it clears IFF_UP: a pass may see the moment
    // between, "no carrier", a transition of its own.)
    sh('ip', ['link', 'set', i2.hostIf, 'down']);
    const degraded = `forwarding to 2 backend(s); not receiving on 1 of 2 ingress interface(s): ingress ${i2.hostIf} is down: it receives nothing`;
    await until('DEGRADED: i2 down', async () => (await status('in')).message === degraded);
    let st = await status('in');
    assert.match(
      st.message,
      new RegExp(`not receiving on 1 of 2 ingress interface\\(s\\): ingress ${i2.hostIf} is down`),
    );
    assert.equal(cond(st, 'IngressReceiving').status, ConditionStatus.CONDITION_STATUS_FALSE);
    assert.equal(cond(st, 'IngressReceiving').reason, 'IngressDown');
    assert.equal(cond(st, 'ProgramAttached').status, ConditionStatus.CONDITION_STATUS_TRUE, 'the program is attached');
    assert.equal(await health(), NOT_SERVING);
    assert.equal((await send(i2, 7903, [b4, b5], 50)).total, 0, 'nothing received on i2');
    assert.equal((await send(i1, 7903, [b4, b5], 50)).total, 50, 'i1 forwards');

    // i1 without carrier (its peer down) too: no ingress receives.
    topo.exec('i1', 'ip', ['link', 'set', 'eth0', 'down']);
    await until('INACTIVE', async () => {
      const x = await status('in');
      return x.state === RuleState.RULE_STATE_INACTIVE && x.message.includes(`ingress ${i2.hostIf} is down`);
    });
    st = await status('in');
    assert.match(
      st.message,
      new RegExp(`not receiving on any ingress interface: .*ingress ${i1.hostIf} has no carrier`),
    );
    assert.match(st.message, new RegExp(`ingress ${i2.hostIf} is down`));
    const iface = (await c.interfaces.listInterfaces({})).interfaces.find((i) => i.name === i2.hostIf)!;
    assert.ok(
      iface.warnings.some((w) => /is down: it receives nothing/.test(w)),
      iface.warnings.join(' | '),
    );

    // The link: l1 down, so l1 -> l2 receives nothing (and l2 -> l1 cannot transmit).
    sh('ip', ['link', 'set', l1.hostIf, 'down']);
    const l1Down = `${l1.hostIf} -> ${l2.hostIf}: ingress ${l1.hostIf} is down: it receives nothing`;
    await until('l1 -> l2 inactive: l1 down', async () => (await link()).status!.warnings.includes(l1Down));
    const ls = (await link()).status!;
    assert.equal(ls.bToAActive, false);
    assert.ok(
      ls.warnings.some((w) => w === l1Down),
      ls.warnings.join(' | '),
    );
    assert.equal(cond(ls, 'Active').reason, 'IngressDown');

    // Back up: ACTIVE, forwarding, SERVING.
    sh('ip', ['link', 'set', i2.hostIf, 'up']);
    topo.exec('i1', 'ip', ['link', 'set', 'eth0', 'up']);
    sh('ip', ['link', 'set', l1.hostIf, 'up']);
    await until(
      'ACTIVE and SERVING again',
      async () =>
        (await status('in')).state === RuleState.RULE_STATE_ACTIVE &&
        (await link()).status!.aToBActive &&
        (await health()) === SERVING,
    );
    assert.equal(cond(await status('in'), 'IngressReceiving').status, ConditionStatus.CONDITION_STATUS_TRUE);
    topo.routeToXdp('i1'); // the neighbour entry went with the device going down
    assert.equal((await send(i1, 7903, [b4, b5], 50)).total, 50);
    assert.equal((await send(i2, 7903, [b4, b5], 50)).total, 50);
    await sleep(1500);
    // Each transition logged once: never the same line twice in a row, each observed state once.
    const said = d!.output
      .split('\n')
      .filter((l) => l.includes('"msg":"rule in is '))
      .map((l) => (JSON.parse(l) as { msg: string }).msg);
    assert.ok(
      said.every((m, i) => i === 0 || m !== said[i - 1]),
      said.join('\n'),
    );
    assert.equal(said.filter((m) => m === `rule in is DEGRADED: ${degraded}`).length, 1, said.join('\n'));
    assert.equal(
      said.filter(
        (m) =>
          m.startsWith('rule in is INACTIVE') &&
          m.includes(`ingress ${i2.hostIf} is down`) &&
          m.includes(`ingress ${i1.hostIf} has no carrier`),
      ).length,
      1,
      said.join('\n'),
    );
    assert.equal(said.filter((m) => m.startsWith('rule in is ACTIVE')).length, 1, said.join('\n'));
    assert.equal(said.at(-1), 'rule in is ACTIVE: forwarding to 2 backend(s)');
    assert.equal(
      count(new RegExp(`"msg":"link ${l1.hostIf} -> ${l2.hostIf} is not forwarding: ingress ${l1.hostIf} is down`)),
      1,
    );
    assert.equal(count(new RegExp(`"msg":"link ${l1.hostIf} -> ${l2.hostIf} is forwarding again`)), 1);
  });
});
