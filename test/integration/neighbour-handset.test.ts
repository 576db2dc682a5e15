/**
 * Facts the daemon cannot check are not reported as good (issue 16, "observe, don't assume"), with real
 * namespaces, veths and datagrams:
 *  - a backend given without a MAC whose neighbour entry was set by hand (PERMANENT) with a wrong MAC: the
 *    kernel never confirms such an entry (no probe, no timeout), so the status says the MAC cannot be
 *    verified, naming the entry, never "MAC resolved from the neighbour table" (0 of 20 delivered, which is
 *    what such a MAC may do); the same with the right MAC (20 of 20: still unconfirmed); an entry the kernel
 *    resolves itself (ARP) is "resolved from the neighbour table" again.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { Protocol, UdpChecksumMode } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';

describe('neighbour entries set by hand: cannot be verified', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess;
  let c: Clients;
  let vm: Host, b1: Host, b2: Host;
  const listeners: UdpListener[] = [];

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    b2 = topo.addHost('b2', '198.18.2.2/24');
    topo.defaultRouteVia('vm', '198.18.1.254', vm.hostMac);
    d = await DaemonProcess.start(id, ['--log-level', 'info']);
    c = d.clients();
  });
  after(async () => {
    listeners.forEach((l) => l.kill());
    await d?.destroy();
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  const status = async (name: string) => (await c.rules.getRule({ name })).rule!.status!;
  /** Send `n` datagrams from vm to the port; how many b1 and b2 received. */
  async function send(port: number, n = 20) {
    const ls = [await UdpListener.start(b1.netns, b1.ip!, port), await UdpListener.start(b2.netns, b2.ip!, port)];
    listeners.push(...ls);
    const { sent } = await sendUdp(vm.netns, NOWHERE, port, n, { flows: 10 }).done;
    await sleep(150);
    const got = await Promise.all(ls.map(async (l) => (await l.stop()).unique));
    return { sent, got };
  }
  const rule = (name: string, port: number, backends: { ip: string; mac: string; interface: string }[]) => ({
    name,
    match: { protocol: Protocol.PROTOCOL_UDP, port, destination: '', sourcePrefixes: [] },
    ingressInterfaces: [vm.hostIf],
    backends: backends.map((b) => ({ ...b, weight: 1 })),
    udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
    labels: {},
    generation: 0n,
  });

  it('a MAC from a PERMANENT neighbour entry says it cannot be verified, wrong or right', async () => {
    const wrong = `02:16:3e:${id.slice(0, 2)}:${id.slice(2, 4)}:77`;
    sh('ip', ['neigh', 'replace', b1.ip!, 'lladdr', wrong, 'dev', b1.hostIf, 'nud', 'permanent']);
    try {
      await c.rules.createRule({ rule: rule('perm', 7984, [{ ip: b1.ip!, mac: '', interface: b1.hostIf }]) });
      const message = async () => (await status('perm')).backendStatus[0]?.message ?? '';
      await until('cannot be verified', async () => /cannot be verified/.test(await message()), 5000);
      const st = await status('perm');
      assert.equal(st.backendStatus[0].mac, wrong, 'the MAC written is the entry’s');
      assert.match(
        st.backendStatus[0].message,
        new RegExp(
          `^MAC ${wrong} cannot be verified: the neighbour entry for ${b1.ip!.replace(/\./g, '\\.')} on ` +
            `${b1.hostIf} was set by hand \\(PERMANENT\\), which the kernel never confirms`,
        ),
      );
      const fit = st.conditions.find((x) => x.type === 'BackendsReceiving')!;
      assert.deepEqual([fit.status, fit.reason], [ConditionStatus.CONDITION_STATUS_UNKNOWN, 'BackendsUnverified']);
      const r = await send(7984);
      assert.equal(r.got[0], 0, `what a wrong MAC does: 0 of ${r.sent} delivered`);
      assert.equal((d.output.match(/"msg":"backend [^"]* cannot be verified: the neighbour entry/g) ?? []).length, 1);

      // The right MAC, still set by hand: delivered, and still not confirmed by anything.
      sh('ip', ['neigh', 'replace', b1.ip!, 'lladdr', b1.mac, 'dev', b1.hostIf, 'nud', 'permanent']);
      await until('the new MAC in use', async () => (await status('perm')).backendStatus[0]?.mac === b1.mac, 5000);
      await until('says so for the new MAC', async () => (await message()).startsWith(`MAC ${b1.mac} cannot`), 5000);
      const r2 = await send(7984);
      assert.equal(r2.got[0], r2.sent, `the right MAC: ${r2.got[0]} of ${r2.sent} delivered`);
    } finally {
      shQuiet('ip', ['neigh', 'del', b1.ip!, 'dev', b1.hostIf]);
    }
    // An entry the kernel resolves (ARP answered by the host) is evidence: no longer "cannot be verified".
    await until(
      'resolved from the neighbour table',
      async () => (await status('perm')).backendStatus[0]?.message === 'MAC resolved from the neighbour table',
      10_000,
    );
    const r3 = await send(7984);
    assert.equal(r3.got[0], r3.sent);
    await c.rules.deleteRule({ name: 'perm', expectedGeneration: 0n });
  });
});
