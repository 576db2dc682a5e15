/**
 * A restart with another --xdp-mode never takes down a direction that forwards (docs/architecture.md, promise 5: "a start
 * never removes a datapath that was forwarding"), with a real daemon, veths and datagrams: a cross-connect
 * between two veths runs in generic mode; the restart asks for native (with --no-fix-veth-peers: the daemon
 * may not switch GRO on on a peer). The end whose egress takes native
 * redirects (its peer has NAPI: GRO on) is switched; the end whose egress would drop them (a veth peer
 * without NAPI) keeps generic mode, the mode it had, and its status says why; both directions forward.
 * The datagrams lost while the one end is switched (native and generic cannot be attached at once) are
 * counted and reported (docs/architecture.md, "A mode change at restart", quotes the figure).
 * A restart from --xdp-mode generic to --xdp-mode auto (the default) keeps the program that forwards in
 * generic mode, the same program id untouched, and says so per interface: effective mode generic, kept, why
 * (auto does not switch what forwards), what a switch would meet (an egress whose veth peer has no NAPI) or
 * that --xdp-mode native switches it; logged once per interface. Before, auto kept it silently.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { EffectiveXdpMode, XdpMode } from '../../src/gen/xdpctl/v1/interface.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, runId, sh, shQuiet, sleep } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

describe('a restart with another XDP mode', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess | undefined;
  const listeners: UdpListener[] = [];

  let d2: DaemonProcess | undefined;
  after(async () => {
    listeners.forEach((l) => l.kill());
    await d2?.destroy();
    await d?.destroy();
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    shQuiet('rm', ['-rf', `/tmp/xdpctl-test-${id}-state`]);
  });

  /** UDP datagrams from `from` to `to` over the cross-connect: how many of `n` arrived. */
  async function datagrams(from: Host, to: Host, n = 50): Promise<number> {
    const l = await UdpListener.start(to.netns, to.ip!, 7300);
    listeners.push(l);
    await sendUdp(from.netns, to.ip!, 7300, n, { perTick: 5, tickMs: 10 }).done;
    await sleep(200);
    return (await l.stop()).unique;
  }

  it('switches the end whose egress takes native redirects, keeps the other generic, and both forward', async (t) => {
    const h1 = topo.addHost('h1', '198.18.41.1/24');
    const h2 = topo.addHost('h2', '198.18.41.2/24');
    // h2's side has NAPI (GRO switched on while up, as a container may have it): native redirects into
    // h2's veth are delivered. h1's side is as a new veth has it (no GRO): native redirects into h1's veth
    // would be dropped.
    topo.exec('h2', 'ethtool', ['-K', 'eth0', 'gro', 'on']);
    d = await DaemonProcess.start(id, ['--xdp-mode', 'generic']);
    await d.clients().links.connect({ link: { a: h1.hostIf, b: h2.hostIf } });
    assert.equal(await datagrams(h1, h2), 50);
    assert.equal(await datagrams(h2, h1), 50);
    assert.equal(await d.stop(), 0);

    // Datagrams h1 -> h2 all through the restart: h1's end is switched to native on the way.
    const l = await UdpListener.start(h2.netns, h2.ip!, 7301);
    listeners.push(l);
    const flow = sendUdp(h1.netns, h2.ip!, 7301, 10_000, { perTick: 5, tickMs: 1 });
    await sleep(300);
    d = await DaemonProcess.start(id, ['--xdp-mode', 'native', '--no-fix-veth-peers', '--log-level', 'info']);
    const { sent } = await flow.done;
    await sleep(300);
    const got = await l.stop();
    t.diagnostic(
      `h1 -> h2 during the restart that switched h1 to native: ${got.unique} of ${sent} delivered, ` +
        `${sent - got.unique} lost (${got.overflow} of them dropped by the listener's full socket buffer)`,
    );
    assert.ok(
      got.unique + got.overflow > sent * 0.9,
      `most delivered through the switch: ${got.unique} (+${got.overflow} the listener could not read) of ${sent}`,
    );

    const c = d.clients();
    const ifs = (await c.interfaces.listInterfaces({})).interfaces;
    const i1 = ifs.find((x) => x.name === h1.hostIf)!;
    const i2 = ifs.find((x) => x.name === h2.hostIf)!;
    assert.equal(
      i1.effectiveMode,
      EffectiveXdpMode.EFFECTIVE_XDP_MODE_NATIVE,
      'h1 switched: its egress takes native redirects',
    );
    assert.equal(i2.requestedMode, XdpMode.XDP_MODE_NATIVE);
    assert.equal(
      i2.effectiveMode,
      EffectiveXdpMode.EFFECTIVE_XDP_MODE_GENERIC,
      'h2 keeps generic: its egress would drop',
    );
    const why = new RegExp(
      `native XDP refused \\(not switched at this start: native redirects from ${h2.hostIf} would be dropped.*${h1.hostIf}.*\\); our program keeps running in generic mode, the mode it had`,
    );
    assert.ok(
      i2.warnings.some((w) => why.test(w)),
      i2.warnings.join(' | '),
    );
    const pa = i2.conditions.find((x) => x.type === 'ProgramAttached')!;
    assert.match(pa.message, /runs in generic mode: native XDP refused \(not switched at this start/);
    const link = (await c.links.listLinks({})).links[0].status!;
    assert.deepEqual([link.aToBActive, link.bToAActive], [true, true], link.warnings.join(' | '));
    assert.equal((await c.health.check({ service: 'xdpctl.datapath' })).status, 1, 'SERVING');
    assert.equal(await datagrams(h1, h2), 50, 'h1 -> h2 forwards');
    assert.equal(await datagrams(h2, h1), 50, 'h2 -> h1 forwards');
    const kept = d.output.split('\n').filter((l) => why.test(l) && l.includes('"level":40'));
    assert.equal(kept.length, 1, 'logged once, as a warning');
    assert.equal(JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', h2.hostIf]))[0].xdp.mode, 2, 'generic in the kernel');
  });

  it('--xdp-mode auto after a generic run: keeps generic mode and says so, per interface, with why', async () => {
    const h3 = topo.addHost('h3', '198.18.42.1/24');
    const h4 = topo.addHost('h4', '198.18.42.2/24');
    // h4's side has NAPI (GRO on): native redirects into h4's veth would be delivered, into h3's not.
    topo.exec('h4', 'ethtool', ['-K', 'eth0', 'gro', 'on']);
    const id2 = `${id}a`;
    d2 = await DaemonProcess.start(id2, ['--xdp-mode', 'generic']);
    await d2.clients().links.connect({ link: { a: h3.hostIf, b: h4.hostIf } });
    assert.equal(await datagrams(h3, h4), 50);
    const xdp = (ifname: string) => JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', ifname]))[0].xdp;
    const before = [xdp(h3.hostIf), xdp(h4.hostIf)];
    assert.deepEqual(
      before.map((x) => x.mode),
      [2, 2],
      'generic in the kernel',
    );
    assert.equal(await d2.stop(), 0);

    const auto = await DaemonProcess.start(id2, ['--log-level', 'info']); // --xdp-mode auto, the default
    d2 = auto;
    const c = auto.clients();
    const ifs = (await c.interfaces.listInterfaces({})).interfaces;
    const kept =
      /our program keeps running in generic mode, the mode an earlier start attached it in: --xdp-mode auto does not switch a program that forwards/;
    for (const [h, more] of [
      // h3 redirects into h4 (NAPI): a switch would forward.
      [h3, /a start with --xdp-mode native switches it$/],
      // h4 redirects into h3 (no NAPI): a switch would drop.
      [
        h4,
        new RegExp(
          `native redirects from ${h4.hostIf} would be dropped, where generic ones are delivered: .*${h3.hostIf}`,
        ),
      ],
    ] as const) {
      const i = ifs.find((x) => x.name === h.hostIf)!;
      assert.equal(i.requestedMode, XdpMode.XDP_MODE_AUTO);
      assert.equal(i.effectiveMode, EffectiveXdpMode.EFFECTIVE_XDP_MODE_GENERIC, `${h.hostIf}: generic, as observed`);
      const w = i.warnings.find((x) => kept.test(x));
      assert.ok(w, `${h.hostIf}: ${i.warnings.join(' | ')}`);
      assert.match(w, more);
      const pa = i.conditions.find((x) => x.type === 'ProgramAttached')!;
      assert.match(pa.message, /^our XDP program runs in generic mode: our program keeps running in generic mode/);
      const logged = auto.output
        .split('\n')
        .filter((l) => kept.test(l) && l.includes(`"ifname":"${h.hostIf}"`) && l.includes('"level":40'));
      assert.equal(logged.length, 1, `${h.hostIf}: logged once, as a warning:\n${logged.join('\n')}`);
    }
    // Kept as it was: the same program, in generic mode; both directions forward.
    assert.deepEqual([xdp(h3.hostIf), xdp(h4.hostIf)], before, 'the same program ids, generic, untouched');
    assert.equal(await datagrams(h3, h4), 50, 'h3 -> h4 forwards');
    assert.equal(await datagrams(h4, h3), 50, 'h4 -> h3 forwards');
  });
});
