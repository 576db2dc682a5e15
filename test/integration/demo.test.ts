/**
 * `npm run demo` in its trimmed mode, so the tutorial cannot rot: it must
 * succeed, show both demos, and leave nothing behind.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { describe, it } from 'node:test';

import { kernelOnly, ROOT, sh } from '../helpers/env.js';

describe('npm run demo (--quick)', kernelOnly(), () => {
  it('runs both demos end to end and cleans up', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', `${ROOT}scripts/demo.ts`, '--quick'], {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 120_000,
    });
    assert.equal(r.status, 0, `demo failed:\n${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /\$ xdpctl links connect/);
    assert.match(r.stdout, /\$ xdpctl rules add web --port 7999 --source 198\.18\.1\.1 --backend/);
    assert.match(r.stdout, /The container received 200 of 200 datagrams, 0 damaged\./);
    assert.match(r.stdout, /\(exit code 3\)/, 'the invalid rule is shown failing');
    assert.match(r.stdout, /removed 5 namespaces, 5 veth pairs, pins and state/);
    assert.doesNotMatch(sh('ip', ['netns', 'list']), /xdpdemo-/);
    assert.deepEqual(
      readdirSync('/sys/fs/bpf').filter((d) => d.startsWith('xdpctl-demo-')),
      [],
      'no pins left',
    );
  });
});
