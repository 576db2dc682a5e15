/**
 * A change's reply carries the status a read right after it gives (docs/architecture.md, promise 2; before, a client was told
 * the wrong outcome), with real namespaces, veths and datagrams. The write and the reconciler judge a rule with one
 * function (rule-status judgeRule), from what the host shows: an ingress that is down, or without carrier,
 * receives nothing, so CreateRule and UpdateRule reply INACTIVE with IngressReceiving False, as GetRule says
 * at once, and the CLI prints the state; LinkService Connect replies "not forwarding" for a direction whose
 * ingress is down, as ListLinks says. Before (a review's finding): the replies said ACTIVE / every
 * condition True (Connect: both directions active) while the read right after said INACTIVE (not active).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { ConditionStatus, type Condition } from '../../src/gen/xdpctl/v1/common.js';
import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { Protocol, RuleState, UdpChecksumMode, type RuleStatus } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { CLI, kernelOnly, removeIproute2BpffsDirs, runId, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const { SERVING, NOT_SERVING } = HealthCheckResponse_ServingStatus;

describe('a change replies with the status a read right after it gives', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess;
  let c: Clients;
  let vm: Host, b1: Host, b2: Host;
  const w = `x${id}w`; // a new veth, both ends left down (as a new interface is)
  const listeners: UdpListener[] = [];

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    b2 = topo.addHost('b2', '198.18.3.1/24');
    topo.defaultRouteVia('vm', '198.18.1.254', vm.hostMac);
    sh('ip', ['link', 'add', w, 'type', 'veth', 'peer', 'name', `x${id}p`]);
    d = await DaemonProcess.start(id, ['--log-level', 'info']);
    c = d.clients();
  });
  after(async () => {
    listeners.forEach((l) => l.kill());
    await d?.destroy();
    shQuiet('ip', ['link', 'del', w]);
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  const health = async () => (await c.health.check({ service: 'xdpctl.datapath' })).status;
  const count = (re: RegExp) => d.output.split('\n').filter((l) => re.test(l)).length;
  const conds = (cs: Condition[]) => cs.map((x) => `${x.type}=${ConditionStatus[x.status]}/${x.reason}`).sort();
  /** What a reply and a read must agree on: state, message, backends, conditions (not their times). */
  const seen = (s: RuleStatus) => ({
    state: RuleState[s.state],
    message: s.message,
    backends: s.backendStatus.map((b) => `${b.ip} ${b.active} ${b.message}`),
    conditions: conds(s.conditions),
  });
  const rule = (name: string, port: number, ingress: string) => ({
    name,
    match: { protocol: Protocol.PROTOCOL_UDP, port, destination: '', sourcePrefixes: [] },
    ingressInterfaces: [ingress],
    backends: [{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf, weight: 1 }],
    udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
    labels: {},
    generation: 0n,
  });
  const ingressCond = (s: RuleStatus) => s.conditions.find((x) => x.type === 'IngressReceiving')!;

  it('an ingress that is down: CreateRule and UpdateRule reply INACTIVE, as GetRule says right after', async () => {
    const created = (await c.rules.createRule({ rule: rule('t', 7990, w) })).rule!.status!;
    const got = (await c.rules.getRule({ name: 't' })).rule!.status!;
    assert.equal(created.state, RuleState.RULE_STATE_INACTIVE, created.message);
    assert.match(created.message, new RegExp(`^not receiving on any ingress interface: ingress ${w} is down`));
    assert.deepEqual(
      [ingressCond(created).status, ingressCond(created).reason],
      [ConditionStatus.CONDITION_STATUS_FALSE, 'IngressDown'],
    );
    assert.deepEqual(seen(created), seen(got), 'the reply is what a read right after says');

    const updated = (await c.rules.updateRule({ rule: rule('t', 7991, w), expectedGeneration: 1n })).rule!.status!;
    const got2 = (await c.rules.getRule({ name: 't' })).rule!.status!;
    assert.equal(updated.state, RuleState.RULE_STATE_INACTIVE, updated.message);
    assert.deepEqual(seen(updated), seen(got2));
    await until('health NOT_SERVING', async () => (await health()) === NOT_SERVING, 5000);

    // The CLI prints that state, as for any reply that is not ACTIVE.
    const cli = spawnSync(
      CLI,
      ['rules', 'add', 't2', '--port', '7993', '--ingress', w, '--backend', `${b1.ip},${b1.mac},${b1.hostIf}`],
      { env: { ...process.env, XDPCTL_SERVER: d.unix }, encoding: 'utf8' },
    );
    assert.equal(cli.status, 0, cli.stderr);
    assert.match(cli.stdout, new RegExp(`^rule t2 created \\(generation 1\\), state INACTIVE: .*ingress ${w} is down`));
    await until('rule t logged INACTIVE', async () => count(/"msg":"rule t is INACTIVE: .* is down/) === 1, 5000);
    await c.rules.deleteRule({ name: 't', expectedGeneration: 0n });
    await c.rules.deleteRule({ name: 't2', expectedGeneration: 0n });
  });

  it('an ingress without carrier: the reply says so; up again, ACTIVE and 20 of 20 delivered', async (t) => {
    sh('ip', ['-n', vm.netns, 'link', 'set', 'eth0', 'down']); // the ingress's peer: no carrier
    try {
      const created = (await c.rules.createRule({ rule: rule('u', 7992, vm.hostIf) })).rule!.status!;
      const got = (await c.rules.getRule({ name: 'u' })).rule!.status!;
      t.diagnostic(`reply: ${RuleState[created.state]} ${created.message}`);
      assert.equal(created.state, RuleState.RULE_STATE_INACTIVE, created.message);
      assert.match(created.message, new RegExp(`ingress ${vm.hostIf} has no carrier`));
      assert.equal(ingressCond(created).status, ConditionStatus.CONDITION_STATUS_FALSE);
      assert.deepEqual(seen(created), seen(got));
    } finally {
      sh('ip', ['-n', vm.netns, 'link', 'set', 'eth0', 'up']);
      topo.defaultRouteVia('vm', '198.18.1.254', vm.hostMac);
    }
    await until(
      'ACTIVE',
      async () => (await c.rules.getRule({ name: 'u' })).rule!.status!.state === RuleState.RULE_STATE_ACTIVE,
      5000,
    );
    const l = await UdpListener.start(b1.netns, b1.ip!, 7992);
    listeners.push(l);
    const { sent } = await sendUdp(vm.netns, NOWHERE, 7992, 20, { flows: 10 }).done;
    await sleep(150);
    assert.equal((await l.stop()).unique, sent, 'delivered once the ingress has carrier');
    await until('health SERVING', async () => (await health()) === SERVING, 5000);
    // An update while it receives: ACTIVE in the reply, as in a read.
    const updated = (await c.rules.updateRule({ rule: rule('u', 7994, vm.hostIf), expectedGeneration: 1n })).rule!
      .status!;
    assert.equal(updated.state, RuleState.RULE_STATE_ACTIVE, updated.message);
    assert.deepEqual(seen(updated), seen((await c.rules.getRule({ name: 'u' })).rule!.status!));
    assert.equal(count(/"msg":"rule u is INACTIVE/), 1, 'the transition logged once');
    assert.equal(count(/"msg":"rule u is ACTIVE/), 1, 'and the way back once');
    await c.rules.deleteRule({ name: 'u', expectedGeneration: 0n });
  });

  it('Connect over an ingress that is down replies "not forwarding" for its direction, as ListLinks says', async () => {
    sh('ip', ['link', 'set', b2.hostIf, 'down']);
    try {
      const link = { a: b2.hostIf, b: vm.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH };
      const reply = (await c.links.connect({ link })).link!.status!;
      const listed = (await c.links.listLinks({ pageSize: 0, pageToken: '' })).links.find(
        (x) => x.a === b2.hostIf,
      )!.status!;
      assert.deepEqual([reply.aToBActive, reply.bToAActive], [false, false], reply.warnings.join('; '));
      assert.ok(
        reply.warnings.some((x) => x.includes(`ingress ${b2.hostIf} is down`)),
        reply.warnings.join('; '),
      );
      assert.deepEqual(
        [reply.aToBActive, reply.bToAActive, conds(reply.conditions)],
        [listed.aToBActive, listed.bToAActive, conds(listed.conditions)],
      );
      await c.links.disconnect({ a: b2.hostIf, b: vm.hostIf });
    } finally {
      sh('ip', ['link', 'set', b2.hostIf, 'up']);
    }
  });

  // A review found: the Connect reply said FramesFit True (MTUFits) while ListLinks 2 s later said False
  // (EgressMTUTooSmall), and the link's egress interface had no FramesFit condition at all.
  it('Connect and ApplyLinks into a veth whose peer has MTU 1000 reply FramesFit False as ListLinks does; its egress interface says so too', async (t) => {
    const l1 = topo.addHost('l1', '198.18.41.1/24');
    const l2 = topo.addHost('l2', '198.18.41.2/24');
    sh('ip', ['-n', l2.netns, 'link', 'set', 'eth0', 'mtu', '1000']); // l2.hostIf's veth peer
    const link = { a: l1.hostIf, b: l2.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH };
    const fit = (cs: Condition[]) => cs.find((x) => x.type === 'FramesFit');
    const listLink = async () =>
      (await c.links.listLinks({ pageSize: 0, pageToken: '' })).links.find((x) => x.a === l1.hostIf)!.status!;
    const view = (s: { aToBActive: boolean; bToAActive: boolean; warnings: string[]; conditions: Condition[] }) => ({
      active: [s.aToBActive, s.bToAActive],
      warnings: s.warnings,
      conditions: conds(s.conditions),
    });
    const tooSmall = new RegExp(
      `^${l1.hostIf} -> ${l2.hostIf}: ${l2.hostIf}'s veth peer eth0 in netns ${l2.netns} has MTU 1000, ${l1.hostIf} 1500: ` +
        'frames whose IP packet exceeds 1004 bytes are dropped',
    );

    const reply = (await c.links.connect({ link })).link!.status!;
    const listed = await listLink();
    t.diagnostic(`Connect reply: ${conds(reply.conditions).join(' ')}`);
    assert.deepEqual(
      [fit(reply.conditions)?.status, fit(reply.conditions)?.reason],
      [ConditionStatus.CONDITION_STATUS_FALSE, 'EgressMTUTooSmall'],
      fit(reply.conditions)?.message,
    );
    assert.match(fit(reply.conditions)!.message, tooSmall);
    assert.ok(
      reply.warnings.some((x) => tooSmall.test(x)),
      reply.warnings.join('; '),
    );
    assert.deepEqual(view(reply), view(listed), 'the reply is what a read right after says');
    // ... and what the reconciler's passes say after it.
    await sleep(2000);
    assert.deepEqual(view(await listLink()), view(reply), 'and what a read 2 s later says');

    // The link's egress interfaces carry FramesFit as a rule's egress does: l2.hostIf False with the link's
    // text (in its warnings too), l1.hostIf (l2 -> l1: peer MTU 1500) True; both EgressReady True.
    const iface = async (name: string) => (await c.interfaces.getInterface({ name })).interface!;
    const i2 = await iface(l2.hostIf);
    t.diagnostic(`${l2.hostIf}: ${conds(i2.conditions).join(' ')}`);
    assert.deepEqual(
      [fit(i2.conditions)?.status, fit(i2.conditions)?.reason],
      [ConditionStatus.CONDITION_STATUS_FALSE, 'EgressMTUTooSmall'],
    );
    assert.match(
      fit(i2.conditions)!.message,
      new RegExp(`link ${tooSmall.source.slice(1)}.*\\(link/${l1.hostIf}:${l2.hostIf}\\)$`),
    );
    assert.ok(i2.warnings.includes(fit(i2.conditions)!.message), i2.warnings.join('; '));
    assert.ok(i2.usedBy.includes(`link/${l1.hostIf}:${l2.hostIf}/egress`), i2.usedBy.join(','));
    const i1 = await iface(l1.hostIf);
    assert.equal(fit(i1.conditions)?.status, ConditionStatus.CONDITION_STATUS_TRUE, conds(i1.conditions).join(' '));
    for (const i of [i1, i2]) {
      assert.equal(
        i.conditions.find((x) => x.type === 'EgressReady')?.status,
        ConditionStatus.CONDITION_STATUS_TRUE,
        `${i.name}: ${conds(i.conditions).join(' ')}`,
      );
    }

    // What it says is true: an IP packet of 1004 bytes reaches l2, one of 1005 (or 1428) does not.
    const ping = (size: number) => {
      try {
        topo.exec('l1', 'ping', ['-c', '1', '-W', '1', '-M', 'do', '-s', String(size), l2.ip!]);
        return true;
      } catch {
        return false;
      }
    };
    await until('l1 reaches l2', () => ping(56), 10_000);
    assert.deepEqual([ping(976), ping(977), ping(1400)], [true, false, false], 'IP packets of 1004, 1005, 1428 bytes');

    // ApplyLinks: its reply's link is what a read says, FramesFit False as well.
    await c.links.disconnect({ a: l1.hostIf, b: l2.hostIf });
    const applied = await c.links.applyLinks({ links: [link], validateOnly: false });
    const inReply = applied.links.find((x) => x.a === l1.hostIf)!.status!;
    assert.equal(
      fit(inReply.conditions)?.status,
      ConditionStatus.CONDITION_STATUS_FALSE,
      conds(inReply.conditions).join(' '),
    );
    assert.deepEqual(view(inReply), view(await listLink()));
    await c.links.applyLinks({ links: [], validateOnly: false });
    // Removed, its egress interfaces are no longer listed, and their texts are gone with it.
    const left = (await c.interfaces.listInterfaces({})).interfaces.filter(
      (x) => x.name === l1.hostIf || x.name === l2.hostIf,
    );
    assert.deepEqual(
      left.map((x) => x.name),
      [],
    );

    // The CLI prints the warning after "connected", as for an ingress that is down.
    const cli = spawnSync(CLI, ['links', 'connect', l1.hostIf, l2.hostIf], {
      env: { ...process.env, XDPCTL_SERVER: d.unix },
      encoding: 'utf8',
    });
    assert.equal(cli.status, 0, cli.stderr);
    assert.match(
      cli.stdout,
      new RegExp(`^link ${l1.hostIf} <-> ${l2.hostIf} connected \\(warning: ${tooSmall.source.slice(1)}`),
    );
    await c.links.disconnect({ a: l1.hostIf, b: l2.hostIf });
  });

  // A review found: the whole-file commands printed "create" rows and nothing else, while the reply said
  // the rule was INACTIVE and the link not forwarding (ingress down); `rules add` / `links connect` say so.
  it('rules apply -f and links apply -f print what they created that is not forwarding, as rules add and links connect do', async () => {
    const file = `/tmp/xdpctl-test-${id}-apply.yaml`;
    const cli = (args: string[]) => {
      const r = spawnSync(CLI, args, { env: { ...process.env, XDPCTL_SERVER: d.unix }, encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      return r.stdout;
    };
    try {
      writeFileSync(
        file,
        `rules:\n  - name: nd\n    port: 7995\n    ingress: [${w}]\n    udpChecksum: zero\n` +
          `    backends:\n      - {ip: ${b1.ip}, mac: "${b1.mac}", interface: ${b1.hostIf}, weight: 1}\n` +
          `  - name: up\n    port: 7996\n    ingress: [${vm.hostIf}]\n    udpChecksum: zero\n` +
          `    backends:\n      - {ip: ${b1.ip}, mac: "${b1.mac}", interface: ${b1.hostIf}, weight: 1}\n`,
      );
      const rules = cli(['rules', 'apply', '-f', file]);
      assert.match(rules, /^nd\s+create$/m);
      assert.match(
        rules,
        new RegExp(
          `^rule nd created, state INACTIVE: not receiving on any ingress interface: ingress ${w} is down`,
          'm',
        ),
      );
      // The other rule: a line exactly when it is not ACTIVE (as a read says).
      const up = (await c.rules.getRule({ name: 'up' })).rule!.status!;
      if (up.state === RuleState.RULE_STATE_ACTIVE)
        assert.doesNotMatch(rules, /^rule up /m, 'an ACTIVE one is not named');
      else assert.match(rules, /^rule up created, state /m);
      assert.match(rules, /^applied: 2 created, 0 updated, 0 deleted, 0 unchanged$/m);
      const got = (await c.rules.getRule({ name: 'nd' })).rule!.status!;
      assert.equal(got.state, RuleState.RULE_STATE_INACTIVE, 'as a read says');
      // An update says it too.
      writeFileSync(
        file,
        `rules:\n  - name: nd\n    port: 7997\n    ingress: [${w}]\n    udpChecksum: zero\n` +
          `    backends:\n      - {ip: ${b1.ip}, mac: "${b1.mac}", interface: ${b1.hostIf}, weight: 1}\n`,
      );
      const updated = cli(['rules', 'apply', '-f', file]);
      assert.match(updated, new RegExp(`^rule nd updated, state INACTIVE: .*ingress ${w} is down`, 'm'));
      writeFileSync(file, 'rules: []\n');
      cli(['rules', 'apply', '-f', file]);

      // A link whose ingress is down (b2's host end; the finding's case), into an up one.
      sh('ip', ['link', 'set', b2.hostIf, 'down']);
      writeFileSync(file, `links:\n  ${b2.hostIf}: ${vm.hostIf}\n`);
      const links = cli(['links', 'apply', '-f', file]);
      assert.match(links, new RegExp(`^${b2.hostIf}\\s+${vm.hostIf}\\s+create$`, 'm'));
      assert.match(
        links,
        new RegExp(`^link ${b2.hostIf} <-> ${vm.hostIf} created \\(warning: .*ingress ${b2.hostIf} is down`, 'm'),
      );
      const listed = (await c.links.listLinks({ pageSize: 0, pageToken: '' })).links.find(
        (x) => x.a === b2.hostIf,
      )!.status!;
      assert.deepEqual([listed.aToBActive, listed.bToAActive], [false, false], 'as a read says');
      // A dry run prints no such line (nothing was written).
      writeFileSync(file, `links:\n  ${b2.hostIf}: ${b1.hostIf}\n`);
      assert.doesNotMatch(cli(['links', 'apply', '-f', file, '--dry-run']), /^link /m);
      writeFileSync(file, 'links: []\n');
      cli(['links', 'apply', '-f', file]);
    } finally {
      sh('ip', ['link', 'set', b2.hostIf, 'up']);
      rmSync(file, { force: true });
    }
  });
});
