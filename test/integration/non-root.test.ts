/**
 * The daemon as the image runs it: a non-root uid (10001) whose Node binary carries file capabilities
 * (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON: `setcap ...+ep`, as the Dockerfile does), in a bounding set of
 * only those three (what `cap_drop: [ALL]` + `cap_add` give a container), with its pin root and state
 * directory owned by that uid (what the deployment files' init step does). It starts with exactly those
 * effective capabilities and no others, programs a rule and forwards real packets (generic mode).
 * The pin root lives on a bpffs of the test's own, mounted as the init step leaves the host's: root's,
 * mode 0701 (systemd mounts /sys/fs/bpf 0700; the init step adds search for others), so the test neither
 * depends on nor changes the host's mount. Without that search permission the daemon refuses to start,
 * naming the directory it cannot pass.
 * File capabilities need execve without no_new_privs: this is why the deployment files allow privilege
 * escalation for this one binary (and the image has no setuid files).
 */
import assert from 'node:assert/strict';
import { chmodSync, chownSync, cpSync, mkdirSync, readFileSync, rmdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { CAP, effectiveCapabilities } from '../../src/server/auth/capabilities.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { Protocol } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, runId, sh, sleep } from '../helpers/env.js';
import { OtherUserRuntime } from '../helpers/other-user.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const UID = 10001;
const NOWHERE = '198.18.9.9';
const PORT = 7999;

describe('non-root daemon with file capabilities', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const bpffs = `/tmp/xdpctl-test-${id}-bpffs`;
  const pinRoot = `${bpffs}/xdpctl`;
  let mounted = false;
  const stateDir = `/tmp/xdpctl-test-${id}-state`;
  let rt: OtherUserRuntime | undefined;
  let d: DaemonProcess | undefined;
  let vm: Host, b: Host;

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b = topo.addHost('b', '198.18.2.1/24');
    topo.routeToXdp('vm');
    rt = OtherUserRuntime.create(['dist', 'build/bpf/xdpctl.bpf.o', 'build/descriptor.binpb'], UID, UID);
    mkdirSync(bpffs, { mode: 0o700 });
    sh('mount', ['-t', 'bpf', '-o', 'mode=0701', 'bpf', bpffs]);
    mounted = true;
    for (const dir of [pinRoot, stateDir]) {
      mkdirSync(dir, { mode: 0o700 });
      chownSync(dir, UID, UID);
    }
  });
  after(async () => {
    await d?.destroy();
    topo.destroy();
    if (mounted) {
      XdpDatapath.unpinAll(pinRoot);
      sh('umount', [bpffs]);
    }
    rmdirSync(bpffs);
    rmSync(stateDir, { recursive: true, force: true });
    rt?.remove();
  });

  it('starts as uid 10001 with exactly CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, and forwards', async () => {
    // A copy, not a link: setcap on a hard link would give the checkout's Node the capabilities too.
    const node = join(rt!.root, 'node-caps', 'node');
    mkdirSync(join(rt!.root, 'node-caps'), { mode: 0o755 });
    cpSync(process.execPath, node);
    chmodSync(node, 0o755);
    sh('setcap', ['cap_bpf,cap_net_admin,cap_perfmon+ep', node]);
    const wrap = ['setpriv', '--reuid', String(UID), '--regid', String(UID), '--clear-groups'].concat([
      '--bounding-set',
      '-all,+bpf,+net_admin,+perfmon',
      '--',
    ]);
    const main = join(rt!.root, 'dist/server/main.js');
    const args = ['--xdp-mode', 'generic', '--pin-root', pinRoot];
    // The bpffs as systemd mounts it (0700): the pin root is out of reach, and the refusal says why.
    chmodSync(bpffs, 0o700);
    const refusal = await DaemonProcess.start(id, args, {}, wrap, main, node).then(
      async (x) => (await x.destroy(), 'started'),
      (e: Error) => e.message,
    );
    assert.match(
      refusal,
      new RegExp(
        `pin root ${pinRoot} cannot be reached: this daemon \\(uid ${UID}\\) may not search ${bpffs} \\(mode [01]700`,
      ),
    );
    chmodSync(bpffs, 0o701);
    d = await DaemonProcess.start(id, args, {}, wrap, main, node);
    const status = readFileSync(`/proc/${d.child.pid}/status`, 'utf8');
    assert.match(status, new RegExp(`^Uid:\\s+${UID}\\s+${UID}\\s+${UID}\\s+${UID}$`, 'm'), 'runs as 10001');
    assert.equal(
      effectiveCapabilities(status),
      (1n << BigInt(CAP.BPF)) | (1n << BigInt(CAP.NET_ADMIN)) | (1n << BigInt(CAP.PERFMON)),
    );
    const c = d.clients(d.unix);
    await c.rules.createRule({
      rule: {
        name: 'web',
        match: { protocol: Protocol.PROTOCOL_UDP, port: PORT, destination: '', sourcePrefixes: [] },
        ingressInterfaces: [vm.hostIf],
        backends: [{ ip: b.ip!, mac: b.mac, interface: b.hostIf }],
        udpChecksum: 0,
        labels: {},
        generation: 0,
      },
    });
    const l = await UdpListener.start(b.netns, b.ip!, PORT);
    try {
      const { sent } = await sendUdp(vm.netns, NOWHERE, PORT, 200).done;
      await sleep(100);
      const got = await l.stop();
      assert.equal(got.unique, sent, `${got.unique} of ${sent} arrived`);
      const { counters } = await c.counters.getCounters({});
      assert.equal(counters!.backends[0].packets, BigInt(sent)); // uint64: a bigint (forceLong=bigint)
    } finally {
      l.kill();
    }
  });
});
