/**
 * The CLI's deadlines: --timeout (default 10 s) for every call, and for a whole-file transaction
 * (`rules apply`, `links apply`) 2 minutes unless --timeout is given — a suite run under load saw
 * `rules apply` of 700 rules x 64 backends end in DEADLINE_EXCEEDED at 10 s, while the daemon,
 * which completes a transaction once started, applied it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Command } from 'commander';

import { buildProgram } from '../../src/client/cli.js';
import { BULK_TIMEOUT_MS, run, type GlobalOptions, type Session } from '../../src/client/cli/session.js';

/** The deadline (ms from now) a call gets, for these arguments, plain and bulk. */
async function deadlines(argv: string[]): Promise<{ plain: number; bulk: number }> {
  const program = buildProgram();
  let got: { plain: number; bulk: number } | undefined;
  // A command of our own under the real global options: its action sees the session run() opens.
  program.addCommand(
    new Command('probe-deadline').action(
      run(async (s: Session, _o: GlobalOptions) => {
        const now = Date.now();
        const plain = s.call().deadline.getTime() - now;
        const bulk = s.call({ bulk: true }).deadline.getTime() - now;
        got = { plain, bulk };
      }),
    ),
  );
  await program.parseAsync(['node', 'xdpctl', '--server', 'unix:/nonexistent/x.sock', ...argv, 'probe-deadline']);
  return got!;
}

const near = (ms: number, want: number, what: string) => assert.ok(Math.abs(ms - want) < 1000, `${what}: ${ms} ms`);

describe('CLI deadlines', () => {
  it('without --timeout: 10 s a call, 2 minutes a whole-file transaction', async () => {
    const d = await deadlines([]);
    near(d.plain, 10_000, 'plain');
    near(d.bulk, BULK_TIMEOUT_MS, 'bulk');
    assert.equal(BULK_TIMEOUT_MS, 120_000);
  });

  it('an explicit --timeout applies to both', async () => {
    const d = await deadlines(['--timeout', '3s']);
    near(d.plain, 3_000, 'plain');
    near(d.bulk, 3_000, 'bulk');
  });

  it('a deadline past 2^31-1 ms (30 days) is kept whole; one no gRPC call can carry is refused, not cut', async () => {
    const d = await deadlines(['--timeout', '2592000s']);
    near(d.plain, 2_592_000_000, 'plain');
    near(d.bulk, 2_592_000_000, 'bulk');
    near((await deadlines(['--timeout', '99999999h'])).plain, 99_999_999 * 3_600_000, 'the gRPC maximum');
    await assert.rejects(deadlines(['--timeout', '100000000h']), /--timeout.*at most 99999999h/);
  });

  it('says so in --help', () => {
    assert.match(
      buildProgram().helpInformation().replace(/\s+/g, ' '),
      /"rules apply" and "links apply" default to 2m/,
    );
  });
});
