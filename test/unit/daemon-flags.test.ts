/**
 * xdpctld refuses a listen address it cannot serve on with a message naming the flag and the value, exit
 * 2, before anything is opened (a review found raw Node errors, or the plaintext-exposure refusal, for
 * `127.0.0.1:`, `unix:`, a port over 65535 or a path without `unix:`).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';

import { DAEMON } from '../helpers/env.js';

/** Run xdpctld with an impossible --max-rules: an address that passes reaches that check (exit 2 too). */
const run = (...args: string[]) =>
  spawnSync(process.execPath, [DAEMON, ...args, '--max-rules', '0'], { encoding: 'utf8', timeout: 20_000 });

describe('xdpctld listen addresses', () => {
  for (const [flag, value, why] of [
    ['--listen', '127.0.0.1:', /expected host:port/],
    ['--listen', '/tmp/x.sock', /expected host:port .* or unix:\/path/],
    ['--listen', '127.0.0.1:99999', /port 99999 is over 65535/],
    ['--listen', 'unix:', /absolute path/],
    ['--http-listen', 'unix:relative.sock', /absolute path/],
    ['--http-listen', '::1:9092', /expected host:port/],
  ] as const) {
    it(`refuses ${flag} "${value}"`, () => {
      const r = run(flag, value);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, new RegExp(`^xdpctld: ${flag} "${value.replace(/[.*[\]]/g, '\\$&')}": `));
      assert.match(r.stderr, why);
    });
  }
  for (const value of ['127.0.0.1:0', '[::1]:9091', 'localhost:9091', '0.0.0.0:9091', 'unix:/run/x.sock']) {
    it(`accepts --listen "${value}"`, () => {
      const r = run('--listen', value);
      assert.equal(r.status, 2);
      assert.match(r.stderr, /^xdpctld: --max-rules must be/, 'the next check is reached');
    });
  }
});
