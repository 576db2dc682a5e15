/**
 * Host settings follow the mode an ingress runs in (docs/architecture.md, "observe, don't assume"; --cleanup-on-exit
 * restores what the daemon changed): in generic mode the daemon turns TSO/GSO off on an ingress veth's peer
 * (generic XDP cannot redirect a GSO packet). Once that ingress runs our program in native mode (a restart
 * with --xdp-mode native), they are no longer needed: the daemon turns them on again, says so once, and takes
 * them out of its host-changes record (was: left off until --cleanup-on-exit). In native mode the kernel
 * masks the peer's software GSO itself while our program runs (veth_fix_features: TSO shows "off [requested
 * on]") and lets it through when the program leaves. Real namespaces, veths and datagrams.
 */
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { EffectiveXdpMode } from '../../src/gen/xdpctl/v1/interface.js';
import { Protocol, UdpChecksumMode } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sleep, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const GSO = ['tcp-segmentation-offload', 'generic-segmentation-offload', 'tx-udp-segmentation'];

describe('offloads follow the XDP mode of an ingress', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess | undefined;
  let vm: Host, b1: Host;
  const listeners: UdpListener[] = [];

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    topo.defaultRouteVia('vm', '198.18.1.254', vm.hostMac);
  });
  after(async () => {
    listeners.forEach((l) => l.kill());
    await d?.destroy();
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  /** The sender's (vm's eth0, the ingress veth's peer) segmentation offloads as `ethtool -k` shows them. */
  const gso = () =>
    Object.fromEntries(
      topo
        .exec('vm', 'ethtool', ['-k', 'eth0'])
        .split('\n')
        .map((l) => /^([\w-]+): (.*)$/.exec(l))
        .filter((m): m is RegExpExecArray => !!m && GSO.includes(m[1]))
        .map((m) => [m[1], m[2]]),
    );
  const record = () =>
    JSON.parse(readFileSync(`/tmp/xdpctl-test-${id}-state/host-changes.json`, 'utf8')) as {
      offloads: { ifname: string; netns?: string; features: string[] }[];
    };
  const recordedFor = (netns: string) =>
    record()
      .offloads.filter((o) => o.netns === netns)
      .flatMap((o) => o.features);
  async function delivered(port: number, n = 20): Promise<number> {
    const l = await UdpListener.start(b1.netns, b1.ip!, port);
    listeners.push(l);
    await sendUdp(vm.netns, NOWHERE, port, n).done;
    await sleep(150);
    return (await l.stop()).unique;
  }

  it('TSO/GSO turned off for generic mode are on again once the ingress runs in native mode', async () => {
    const onAtFirst = gso();
    assert.deepEqual(onAtFirst, {
      'tcp-segmentation-offload': 'on',
      'generic-segmentation-offload': 'on',
      'tx-udp-segmentation': 'on',
    });
    d = await DaemonProcess.start(id, ['--xdp-mode', 'generic', '--log-level', 'info']);
    await d.clients().rules.createRule({
      rule: {
        name: 'web',
        match: { protocol: Protocol.PROTOCOL_UDP, port: 7986, destination: '', sourcePrefixes: [] },
        ingressInterfaces: [vm.hostIf],
        backends: [{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf, weight: 1 }],
        udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
        labels: {},
        generation: 0n,
      },
    });
    assert.deepEqual(Object.values(gso()), ['off', 'off', 'off'], 'turned off for generic mode');
    assert.deepEqual(
      recordedFor(vm.netns)
        .filter((f) => GSO.includes(f))
        .sort(),
      [...GSO].sort(),
      'and recorded',
    );
    assert.equal(await delivered(7986), 20);
    assert.equal(await d.stop('SIGTERM'), 0);

    // The same rule, native mode now (and --cleanup-on-exit, to see what is left to put back at the end).
    d = await DaemonProcess.start(id, ['--xdp-mode', 'native', '--cleanup-on-exit', '--log-level', 'info']);
    const c = d.clients();
    const mode = async () =>
      (await c.interfaces.listInterfaces({})).interfaces.find((i) => i.name === vm.hostIf)?.effectiveMode;
    await until('native', async () => (await mode()) === EffectiveXdpMode.EFFECTIVE_XDP_MODE_NATIVE, 5000);
    await until('released', async () => d!.output.includes('offloads no longer needed off: '), 6000);
    const line = d.output.split('\n').find((l) => l.includes('offloads no longer needed off: '))!;
    const why = `no longer needed: ${vm.hostIf} runs our program in native mode`;
    assert.deepEqual((JSON.parse(line) as { released: string[] }).released, [
      `eth0 in netns ${vm.netns}: generic-segmentation-offload on again (${why})`,
      `eth0 in netns ${vm.netns}: tcp-segmentation-offload, tx-udp-segmentation left off (${why}, but the ` +
        'kernel does not let it be turned on while our native program runs; turned on again when the program ' +
        'leaves, by --cleanup-on-exit)',
    ]);
    // What the kernel allows while our native program runs (veth_xdp_set takes the peer's software GSO out of
    // its hw_features): GSO on, TSO and UDP segmentation off.
    assert.deepEqual(gso(), {
      'tcp-segmentation-offload': 'off',
      'generic-segmentation-offload': 'on',
      'tx-udp-segmentation': 'off [fixed]',
    });
    assert.deepEqual(
      recordedFor(vm.netns).filter((f) => GSO.includes(f)),
      ['tcp-segmentation-offload', 'tx-udp-segmentation'],
      'what was turned on is taken out of the host-changes record; what the kernel holds fixed stays in it',
    );
    await sleep(2500);
    assert.equal(
      d.output.split('\n').filter((l) => l.includes('offloads no longer needed off')).length,
      1,
      'said once, not every check',
    );
    assert.equal(await delivered(7986), 20, 'native mode forwards');
    await c.rules.deleteRule({ name: 'web', expectedGeneration: 0n });
    assert.equal(await d.stop('SIGTERM'), 0);
    d = undefined;
    assert.deepEqual(gso(), onAtFirst, 'as the daemon found them, once our program left');
  });
});
