/**
 * An ingress interface moved to another network namespace under a running daemon (docs/architecture.md, promises 1 and
 * 6: "interface names, ifindexes and namespaces"; "nothing attached that ListInterfaces does not show";
 * "--cleanup-on-exit removes every program it attached"), with real daemons, veths, namespaces and
 * datagrams:
 *  - moved (`ip link set dev X netns OTHER`): our program is removed from it there, the interface is
 *    reported as moved (its condition, the link that uses it, the datapath health), logged once; moved
 *    back, it is managed again and forwards;
 *  - moved while the daemon is stopped: the next start finds our program there and removes it;
 *  - moved with --cleanup-on-exit and no pass in between: the exit removes it there too;
 *  - a backend's egress (no program of ours on it) moved away: its status names the namespace, as for an
 *    ingress (not "does not exist"), its flows go to the other backend; moved back, it receives again.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';

import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, runId, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { backendOf, udpRule } from '../helpers/lab.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

describe('an ingress interface moved to another network namespace', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const away = `xdpt-${id}-away`;
  let h1: Host, h2: Host;
  let d: DaemonProcess | undefined;
  let c: Clients;
  const listeners: UdpListener[] = [];

  before(() => {
    sh('ip', ['netns', 'add', away]);
    // This namespace may hold an id for itself (a host of CI had one, given as a device of another namespace
    // named it): its devices must not be taken for devices moved elsewhere. Make sure it has one.
    sh('ip', ['netns', 'attach', `xdpt-${id}-self`, String(process.pid)]);
    shQuiet('ip', ['netns', 'set', `xdpt-${id}-self`, 'auto']);
    shQuiet('ip', ['netns', 'del', `xdpt-${id}-self`]); // the name only: the namespace is the host's
  });
  afterEach(async () => {
    d?.child.kill('SIGCONT');
    await d?.destroy();
    d = undefined;
  });
  after(() => {
    listeners.forEach((l) => l.kill());
    shQuiet('ip', ['netns', 'del', away]); // with whatever was moved into it
    topo.destroy();
    for (const t of ['a', 'b', 'c', 'd']) {
      XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}${t}`);
      shQuiet('rm', ['-rf', `/tmp/xdpctl-test-${id}${t}-state`]);
    }
  });

  /** UDP datagrams from h1 to h2 over the cross-connect: how many of `n` arrived. */
  async function datagrams(n = 50): Promise<number> {
    const l = await UdpListener.start(h2.netns, h2.ip!, 7200);
    listeners.push(l);
    await sendUdp(h1.netns, h2.ip!, 7200, n, { perTick: 5, tickMs: 10 }).done;
    await sleep(200);
    return (await l.stop()).unique;
  }
  /** The XDP program on a device of the `away` namespace (undefined: none). */
  const xdpAway = (ifname: string) =>
    (
      JSON.parse(sh('ip', ['-n', away, '-j', '-d', 'link', 'show', ifname]))[0] as {
        xdp?: { prog?: { id: number } };
      }
    ).xdp?.prog?.id;
  const moveAway = (ifname: string) => sh('ip', ['link', 'set', 'dev', ifname, 'netns', away]);
  const moveBack = (ifname: string) => {
    sh('ip', ['-n', away, 'link', 'set', 'dev', ifname, 'netns', '1']);
    sh('ip', ['link', 'set', ifname, 'up']);
    sh('sysctl', ['-qw', `net.ipv4.conf.${ifname}.forwarding=0`]);
  };
  /** A daemon of its own and two hosts of their own for each test (a failed test leaves nothing to the next). */
  async function start(tag: string, extra: string[] = [], hosts = true) {
    if (hosts) {
      const net = { a: 31, b: 32, c: 33 }[tag];
      h1 = topo.addHost(`${tag}1`, `198.18.${net}.1/24`);
      h2 = topo.addHost(`${tag}2`, `198.18.${net}.2/24`);
    }
    d = await DaemonProcess.start(`${id}${tag}`, ['--xdp-mode', 'generic', '--log-level', 'info', ...extra]);
    c = d.clients();
  }

  it('removes our program from it there, reports it as moved, and manages it again when it is back', async () => {
    await start('a');
    await c.links.connect({ link: { a: h1.hostIf, b: h2.hostIf } });
    assert.equal(await datagrams(), 50, 'forwarding at first');
    const progId = (await c.daemon.getStatus({})).datapath!.programId;
    const from = d!.output.length;

    moveAway(h1.hostIf);
    try {
      const moved = new RegExp(
        `interface ${h1.hostIf} was moved to network namespace ${away} \\(ifindex \\d+ there\\): our XDP program is detached from it`,
      );
      await until(
        () => `our program gone from ${h1.hostIf} in ${away}: ${d!.output.slice(from)}`,
        () => xdpAway(h1.hostIf) === undefined && moved.test(d!.output.slice(from)),
        8000,
      );
      // Reported: the interface, the link, the datapath health.
      const ifs = (await c.interfaces.listInterfaces({})).interfaces;
      const i = ifs.find((x) => x.name === h1.hostIf)!;
      assert.equal(i.present, false);
      assert.match(i.warnings.join('\n'), moved);
      const cond = i.conditions.find((x) => x.type === 'ProgramAttached')!;
      assert.equal(cond.reason, 'InterfaceMoved');
      assert.match(cond.message, moved);
      const link = (await c.links.listLinks({})).links[0].status!;
      const active = link.conditions.find((x) => x.type === 'Active')!;
      assert.equal(active.reason, 'InterfaceMoved', JSON.stringify(link));
      assert.match(active.message, moved);
      assert.equal((await c.health.check({ service: 'xdpctl.datapath' })).status, 2, 'NOT_SERVING');
      await sleep(1500);
      const lines = d!.output
        .slice(from)
        .split('\n')
        .filter((l) => l.includes(`"msg":"interface ${h1.hostIf} was moved`));
      assert.equal(lines.length, 1, 'logged once, as a warning');
      assert.match(lines[0], /"level":40/);
      assert.match(lines[0], new RegExp(`"progId":${progId}\\b`));
      // The interface that stayed was left alone (not taken for a moved one through this namespace's own id).
      assert.doesNotMatch(d!.output.slice(from), new RegExp(`${h2.hostIf} was moved|detached from ${h2.hostIf}`));
    } catch (e) {
      moveBack(h1.hostIf);
      throw e;
    }

    // Back in this namespace: attached again, forwarding, as desired again.
    const back = d!.output.length;
    moveBack(h1.hostIf);
    await until(
      async () => `managed again: ${d!.output.slice(back)}`,
      async () => (await c.health.check({ service: 'xdpctl.datapath' })).status === 1,
      8000,
    );
    assert.match(d!.output.slice(back), new RegExp(`${h1.hostIf} is in this network namespace again: managed again`));
    const again = (await c.interfaces.listInterfaces({})).interfaces.find((x) => x.name === h1.hostIf)!;
    assert.equal(again.present, true);
    assert.equal(again.conditions.find((x) => x.type === 'ProgramAttached')!.reason, 'Attached');
    assert.equal(await datagrams(), 50, 'forwarding again');
  });

  it('a backend egress moved away is named as moved (not "does not exist"), its flows go to the other backend', async () => {
    const vm = topo.addHost('dv', '198.18.34.1/24');
    const b1 = topo.addHost('d1', '198.18.35.1/24');
    const b2 = topo.addHost('d2', '198.18.36.1/24');
    topo.routeToXdp('dv');
    await start('d', [], false);
    await c.rules.createRule({
      rule: udpRule('web', 7201, [vm.hostIf], [backendOf(b1), backendOf(b2)]),
    });
    const status = async () => (await c.rules.getRule({ name: 'web' })).rule!.status!;
    /** 60 datagrams of 30 flows to the rule: what b1 and b2 received. */
    async function delivered(): Promise<[number, number]> {
      const l1 = await UdpListener.start(b1.netns, b1.ip!, 7201);
      const l2 = await UdpListener.start(b2.netns, b2.ip!, 7201);
      listeners.push(l1, l2);
      await sendUdp(vm.netns, '198.18.9.9', 7201, 60, { flows: 30 }).done;
      await sleep(200);
      return [(await l1.stop()).unique, (await l2.stop()).unique];
    }
    await until('web ACTIVE', async () => (await status()).state === RuleState.RULE_STATE_ACTIVE, 5000);
    const [x1, x2] = await delivered();
    assert.equal(x1 + x2, 60);
    assert.ok(x1 > 0 && x2 > 0, `both backends have flows (${x1}, ${x2})`);
    const from = d!.output.length;

    moveAway(b1.hostIf);
    try {
      const moved = new RegExp(
        `^egress ${b1.hostIf} was moved to network namespace ${away} \\(ifindex \\d+ there\\): backend taken out`,
      );
      await until(
        async () => `named as moved: ${JSON.stringify((await status()).backendStatus[0])}`,
        async () => moved.test((await status()).backendStatus[0]?.message ?? ''),
        8000,
      );
      const st = await status();
      assert.equal(st.state, RuleState.RULE_STATE_DEGRADED);
      assert.equal(st.backendStatus[0].active, false);
      assert.doesNotMatch(JSON.stringify(st), /does not exist/);
      const [y1, y2] = await delivered();
      assert.deepEqual([y1, y2], [0, 60], 'every flow to the backend that can receive');
      assert.equal((await c.health.check({ service: 'xdpctl.datapath' })).status, 2, 'NOT_SERVING');
      await sleep(1500);
      const lines = d!.output
        .slice(from)
        .split('\n')
        .filter((l) => l.includes(`"msg":"interface ${b1.hostIf} was moved to network namespace ${away}`));
      assert.equal(lines.length, 1, 'logged once');
    } catch (e) {
      moveBack(b1.hostIf);
      throw e;
    }
    moveBack(b1.hostIf);
    await until('web ACTIVE again', async () => (await status()).state === RuleState.RULE_STATE_ACTIVE, 8000);
    const [z1, z2] = await delivered();
    assert.equal(z1 + z2, 60);
    assert.ok(z1 > 0, `b1 receives again (${z1}, ${z2})`);
  });

  it('a start finds our program on an interface moved away while it was stopped, and removes it', async () => {
    await start('b');
    await c.links.connect({ link: { a: h1.hostIf, b: h2.hostIf } });
    assert.equal(await datagrams(), 50);
    assert.equal(await d!.stop(), 0); // the datapath stays, as after any stop without --cleanup-on-exit
    moveAway(h1.hostIf);
    assert.notEqual(xdpAway(h1.hostIf), undefined, 'our program moved with it');
    try {
      await start('b', [], false);
      await until(
        () => `our program gone from ${h1.hostIf} in ${away}: ${d!.output}`,
        () => xdpAway(h1.hostIf) === undefined,
        8000,
      );
      const i = (await c.interfaces.listInterfaces({})).interfaces.find((x) => x.name === h1.hostIf)!;
      assert.equal(i.conditions.find((x) => x.type === 'ProgramAttached')!.reason, 'InterfaceMoved');
    } finally {
      moveBack(h1.hostIf);
    }
  });

  it('--cleanup-on-exit removes our program from an interface moved away just before the exit', async () => {
    await start('c', ['--cleanup-on-exit']);
    await c.links.connect({ link: { a: h1.hostIf, b: h2.hostIf } });
    assert.equal(await datagrams(), 50);
    // No pass in between: the daemon is stopped while the interface moves, then asked to exit.
    d!.child.kill('SIGSTOP');
    try {
      moveAway(h1.hostIf);
      assert.notEqual(xdpAway(h1.hostIf), undefined, 'our program moved with it');
      d!.child.kill('SIGTERM');
    } finally {
      d!.child.kill('SIGCONT');
    }
    const code = await new Promise((r) => d!.child.once('exit', r));
    assert.equal(code, 0, d!.output);
    try {
      assert.equal(xdpAway(h1.hostIf), undefined, `nothing of ours left in ${away}: ${d!.output}`);
      assert.equal(
        JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', h2.hostIf]))[0].xdp,
        undefined,
        'nor on the interface that stayed',
      );
    } finally {
      moveBack(h1.hostIf);
    }
  });
});
