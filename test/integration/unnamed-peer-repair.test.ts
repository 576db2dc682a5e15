/**
 * A backend whose veth peer is in an unnamed network namespace (a container's, `unshare -n`'s) is inspected and
 * repaired there as in a named one, when the daemon has a file to enter that namespace by (a process in it, a
 * process's open file of it); only a namespace nothing reaches is left to the redirect counters, and the status
 * says exactly that (docs/architecture.md, promises 1 and 2). A review found (finding 14): peer eth0 of a backend
 * in an `unshare -n` namespace, GRO switched off while it was down (the kernel keeps announcing ndo-xmit): the
 * status said the namespace could not be read, the backend was taken out and put back on trial after every
 * back-off, each trial losing what hashed to it (3000 datagrams over 35 s: 2955 to the other backend, 0 to
 * it, 45 redirect errors), the log flapping "cannot be verified" <-> "cannot receive". With real namespaces,
 * veths and datagrams; the peer's GRO is the subject (set as the fault, read back as the repair).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, sleep, until } from '../helpers/env.js';
import { backendOf, esc, Lab, type UnnamedHost } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

/** `dev`'s feature `name` ("on"/"off") in the namespace `enter` gives nsenter (e.g. ['-t', PID, '-n']). */
const feature = (enter: string[], dev: string, name: string) =>
  new RegExp(`^${name}: (\\w+)`, 'm').exec(sh('nsenter', [...enter, 'ethtool', '-k', dev]))?.[1];
