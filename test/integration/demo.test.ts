/**
 * `npm run demo` in its trimmed mode, so the tutorial cannot rot: it must
 * succeed, show both demos, and leave nothing behind; Ctrl-C in the middle
 * also leaves nothing behind; `--help` prints the usage and does nothing.
 * Checks look for this run's names only (other runs may be going on).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { describe, it } from 'node:test';

import { kernelOnly, ROOT, sh } from '../helpers/env.js';

const DEMO = ['--import', 'tsx', `${ROOT}scripts/demo.ts`];

/** The run's id, from the daemon command line the demo prints. */
const idOf = (out: string) => /xdpctl-demo-([0-9a-f]{4})\.sock/.exec(out)?.[1];

function leftovers(id: string): string[] {
  const netns = sh('ip', ['netns', 'list'])
    .split('\n')
    .filter((l) => l.startsWith(`xdpdemo-${id}-`));
  const pins = readdirSync('/sys/fs/bpf').filter((d) => d === `xdpctl-demo-${id}`);
  const links = sh('ip', ['-br', 'link'])
    .split('\n')
    .filter((l) => l.startsWith(`xd${id}`));
  return [...netns, ...pins, ...links];
}

describe('npm run demo (--quick)', kernelOnly(), () => {
  it('runs both demos end to end and cleans up', () => {
    const r = spawnSync(process.execPath, [...DEMO, '--quick'], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
    assert.equal(r.status, 0, `demo failed:\n${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /\$ xdpctl links connect/);
    assert.match(r.stdout, /\$ xdpctl rules add web --port 7999 --source 198\.18\.1\.1 --backend/);
    assert.match(r.stdout, /The container received 200 of 200 datagrams, 0 damaged\./);
    assert.match(r.stdout, /\(exit code 3\)/, 'the invalid rule is shown failing');
    assert.match(r.stdout, /removed 5 namespaces, 5 veth pairs, pins and state/);
    const id = idOf(r.stdout);
    assert.ok(id, 'the run id');
    assert.deepEqual(leftovers(id), []);
  });

  it('--help prints the usage and does nothing else', () => {
    const before = sh('ip', ['netns', 'list']);
    const r = spawnSync(process.execPath, [...DEMO, '--help'], { cwd: ROOT, encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^Usage: npm run demo/);
    assert.doesNotMatch(r.stdout, /xdpctld --listen/);
    assert.equal(sh('ip', ['netns', 'list']).includes('xdpdemo-') && !before.includes('xdpdemo-'), false);
  });

  it('Ctrl-C in the middle: cleans up and exits 130', async () => {
    const child = spawn(process.execPath, [...DEMO, '--quick'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    // Interrupt once the cross-connect demo has made its namespaces and the daemon serves.
    const end = Date.now() + 90_000;
    while (!/\$ xdpctl links connect/.test(out) && child.exitCode === null && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const id = idOf(out);
    assert.ok(id, `the run id: ${out}`);
    assert.ok(leftovers(id).length > 0, 'the demo had made namespaces when interrupted');
    child.kill('SIGINT');
    assert.equal(await exited, 130, out);
    assert.match(out, /demo: SIGINT: cleaning up/);
    assert.match(out, /removed \d+ namespaces, \d+ veth pairs, pins and state/);
    assert.deepEqual(leftovers(id), []);
  });
});
