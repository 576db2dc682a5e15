/**
 * One backend's egress that goes away while a reconciler pass reads it is that backend's "egress missing",
 * never a failed pass (docs/architecture.md, promise 5: one object never takes the others down; a review found: `ip link
 * set B down; ip link set B name Bx` logged "resync failed ... Cannot find device" at level error, 13 times
 * in 14 s with B renamed back and forth, and what else the pass had to repair waited for a later one).
 *
 * The moment is made exact with a real host change: the daemon runs with an `ip` first in its PATH that,
 * when asked for the backend's neighbour entry (the read the finding saw fail), renames the backend's egress
 * away (down, renamed), runs the real `ip` (which finds no such device), and names it back (up). Every pass
 * reads that entry, so while this is on every pass meets the egress gone mid-pass. Meanwhile our program is
 * detached from the rule's ingress by hand: that repair must happen in those passes.
 */
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { Protocol, UdpChecksumMode } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sh, shQuiet, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';

describe('reconciler: an egress renamed away while a pass reads it', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const bin = `/tmp/xdpctl-test-${id}-bin`;
  const trigger = `${bin}/renaming`;
  const count = `${bin}/renamed`;
  let d: DaemonProcess | undefined;
  let vm: Host, b1: Host, b2: Host;

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    b2 = topo.addHost('b2', '198.18.2.2/24');
    const ip = sh('sh', ['-c', 'command -v ip']).trim();
    const away = `x${id}gone`;
    mkdirSync(bin, { recursive: true });
    writeFileSync(
      `${bin}/ip`,
      [
        '#!/bin/sh',
        `if [ -e ${trigger} ] && [ "$*" = "-j -s neigh show to ${b1.ip} dev ${b1.hostIf}" ]; then`,
        `  ${ip} link set dev ${b1.hostIf} down && ${ip} link set dev ${b1.hostIf} name ${away}`,
        `  ${ip} "$@"; rc=$?`,
        `  ${ip} link set dev ${away} name ${b1.hostIf}; ${ip} link set dev ${b1.hostIf} up`,
        `  echo renamed >> ${count}`,
        '  exit $rc',
        'fi',
        `exec ${ip} "$@"`,
        '',
      ].join('\n'),
    );
    chmodSync(`${bin}/ip`, 0o755);
  });
  after(async () => {
    rmSync(trigger, { force: true });
    await d?.destroy();
    shQuiet('ip', ['link', 'del', `x${id}gone`]);
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    rmSync(bin, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  const xdpOn = (dev: string) => 'xdp' in (JSON.parse(sh('ip', ['-j', 'link', 'show', 'dev', dev]))[0] as object);
  const renames = () => (existsSync(count) ? readFileSync(count, 'utf8').split('\n').filter(Boolean).length : 0);

  it('the pass goes on: no "resync failed", the detached ingress is re-attached meanwhile', async (t) => {
    d = await DaemonProcess.start(id, ['--log-level', 'info', '--xdp-mode', 'generic'], {
      PATH: `${bin}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}`,
    });
    await d.clients().rules.createRule({
      rule: {
        name: 'web',
        match: { protocol: Protocol.PROTOCOL_UDP, port: 7985, destination: '', sourcePrefixes: [] },
        ingressInterfaces: [vm.hostIf],
        backends: [
          { ip: b1.ip!, mac: '', interface: b1.hostIf, weight: 1 }, // MAC from the neighbour table: read every pass
          { ip: b2.ip!, mac: b2.mac, interface: b2.hostIf, weight: 1 },
        ],
        udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
        labels: {},
        generation: 0n,
      },
    });
    assert.ok(xdpOn(vm.hostIf));
    writeFileSync(trigger, '');
    sh('ip', ['link', 'set', 'dev', vm.hostIf, 'xdpgeneric', 'off']);
    const t0 = Date.now();
    // Passes meet the egress gone (at least 3 of them), and one of them re-attaches our program.
    await until(
      () => `renamed ${renames()} times, xdp on ${vm.hostIf}: ${xdpOn(vm.hostIf)}; ${d!.output.slice(-2000)}`,
      () => renames() >= 3 && xdpOn(vm.hostIf),
      8000,
    );
    const ms = Date.now() - t0;
    const status = (await d.clients().rules.getRule({ name: 'web' })).rule?.status;
    rmSync(trigger);
    const n = renames();
    t.diagnostic(`${n} renames mid-pass; re-attached after ${ms} ms; backend 0: ${status?.backendStatus[0]?.message}`);
    if (process.env.XDPCTL_TEST_KEEP_LOG) writeFileSync(process.env.XDPCTL_TEST_KEEP_LOG, d.output);
    const failed = d.output.split('\n').filter((l) => l.includes('"msg":"resync failed"'));
    assert.deepEqual(failed, [], `no pass failed (${n} renames mid-pass, re-attached after ${ms} ms)`);
    assert.match(d.output, new RegExp(`our XDP program was detached from ${vm.hostIf} by someone else: re-attached`));
    // The other backend, whose egress stayed, is in the table.
    assert.equal(status?.backendStatus[1]?.active, true, JSON.stringify(status));
  });
});
