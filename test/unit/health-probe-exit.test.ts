/**
 * xdpctl-health's exit codes keep "the daemon did not answer" (2) apart from "the probe could not ask"
 * (3: bad usage; a Node older than engines.node, test/unit/node-version.test.ts), so a probe
 * misconfigured in a manifest does not read as a dead daemon. No daemon here: the compiled probe
 * against a socket path where nothing listens.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';

const PROBE = new URL('../../dist/client/health-probe.js', import.meta.url).pathname;
const run = (...args: string[]) => spawnSync(process.execPath, [PROBE, ...args], { encoding: 'utf8' });

describe('xdpctl-health exit codes', () => {
  it('2 when nothing answers, 3 on bad usage, and --help says which is which', () => {
    const none = run('--server', `unix:/tmp/xdpctl-probe-exit-${process.pid}-nothing.sock`, '--timeout', '1s');
    assert.equal(none.status, 2, none.stderr);
    assert.match(none.stderr, /ENOENT/);
    for (const args of [['--timeout', 'soon'], ['--no-such-flag'], ['--server']]) {
      const bad = run(...args);
      assert.equal(bad.status, 3, `${args.join(' ')}: ${bad.stderr}`);
      assert.match(bad.stderr, /^xdpctl-health: .*\nUsage: xdpctl-health/);
    }
    const help = run('--help');
    assert.equal(help.status, 0);
    assert.match(help.stdout, /0 when SERVING, 1 for any other answer, 2 for no answer,\n3 when it could not ask/);
  });
});
