/**
 * Log lines state only what was observed: what changed, from what to what,
 * and who did it only when the daemon knows. Each case changes the host for real (namespaces, veths, programs,
 * pins, datagrams) and asserts the exact truthful line and the absence of the false one it replaced:
 *  a) another tool moves our program from native to generic mode: the mode change is said (it was not), and the
 *     offloads generic mode needs are said to be set for that mode (they were said to be "changed by someone
 *     else: put back", though nobody had changed them and the daemon had never set them); once that tool
 *     removes its generic attachment, one warning names the interface, the mode found and the mode restored;
 *  b) a program that is not an xdpctl_main pinned at PIN/progs/xdpctl_main while the daemon was stopped: the
 *     start says what it found there (it said "program upgraded; interfaces will be swapped" from that tag);
 *  c) a start after both backends' egresses were deleted and a foreign program forced onto the ingress: the rule
 *     that waited at start is written with what the start found (it said "the host changed ... interface X is
 *     back (ifindex N), Y is back (ifindex M)" though neither had gone away). (With one of its egresses there, a
 *     start writes the rule without the other, as a pass does: restart-missing-part.)
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { EffectiveXdpMode } from '../../src/gen/xdpctl/v1/interface.js';
import { type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, ROOT, runId, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { backendOf, moveToGenericMode, udpRule } from '../helpers/lab.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const BASELINE = `${ROOT}build/bpf/baseline.bpf.o`;

describe('log lines say what was observed', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess | undefined;
  let vm: Host, b1: Host, b2: Host;
  const listeners: UdpListener[] = [];
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  const progPin = XdpDatapath.progPinPath(pinRoot);

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    b2 = topo.addHost('b2', '198.18.3.1/24');
    topo.defaultRouteVia('vm', '198.18.1.254', vm.hostMac);
  });
  after(async () => {
    listeners.forEach((l) => l.kill());
    await d?.destroy();
    for (const m of ['xdp', 'xdpgeneric']) shQuiet('ip', ['link', 'set', 'dev', vm.hostIf, m, 'off']);
    topo.destroy();
    XdpDatapath.unpinAll(pinRoot);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  const start = () => DaemonProcess.start(id, ['--xdp-mode', 'native', '--log-level', 'info']);
  const rule = (): Rule => udpRule('web', 7987, [vm.hostIf], [backendOf(b1), backendOf(b2)]);
  const xdp = (dev: string) =>
    (
      JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', 'dev', dev])) as {
        xdp?: { mode: number; prog?: { id: number } };
      }[]
    )[0].xdp;
  const ifindex = (dev: string) =>
    (JSON.parse(sh('ip', ['-j', 'link', 'show', 'dev', dev])) as { ifindex: number }[])[0].ifindex;
  async function delivered(n = 40): Promise<number> {
    const ls = await Promise.all([b1, b2].map((b) => UdpListener.start(b.netns, b.ip!, 7987)));
    listeners.push(...ls);
    await sendUdp(vm.netns, NOWHERE, 7987, n).done;
    await sleep(150);
    let got = 0;
    for (const l of ls) got += (await l.stop()).unique;
    return got;
  }

  it('a) another tool moves our program to generic mode and back: the mode changes are said, the offloads set for it are not "put back"', async () => {
    d = await start();
    const c = d.clients();
    await c.rules.createRule({ rule: rule() });
    const mode = async () =>
      (await c.interfaces.listInterfaces({})).interfaces.find((i) => i.name === vm.hostIf)?.effectiveMode;
    assert.equal(await mode(), EffectiveXdpMode.EFFECTIVE_XDP_MODE_NATIVE);
    assert.equal(await delivered(), 40);
    // Another tool: our pinned program taken off in native mode and attached in generic mode, in one batch.
    const from = await moveToGenericMode(d, vm.hostIf);
    assert.equal(xdp(vm.hostIf)?.mode, 2, 'generic now (XDP_ATTACHED_SKB)');
    const gso = 'tcp-segmentation-offload, generic-segmentation-offload, tx-udp-segmentation';
    const set =
      `${vm.hostIf}: our XDP program runs in generic mode, which needs these device settings: turned ${gso} off on ` +
      `eth0 in netns ${vm.netns} (generic XDP cannot redirect GSO packets (TCP from it would stall))`;
    await until('the offloads generic mode needs are set', () => d!.output.slice(from).includes(set), 8000);
    const lines = d.logLines(from);
    assert.deepEqual(
      lines.filter((l) => l.msg.startsWith(`${vm.hostIf}:`)).map((l) => [l.level, l.msg]),
      [
        [
          40,
          `${vm.hostIf}: our XDP program runs in generic mode now; it ran in native mode (not changed by this ` +
            'daemon): left in generic mode',
        ],
        [30, set],
      ],
    );
    assert.ok(
      !lines.some((l) => /changed by someone else|put back/.test(l.msg)),
      'nobody changed these settings and the daemon had never set them: not "put back"',
    );
    assert.equal(await delivered(), 40, 'generic mode forwards');

    // The other tool's generic attachment removed: ours re-attached in the mode asked, said once, by one warning.
    const from2 = d.output.length;
    sh('ip', ['link', 'set', 'dev', vm.hostIf, 'xdpgeneric', 'off']);
    await until('native again', async () => (await mode()) === EffectiveXdpMode.EFFECTIVE_XDP_MODE_NATIVE, 5000);
    await sleep(2500); // a settings check more
    const warned = d.logLines(from2).filter((l) => l.level >= 40);
    assert.deepEqual(
      warned.map((l) => l.msg),
      [
        `${vm.hostIf}: found no XDP program where ours ran in generic mode (detached, not by this daemon): ours ` +
          're-attached in native mode',
      ],
    );
    assert.equal(await delivered(), 40, 'native mode forwards');
  });

  it('b) a program that is not an xdpctl_main pinned at the program pin while stopped: the start says so, not "upgraded"', async () => {
    assert.equal(await d!.stop('SIGTERM'), 0);
    rmSync(progPin);
    sh('bpftool', ['prog', 'load', BASELINE, progPin]);
    const foreign = JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'pinned', progPin])) as { id: number; tag: string };
    assert.equal(foreign.tag, '614b434cd8324ecc');
    d = await start();
    const ours = JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'pinned', progPin])) as { id: number; tag: string };
    const lines = d.logLines();
    assert.ok(!lines.some((l) => /upgraded/.test(l.msg)), 'not an upgrade of this datapath');
    const said = lines.filter((l) => l.msg.startsWith(`the program pinned at ${progPin}`));
    assert.deepEqual(
      said.map((l) => [l.level, l.msg]),
      [
        [
          40,
          `the program pinned at ${progPin} (id ${foreign.id}, name base_pass, tag 614b434cd8324ecc) is not an ` +
            `xdpctl_main, so not one this datapath loaded: the pin is replaced by this daemon's program (id ` +
            `${ours.id}, tag ${ours.tag}) as the start completes; an interface running the other one is not ` +
            'swapped (it is reported as running a foreign program)',
        ],
      ],
    );
    assert.equal(xdp(vm.hostIf)?.prog?.id, ours.id, "our interface runs this daemon's program");
    assert.equal(await delivered(), 40);
  });

  it('c) a start after the egresses were deleted and a foreign program forced on the ingress: what the start found, not "is back"', async () => {
    assert.equal(await d!.stop('SIGTERM'), 0);
    sh('ip', ['link', 'del', b1.hostIf]);
    sh('ip', ['link', 'del', b2.hostIf]);
    sh('ip', ['-force', 'link', 'set', 'dev', vm.hostIf, 'xdp', 'obj', BASELINE, 'sec', 'xdp']);
    const hin = ifindex(vm.hostIf);
    d = await start();
    const msg = 'rules waiting since the start for missing interfaces: written with the interfaces there now';
    await until('the waiting rule written', () => d!.output.includes(msg), 5000);
    const lines = d.logLines();
    assert.ok(!lines.some((l) => / is back \(ifindex/.test(JSON.stringify(l))), 'nothing went away: nothing "is back"');
    assert.ok(!lines.some((l) => l.msg === 'the host changed: re-applying rules'), 'nothing changed since the start');
    const line = lines.filter((l) => l.msg === msg);
    assert.equal(line.length, 1);
    assert.deepEqual(line[0].changes, {
      web:
        `waiting since the start for ${b1.hostIf}, ${b2.hostIf} (missing at start): written with the interfaces ` +
        `there now: ${vm.hostIf} (ifindex ${hin}) as found at start; ${b1.hostIf}, ${b2.hostIf} still missing`,
    });
    shQuiet('ip', ['link', 'set', 'dev', vm.hostIf, 'xdp', 'off']);
  });
});