/** The nsid our namespace gives the namespace of `veth`'s peer. */
const peerNsid = (veth: string) =>
  (JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', veth]))[0] as { link_netnsid: number }).link_netnsid;

describe('a backend whose veth peer is in an unnamed namespace: inspected and repaired there', kernelOnly(), () => {
  const lab = new Lab();
  const { id, count } = lab;
  const if3 = `x${id}u3`;
  const if4 = `x${id}u4`;
  const ip3 = '198.18.2.3';
  const ip4 = '198.18.2.4';
  const mac3 = lab.mac('03');
  const mac4 = lab.mac('04');
  let b3: UnnamedHost;
  let d: DaemonProcess;
  let c: Clients;
  let b1: Host;
  let holder: ChildProcess | undefined;
  /** b4's namespace: held by an open file of `holder` (no process in it), entered through that file. */
  let ns4: string;

  before(async () => {
    ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    // b3: in a namespace that a process is in (unshare -n), its veth peer up with GRO on.
    b3 = await lab.addUnnamedHost(if3, `${ip3}/24`, mac3);
    // b4: the same, then the process leaves; another process outside keeps the namespace with an open file.
    const b4 = await lab.addUnnamedHost(if4, `${ip4}/24`, mac4);
    holder = spawn(
      'python3',
      ['-c', 'import os,sys,time; os.open(sys.argv[1], os.O_RDONLY); time.sleep(600)', b4.netns],
      {
        stdio: 'ignore',
      },
    );
    lab.onDestroy(() => holder?.kill());
    const fdPath = () => {
      try {
        return sh('sh', ['-c', `ls -l /proc/${holder!.pid}/fd | grep -o '[0-9]* -> net:' | cut -d' ' -f1`]).trim();
      } catch {
        return '';
      }
    };
    await until('holder has the namespace open', () => /^\d+$/.test(fdPath()));
    ns4 = `/proc/${holder.pid}/fd/${fdPath()}`;
    process.kill(b4.pid);
    await until('no process in b4 namespace', () => {
      try {
        process.kill(b4.pid, 0);
        return false;
      } catch {
        return true;
      }
    });
    ({ d, c } = await lab.start(['--log-level', 'info', '--xdp-mode', 'native', '--cleanup-on-exit']));
  });
  after(() => lab.destroy());

  const status = () => lab.status('u');
  const in4 = (cmd: string) => sh('nsenter', [`--net=${ns4}`, 'sh', '-c', cmd]);

  it('GRO switched off while the peer was down is switched on there, recorded, no backend taken out, and undone at exit', async (t) => {
    await c.rules.createRule({
      rule: lab.rule('u', 7993, [
        backendOf(b1),
        { ip: ip3, mac: mac3, interface: if3 },
        { ip: ip4, mac: mac4, interface: if4 },
      ]),
    });
    const nsid3 = peerNsid(if3);
    const nsid4 = peerNsid(if4);
    // Before any fault: inspected there (not "cannot be verified"), ACTIVE.
    await until('u ACTIVE', async () => (await status()).state === RuleState.RULE_STATE_ACTIVE, 5000);

    // The fault of the finding: GRO off while the peer is down; the kernel keeps announcing ndo-xmit.
    const fault = 'ip link set eth0 down && ethtool -K eth0 gro off && ip link set eth0 up';
    b3.sh(fault);
    in4(fault);
    const t0 = Date.now();
    await until(
      'GRO on again in both unnamed namespaces',
      () =>
        feature(['-t', String(b3.pid), '-n'], 'eth0', 'generic-receive-offload') === 'on' &&
        feature([`--net=${ns4}`], 'eth0', 'generic-receive-offload') === 'on',
      8000,
    );
    t.diagnostic(`GRO on again in both ${Date.now() - t0} ms after the fault`);
    const line = (nsid: number, path: string, via: string, veth: string) =>
      new RegExp(
        `"msg":"GRO switched on on eth0 in the unnamed network namespace with nsid ${nsid} \\(entered through ` +
          `${esc(path)}: ${esc(via)}\\), the veth peer of ${veth}: `,
      );
    await until(
      'the changes logged',
      () =>
        count(line(nsid3, `/proc/${b3.pid}/ns/net`, `process ${b3.pid} (sleep)`, if3)) === 1 &&
        count(line(nsid4, ns4, `an open file of process ${holder!.pid} (python3)`, if4)) === 1,
    );
    // Recorded for --cleanup-on-exit: each peer by its namespace's id and its veth here (no name).
    const rec = JSON.parse(readFileSync(`${d.stateDir}/host-changes.json`, 'utf8')) as {
      gro: { ifname: string; netns?: string; linkIfname?: string; netnsId?: string }[];
    };
    const idOf = (path: string) =>
      sh('python3', [
        '-c',
        'import fcntl,os,struct,sys; f=os.open(sys.argv[1],0); b=bytearray(8); fcntl.ioctl(f,0x8008b70d,b); ' +
          'print(struct.unpack("<Q",b)[0])',
        path,
      ]).trim();
    assert.deepEqual(
      rec.gro
        .filter((g) => g.linkIfname === if3 || g.linkIfname === if4)
        .map((g) => [g.linkIfname, g.ifname, g.netns, g.netnsId])
        .sort(),
      [
        [if3, 'eth0', undefined, idOf(`/proc/${b3.pid}/ns/net`)],
        [if4, 'eth0', undefined, idOf(ns4)],
      ],
      JSON.stringify(rec),
    );
    await until('u ACTIVE after the repair', async () => (await status()).state === RuleState.RULE_STATE_ACTIVE, 5000);

    // Traffic before and after the first back-off and its retry would have come (10 s): every datagram
    // delivered, b3 and b4 get their shares, never taken out.
    const to = [b1, b3, { netns: ns4, ip: ip4 }];
    const r1 = await lab.send(7993, to, 1500, 60, { settle: 300 });
    await sleep(11_000);
    const r2 = await lab.send(7993, to, 1500, 60, { settle: 300 });
    t.diagnostic(`3000 datagrams over ~14 s: ${r1.got} then ${r2.got} (b1, b3, b4)`);
    for (const r of [r1, r2]) {
      assert.equal(r.total, r.sent, `all delivered (${r.got})`);
      assert.ok(r.got[1] > 0 && r.got[2] > 0, `b3 and b4 have their flows (${r.got})`);
    }
    assert.equal(await lab.redirectErrors('u', ip3), 0n, 'no redirect errors to b3');
    assert.equal(await lab.redirectErrors('u', ip4), 0n, 'no redirect errors to b4');
    assert.equal(count(/cannot be verified|put back on trial|the kernel dropped all/), 0, 'no flapping');

    // --cleanup-on-exit: GRO off again there.
    assert.equal(await d.stop('SIGTERM'), 0);
    assert.equal(feature(['-t', String(b3.pid), '-n'], 'eth0', 'generic-receive-offload'), 'off', 'b3: GRO off again');
    assert.equal(feature([`--net=${ns4}`], 'eth0', 'generic-receive-offload'), 'off', 'b4: GRO off again');
    assert.match(d.output, /"msg":"cleanup: host restored"/);
  });
});
