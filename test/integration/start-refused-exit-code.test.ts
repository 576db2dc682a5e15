/**
 * A refused start exits non-zero whatever stdout is: a regular file (`>` and `>>`, as systemd's
 * StandardOutput=file: and append:), /dev/null, a pipe. Stdout on a regular file is written by a log writer
 * process whose pipes do not hold the daemon (log-relay.ts): before, Node ended the process by itself, code 0,
 * while the refusal's last lines were being flushed (the eighteenth review: `xdpctld --max-rules 100 > out.log;
 * echo $?` gave 0, 4 of 4; 1 with /dev/null or a pipe). The refusal here: a state store that is no database.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { after, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DAEMON, DAEMON_NODE_FLAGS, kernelOnly, ROOT, runId } from '../helpers/env.js';

describe('a refused start exits 1 whatever its stdout is', kernelOnly(), () => {
  const id = runId();
  const dir = `/tmp/xdpctl-test-${id}-exit`;
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  after(() => {
    XdpDatapath.unpinAll(pinRoot);
    rmSync(dir, { recursive: true, force: true });
  });

  /** xdpctld on a corrupt state store, its stdout as `script` makes it ($0: the output file); exit code, stderr. */
  const refusedStart = (script: string) =>
    new Promise<{ code: number | null; signal: string | null; err: string }>((resolve) => {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(`${dir}/state`, { recursive: true, mode: 0o700 });
      writeFileSync(`${dir}/state/state.db`, 'not a database, not at all'.repeat(200));
      const child = spawn(
        'sh',
        [
          '-c',
          script,
          `${dir}/out.log`,
          process.execPath,
          ...DAEMON_NODE_FLAGS,
          DAEMON,
          '--listen',
          `unix:${dir}/sock`,
          '--pin-root',
          pinRoot,
          '--state-dir',
          `${dir}/state`,
          '--max-rules',
          '16',
        ],
        { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let err = '';
      child.stderr!.on('data', (d) => (err += d));
      child.stdout!.resume();
      child.once('exit', (code, signal) => resolve({ code, signal, err }));
    });

  for (const [what, script] of [
    ['a regular file (>)', 'o=$0; exec "$@" > "$o"'],
    ['a regular file (>>)', 'o=$0; exec "$@" >> "$o"'],
    ['/dev/null', 'exec "$@" > /dev/null'],
    ['a pipe', 'exec "$@"'],
  ] as const) {
    it(`stdout on ${what}: exit code 1, the refusal said`, async () => {
      const r = await refusedStart(script);
      assert.equal(r.signal, null);
      assert.match(r.err, /xdpctld: /, 'the refusal on stderr');
      assert.equal(r.code, 1, `exit code of a refused start (stderr: ${r.err.slice(-500)})`);
      if (what.startsWith('a regular file')) {
        assert.match(readFileSync(`${dir}/out.log`, 'utf8'), /"start failed"/, 'the log line reached the file');
      }
    });
  }
});
