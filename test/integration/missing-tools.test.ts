/**
 * A PATH without a program the daemon runs to observe the host (a review finding, LOW): before, xdpctld
 * started silently without `ethtool` (or `ip`, `nsenter`), and each read that needed it failed later on its own.
 * Now the start names each one missing in one warning line, with what cannot be observed without it, and
 * GetStatus (and `xdpctl status`) lists it among the datapath's warnings. The daemon runs with a PATH directory
 * of the test's own: the other programs it runs (ip, nsenter, setpriv) linked there, ethtool not.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { xdpctl, type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, until } from '../helpers/env.js';
import { backendOf, esc, Lab } from '../helpers/lab.js';
import type { Host } from '../helpers/topology.js';

describe('a PATH without ethtool: said at start and in GetStatus', kernelOnly(), () => {
  const lab = new Lab();
  let d: DaemonProcess;
  let c: Clients;
  let bin: string;

  before(async () => {
    bin = mkdtempSync(join(tmpdir(), `xdpctl-path-${lab.id}-`));
    for (const tool of ['ip', 'nsenter', 'setpriv']) {
      symlinkSync(sh('sh', ['-c', `command -v ${tool}`]).trim(), join(bin, tool));
    }
    ({ d, c } = await lab.start(['--log-level', 'info'], { PATH: bin }));
  });
  after(async () => {
    await lab.destroy();
    rmSync(bin, { recursive: true, force: true });
  });

  it('one warning line names ethtool and what cannot be read without it; GetStatus and xdpctl status list it', async () => {
    const lines = d.output.split('\n').filter((l) => /not found in PATH/.test(l));
    assert.equal(lines.length, 1, lines.join('\n'));
    const line = JSON.parse(lines[0]) as { level: number; msg: string; missing: string[] };
    assert.equal(line.level, 40, 'a warning');
    assert.deepEqual(line.missing, ['ethtool']);
    assert.match(line.msg, /^ethtool not found in PATH: veth GRO\/offload state cannot be read/);
    assert.doesNotMatch(line.msg, /\bip not found|nsenter not found/, 'only what is missing');

    const warnings = (await c.daemon.getStatus({})).datapath!.warnings;
    const said = warnings.filter((w) => /not found in PATH/.test(w));
    assert.equal(said.length, 1, warnings.join('\n'));
    assert.match(said[0], /^ethtool not found in PATH: veth GRO\/offload state cannot be read/);

    const status = await xdpctl(d.unix, ['status']);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /ethtool not found in PATH/, status.stdout);
  });
});

/**
 * nsenter (newcomer review, LOW): the warning said only "veth peers in network namespaces without a name (a
 * container's) cannot be inspected or prepared", but every read or change made inside another namespace needs it,
 * named ones too: a veth peer's GRO and offloads (ethtool runs there), the detach of our program from a device moved
 * away. The daemon runs native mode with the lab's hosts in named namespaces (/run/netns): the warning says the whole
 * of it, and what the daemon observes shows it for a named namespace (the ingress's peer's offloads unread, the
 * backend egress unverified).
 */
describe('a PATH without nsenter: what cannot be done, named namespaces too', kernelOnly(), () => {
  const lab = new Lab();
  let d: DaemonProcess;
  let c: Clients;
  let bin: string;
  let hosts: Record<'vm' | 'b1', Host>;

  before(async () => {
    bin = mkdtempSync(join(tmpdir(), `xdpctl-path-${lab.id}-`));
    for (const tool of ['ip', 'ethtool', 'setpriv']) {
      symlinkSync(sh('sh', ['-c', `command -v ${tool}`]).trim(), join(bin, tool));
    }
    hosts = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' });
    ({ d, c } = await lab.start(['--log-level', 'info', '--xdp-mode', 'native'], { PATH: bin }));
  });
  after(async () => {
    await lab.destroy();
    rmSync(bin, { recursive: true, force: true });
  });

  it('the warning names every read and change made inside another namespace; a named one shows it', async () => {
    const text =
      'nsenter not found in PATH: nothing can be read or changed from inside another network namespace, named ' +
      "(/run/netns) or not (a container's): there a veth peer's GRO and offloads cannot be read or changed " +
      '(ethtool runs inside it), so a native-mode backend egress whose peer is there cannot be verified nor GRO ' +
      "switched on for it, an ingress's peer there cannot have its offloads checked or turned off (nor turned on " +
      'again), and our XDP program cannot be detached from a device moved into another namespace';
    const lines = d.output.split('\n').filter((l) => /not found in PATH/.test(l));
    assert.equal(lines.length, 1, lines.join('\n'));
    const line = JSON.parse(lines[0]) as { level: number; msg: string; missing: string[] };
    assert.equal(line.level, 40, 'a warning');
    assert.deepEqual(line.missing, ['nsenter']);
    assert.equal(line.msg, text);
    const warnings = (await c.daemon.getStatus({})).datapath!.warnings;
    assert.deepEqual(
      warnings.filter((w) => /not found in PATH/.test(w)),
      [text],
      warnings.join('\n'),
    );

    // What it says of a named namespace, observed: the backend's peer (eth0 in netns b1) and the ingress's (in vm).
    const { vm, b1 } = hosts;
    await c.rules.createRule({ rule: lab.rule('web', 7652, [backendOf(b1)]) });
    const unverified = /cannot be verified: cannot check .*: spawn nsenter ENOENT/;
    await until(
      'the backend egress in a named namespace cannot be verified',
      async () => unverified.test((await lab.status('web')).backendStatus[0]?.message ?? ''),
      15_000,
    );
    assert.ok(existsSync(`/run/netns/${b1.netns}`), 'the backend is in a named namespace');
    assert.match(
      d.output,
      new RegExp(`cannot read the offloads of eth0 in netns ${esc(vm.netns)}: spawnSync nsenter ENOENT`),
      "the ingress's peer in a named namespace: its offloads unread",
    );
  });
});
