/**
 * A PATH without a program the daemon runs to observe the host (a review finding, LOW): before, xdpctld
 * started silently without `ethtool` (or `ip`, `nsenter`), and each read that needed it failed later on its own.
 * Now the start names each one missing in one warning line, with what cannot be observed without it, and
 * GetStatus (and `xdpctl status`) lists it among the datapath's warnings. The daemon runs with a PATH directory
 * of the test's own: the other programs it runs (ip, nsenter, setpriv) linked there, ethtool not.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { xdpctl, type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh } from '../helpers/env.js';
import { Lab } from '../helpers/lab.js';

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
