/**
 * A change whose call ends without an answer (its --timeout passed, the connection dropped) may have been made all
 * the same: xdpctld completes a change once its transaction has started, whatever becomes of the caller (README,
 * Deadlines). The CLI says so and how to read it back; a read that times out, and a call that never reached the
 * daemon, say nothing of the kind. Before (the eighteenth review, MED): `xdpctl --timeout 1s rules apply -f big.yaml`
 * printed only "no answer from xdpctld … within 1000ms (--timeout)" while the daemon applied all 3 000 updates.
 * Here the daemon is held (SIGSTOP) while the CLI waits, so that the deadline passes for certain.
 */
import assert from 'node:assert/strict';
import { writeFileSync, rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { xdpctl } from '../helpers/daemon.js';
import { kernelOnly } from '../helpers/env.js';
import { Lab } from '../helpers/lab.js';
import type { Host } from '../helpers/topology.js';

describe('the CLI says a change without an answer may have been made', kernelOnly(), () => {
  const lab = new Lab();
  let b1: Host;
  let held = false;
  const hold = (on: boolean) => {
    process.kill(lab.d!.child.pid!, on ? 'SIGSTOP' : 'SIGCONT');
    held = on;
  };
  const file = `/tmp/xdpctl-test-${lab.id}-rules.yaml`;
  before(async () => {
    ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    await lab.start();
  });
  after(async () => {
    if (held) hold(false);
    rmSync(file, { force: true });
    await lab.destroy();
  });

  const MAY = /the change may have been made all the same: .*audit log says which \(read it back: (.+)\)$/;

  it('rules create/delete/apply and links connect past their --timeout: said, with the command to read it back', async () => {
    const backend = `${b1.ip},${b1.mac},${b1.hostIf}`;
    writeFileSync(
      file,
      `rules:\n  - {name: web, port: 7999, ingress: [${lab.vm.hostIf}], backends: [{ip: ${b1.ip}, mac: "${b1.mac}", interface: ${b1.hostIf}}]}\n`,
    );
    hold(true);
    try {
      for (const [args, readBack] of [
        [
          ['rules', 'create', 'web', '--port', '7999', '--ingress', lab.vm.hostIf, '--backend', backend],
          'xdpctl rules get web',
        ],
        [['rules', 'delete', 'web'], 'xdpctl rules get web'],
        [['rules', 'apply', '-f', file], 'xdpctl rules list'],
        [['links', 'connect', lab.vm.hostIf, b1.hostIf], 'xdpctl links list'],
      ] as const) {
        const r = await xdpctl(lab.d!.unix, ['--timeout', '1s', ...args]);
        assert.equal(r.code, 11, `${args.join(' ')}: exit code of DEADLINE_EXCEEDED; ${r.stderr}`);
        const line = r.stderr.trim();
        assert.match(line, /no answer from xdpctld at .* within 1000ms \(--timeout\)/, line);
        assert.equal(MAY.exec(line)?.[1], readBack, `${args.join(' ')}: ${line}`);
      }
      // A read, and a dry run (no change asked for): the deadline only.
      for (const args of [
        ['rules', 'list'],
        ['rules', 'apply', '--dry-run', '-f', file],
      ]) {
        const r = await xdpctl(lab.d!.unix, ['--timeout', '1s', ...args]);
        assert.equal(r.code, 11, r.stderr);
        assert.doesNotMatch(r.stderr, /may have been made/, `${args.join(' ')}: ${r.stderr}`);
      }
    } finally {
      hold(false);
    }
    // A change that never reached a daemon: nothing may have been made.
    const r = await xdpctl(`unix:/tmp/xdpctl-test-${lab.id}-nobody.sock`, ['rules', 'delete', 'web']);
    assert.equal(r.code, 10, r.stderr);
    assert.match(r.stderr, /cannot reach xdpctld/);
    assert.doesNotMatch(r.stderr, /may have been made/, r.stderr);
  });
});
