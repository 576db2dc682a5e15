/**
 * This datapath's program attached by hand to an interface no rule or link uses, while the daemon runs
 * (docs/architecture.md, promise 6: nothing attached that ListInterfaces does not show; promise 1: a level-triggered pass).
 * A review saw it stay attached 7 s and more, unlisted, nothing logged, health SERVING,
 * while a restart found it, logged it and detached it: the start and the running reconciler disagreed
 * about the same host. Now a pass does what the start does: the program is detached within seconds, one
 * log line per event, nothing left listed; the rule that uses another interface keeps forwarding.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { Protocol, UdpChecksumMode } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const { SERVING } = HealthCheckResponse_ServingStatus;

describe('our program attached by hand where nothing uses it', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const stray = `x${id}sw`;
  let d: DaemonProcess;
  let c: Clients;
  let vm: Host, b1: Host;

  before(async () => {
    ({ vm, b1 } = topo.clientAndBackend());
    sh('ip', ['link', 'add', stray, 'type', 'veth', 'peer', 'name', `x${id}sp`]);
    sh('ip', ['link', 'set', stray, 'up']);
    sh('ip', ['link', 'set', `x${id}sp`, 'up']);
    d = await DaemonProcess.start(id, ['--log-level', 'info']);
    c = d.clients();
  });
  after(async () => {
    await d?.destroy();
    shQuiet('ip', ['link', 'del', stray]);
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  const xdp = (ifname: string) => JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', ifname]))[0].xdp;
  const progOn = (ifname: string): number => xdp(ifname)?.prog?.id ?? xdp(ifname)?.attached?.[0]?.prog?.id ?? 0;
  const lines = (re: RegExp) => d.output.split('\n').filter((l) => re.test(l)).length;
  const said = new RegExp(
    `"msg":"${stray} runs this datapath's XDP program, but no rule or link uses it: detaching it"`,
  );
  async function delivered(n = 50): Promise<number> {
    const l = await UdpListener.start(b1.netns, b1.ip!, 7992);
    try {
      await sendUdp(vm.netns, NOWHERE, 7992, n, { flows: 10 }).done;
      await sleep(150);
      return (await l.stop()).unique;
    } finally {
      l.kill();
    }
  }

  it('is detached by the running reconciler, said once per event, and nothing stays unlisted', async (t) => {
    await c.rules.createRule({
      rule: {
        name: 'web',
        match: { protocol: Protocol.PROTOCOL_UDP, port: 7992, destination: '', sourcePrefixes: [] },
        ingressInterfaces: [vm.hostIf],
        backends: [{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf, weight: 1 }],
        udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
        labels: {},
        generation: 0n,
      },
    });
    const ours = progOn(vm.hostIf);
    assert.ok(ours > 0, 'premise: our program runs on the ingress');
    assert.equal(await delivered(), 50);

    for (const round of [1, 2]) {
      // By hand, this datapath's own program (the pinned one), on an interface nothing uses.
      sh('ip', [
        'link',
        'set',
        'dev',
        stray,
        'xdpgeneric',
        'pinned',
        `/sys/fs/bpf/xdpctl-test-${id}/progs/xdpctl_main`,
      ]);
      assert.equal(progOn(stray), ours, 'premise: the same program, attached by hand');
      const t0 = Date.now();
      // Was: still attached 7 s later and after, unlisted, nothing logged.
      await until(`round ${round}: detached from ${stray}`, async () => progOn(stray) === 0, 6000);
      t.diagnostic(`round ${round}: detached ${Date.now() - t0} ms after the attach`);
      await until(`round ${round}: said`, async () => lines(said) === round, 2000);
      const names = (await c.interfaces.listInterfaces({})).interfaces.map((i) => i.name);
      assert.ok(!names.includes(stray), `not listed once detached (${names.join(', ')})`);
      assert.deepEqual(names.sort(), [b1.hostIf, vm.hostIf].sort());
    }
    // Once per event: nothing more while nothing happens.
    await sleep(3000);
    assert.equal(lines(said), 2, 'one line per event');
    assert.equal(progOn(stray), 0);
    assert.equal(progOn(vm.hostIf), ours, 'the ingress keeps our program');
    assert.equal(await delivered(), 50, 'the rule forwards throughout');
    assert.equal((await c.health.check({ service: 'xdpctl.datapath' })).status, SERVING);
    await c.rules.deleteRule({ name: 'web', expectedGeneration: 0n });
  });
});
