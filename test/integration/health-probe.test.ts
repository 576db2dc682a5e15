/**
 * xdpctl-health, the probe the deployment files run, against a real daemon: exit 0 when SERVING, 1 for
 * another answer (an unknown service is NOT_FOUND), 2 when nothing answers; and what one probe costs
 * next to `xdpctl health` (wall time and peak RSS from GNU time, printed: it runs every few seconds on
 * every node). The cost is shown, not asserted with a time bound (timing belongs to npm run bench); the
 * assertion is structural: the probe loads no gRPC library.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { CLI, kernelOnly, ROOT, runId } from '../helpers/env.js';

const PROBE = `${ROOT}dist/client/health-probe.js`;

function run(cmd: string, args: string[]) {
  return spawnSync(cmd, args, { encoding: 'utf8' });
}

/** Median wall seconds and peak RSS (MB) of `argv` over `n` runs, from GNU time. */
function cost(argv: string[], n = 5): { s: number; mb: number } {
  const s: number[] = [];
  const mb: number[] = [];
  for (let i = 0; i < n; i++) {
    const r = run('/usr/bin/time', ['-f', 'TIME %e %M', ...argv]);
    const m = /TIME (\S+) (\d+)/.exec(r.stderr)!;
    s.push(Number(m[1]));
    mb.push(Number(m[2]) / 1024);
  }
  const med = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  return { s: med(s), mb: med(mb) };
}

describe('xdpctl-health', kernelOnly(), () => {
  const id = runId();
  let d: DaemonProcess;
  before(async () => {
    d = await DaemonProcess.start(id, ['--xdp-mode', 'generic']);
  });
  after(async () => {
    await d?.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
  });

  it('exits 0 when SERVING, over the Unix socket and loopback TCP', () => {
    for (const server of [d.unix, d.tcp]) {
      const r = run(process.execPath, [PROBE, '--server', server, '--timeout', '5s']);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout, '(server): SERVING\n');
    }
    const dp = run(process.execPath, [PROBE, '--server', d.unix, '--service', 'xdpctl.datapath']);
    assert.equal(dp.status, 0, dp.stderr);
    assert.equal(dp.stdout, 'xdpctl.datapath: SERVING\n');
  });

  it('exits 1 for an answer other than SERVING, 2 when nothing answers, 3 on bad usage', () => {
    const unknown = run(process.execPath, [PROBE, '--server', d.unix, '--service', 'no.such.Service']);
    assert.equal(unknown.status, 1);
    assert.match(unknown.stderr, /gRPC status 5: /); // NOT_FOUND
    const none = run(process.execPath, [PROBE, '--server', `unix:/tmp/xdpctl-test-${id}-nothing.sock`]);
    assert.equal(none.status, 2);
    assert.match(none.stderr, /ENOENT/);
    const bad = run(process.execPath, [PROBE, '--timeout', 'soon']);
    assert.equal(bad.status, 3);
    assert.match(bad.stderr, /--timeout "soon"/);
  });

  it('loads no gRPC library; costs a bare Node start (printed next to xdpctl health)', () => {
    const src = readFileSync(PROBE, 'utf8');
    const imports = [...src.matchAll(/^import .* from '([^']+)';$/gm)].map((m) => m[1]);
    assert.deepEqual(
      imports.filter((i) => !i.startsWith('node:')),
      [],
      'only Node built-ins',
    );
    const p = cost([process.execPath, PROBE, '--server', d.unix]);
    const c = cost([process.execPath, CLI, '--server', d.unix, 'health']);
    console.log(
      `one probe: xdpctl-health ${p.s.toFixed(2)} s, ${p.mb.toFixed(0)} MB peak RSS; ` +
        `xdpctl health ${c.s.toFixed(2)} s, ${c.mb.toFixed(0)} MB (medians of 5)`,
    );
  });
});
