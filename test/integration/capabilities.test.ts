/**
 * Least privilege, proven on the real daemon started under setpriv with a
 * bounding set of only the capabilities named: CAP_BPF + CAP_NET_ADMIN +
 * CAP_PERFMON are enough to start, program a rule and forward real packets
 * (generic mode); a native redirect into a veth whose peer is in another
 * network namespace needs CAP_SYS_ADMIN (setns to inspect the peer), works
 * with it and is refused without it; without
 * any one of the three, the start fails naming the missing capability.
 */
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { ClientError, Status } from 'nice-grpc';

import { CAP, effectiveCapabilities, hasCap } from '../../src/server/auth/capabilities.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { Protocol, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, runId, sleep } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const PORT = 7999;

/** Run the daemon with exactly these capabilities (root uid, bounding set limited). */
const only = (...caps: string[]) => ['setpriv', '--bounding-set', `-all,${caps.map((c) => `+${c}`).join(',')}`, '--'];

describe('least privilege', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const started: DaemonProcess[] = [];
  let vm: Host, b: Host;
  let n = 0;

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b = topo.addHost('b', '198.18.2.1/24');
    topo.routeToXdp('vm');
  });
  after(async () => {
    for (const d of started) {
      await d.stop(); // --cleanup-on-exit: detached, unpinned
      await d.destroy();
    }
    topo.destroy();
    for (let i = 0; i <= n; i++) {
      XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}${i}`);
      rmSync(`/tmp/xdpctl-test-${id}${i}-state`, { recursive: true, force: true });
    }
  });

  const start = async (caps: string[], extra: string[]) => {
    const d = await DaemonProcess.start(
      `${id}${++n}`,
      ['--cleanup-on-exit', '--log-level', 'info', ...extra],
      {},
      only(...caps),
    );
    started.push(d);
    return d;
  };
  /** Stop a daemon (detaching everything) so the next one can attach in another mode. */
  const finish = async (d: DaemonProcess) => {
    assert.equal(await d.stop(), 0);
    await d.destroy();
    started.splice(started.indexOf(d), 1);
  };
  const rule = (): Rule => ({
    name: 'web',
    match: { protocol: Protocol.PROTOCOL_UDP, port: PORT, destination: '', sourcePrefixes: [] },
    ingressInterfaces: [vm.hostIf],
    backends: [{ ip: b.ip!, mac: b.mac, interface: b.hostIf }],
    udpChecksum: 0,
    labels: {},
    generation: 0n,
  });
  const forwards = async (d: DaemonProcess) => {
    const l = await UdpListener.start(b.netns, b.ip!, PORT);
    try {
      const { sent } = await sendUdp(vm.netns, NOWHERE, PORT, 200).done;
      await sleep(100);
      const got = await l.stop();
      assert.equal(got.bad, 0);
      assert.equal(got.unique, sent, `${got.unique} of ${sent} arrived`);
      const { counters } = await d.clients(d.unix).counters.getCounters({});
      assert.equal(counters!.backends[0].packets, BigInt(sent));
    } finally {
      l.kill();
    }
  };
  const capsOf = (d: DaemonProcess) => effectiveCapabilities(readFileSync(`/proc/${d.child.pid}/status`, 'utf8'))!;

  it('CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON: starts, programs a rule and forwards (generic mode)', async () => {
    const d = await start(['bpf', 'net_admin', 'perfmon'], ['--xdp-mode', 'generic']);
    const eff = capsOf(d);
    assert.equal(eff, (1n << BigInt(CAP.BPF)) | (1n << BigInt(CAP.NET_ADMIN)) | (1n << BigInt(CAP.PERFMON)));
    assert.match(d.output, /without CAP_SYS_ADMIN, veth peers in other network namespaces cannot be inspected/);
    assert.match(d.output, /without CAP_NET_RAW, ARP requests of our own cannot be sent/, 'said, not silent');
    await d.clients(d.unix).rules.createRule({ rule: rule() });
    await forwards(d);
    await finish(d);
  });

  it('native redirects into a veth whose peer is in another namespace need CAP_SYS_ADMIN', async () => {
    const d = await start(['bpf', 'net_admin', 'perfmon'], ['--xdp-mode', 'native']);
    const err = await d
      .clients(d.unix)
      .rules.createRule({ rule: rule() })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    assert.ok(err instanceof ClientError, `refused: ${err}`);
    // The peer check runs `ip -n <netns>` (setns), which the kernel refuses without CAP_SYS_ADMIN.
    assert.equal(err.code, Status.FAILED_PRECONDITION, err.message);
    assert.match(err.details, /network namespace xdpt-\w+-b, which xdpctld cannot enter without CAP_SYS_ADMIN/);
    await finish(d);

    const d2 = await start(['bpf', 'net_admin', 'perfmon', 'sys_admin'], ['--xdp-mode', 'native']);
    assert.ok(hasCap(capsOf(d2), CAP.SYS_ADMIN));
    await d2.clients(d2.unix).rules.createRule({ rule: rule() });
    await forwards(d2);
    await finish(d2);
  });

  for (const [missing, caps] of [
    ['CAP_NET_ADMIN', ['bpf', 'perfmon']],
    ['CAP_BPF', ['net_admin', 'perfmon']],
    ['CAP_PERFMON', ['bpf', 'net_admin']],
  ] as const) {
    it(`without ${missing} the start fails and names it`, async () => {
      await assert.rejects(start([...caps], []), (e: Error) => {
        assert.match(e.message, new RegExp(`xdpctld exited 1: .*missing capabilities: ${missing} \\(`));
        return true;
      });
    });
  }
});
