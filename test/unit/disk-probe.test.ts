/**
 * disk-probe.ts: one long-lived probe process (disk-probe-child.ts, run here from its TypeScript source), asked
 * once per probe, never a process per probe. With a real process on a real directory: many probes, one pid; a
 * process held in its write (SIGSTOP stands in for D state on a frozen disk) gets no second write and no second
 * process however often the daemon asks, its write said waiting, and a stop's `answers` gives up at its bound;
 * a process that ends with a write in flight is abandoned and said (not counted as an answer), and a new one is
 * started only after the restart spacing; `close()` does not wait for a held process, which ends at EOF once
 * it goes on. Before (a `dd` per probe): a new pid for each probe.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';

import { DiskProbe, PROBE_FILE } from '../../src/server/dataplane/disk-probe.js';
import type { Logger } from '../../src/server/log.js';
import { alive, until } from '../helpers/env.js';

const entry = fileURLToPath(new URL('../../src/server/dataplane/disk-probe-child.ts', import.meta.url));

/** A logger that keeps its warnings. */
function keeper(): Logger & { warnings: string[] } {
  const warnings: string[] = [];
  const l = {
    warnings,
    debug() {},
    info() {},
    warn(_o: object, msg?: string) {
      warnings.push(msg ?? '');
    },
    error() {},
    child: () => l,
  };
  return l;
}

describe('disk probe: one long-lived process', () => {
  const dir = mkdtempSync(join(tmpdir(), 'xdpctl-disk-probe-'));
  const pids = new Set<number>();
  after(() => {
    for (const p of pids) {
      if (!alive(p)) continue;
      process.kill(p, 'SIGCONT');
      process.kill(p, 'SIGKILL');
    }
    rmSync(dir, { recursive: true, force: true });
  });

  /** Probe and wait for the answer: the time it answered. */
  const answered = async (probe: DiskProbe) => {
    const before = probe.lastAnswer()?.at;
    probe.probe();
    await until(
      'an answer',
      () => probe.lastAnswer() !== undefined && probe.lastAnswer()!.at !== before && !probe.waitingSince(),
      10_000,
    );
    if (probe.pid) pids.add(probe.pid);
    return probe.lastAnswer()!.at;
  };

  it('many probes, one process; the byte written 0600', async () => {
    const log = keeper();
    const probe = new DiskProbe(dir, log, { entry });
    const seen = new Set<number>();
    for (let i = 0; i < 8; i++) {
      await answered(probe);
      assert.ok(probe.pid, 'a probe process runs');
      seen.add(probe.pid);
    }
    assert.deepEqual([...seen].length, 1, `pids: ${[...seen].join(', ')}`);
    const st = statSync(join(dir, PROBE_FILE));
    assert.equal(st.size, 1);
    assert.equal(st.mode & 0o777, 0o600);
    assert.deepEqual(readFileSync(join(dir, PROBE_FILE)), Buffer.alloc(1));
    assert.deepEqual(log.warnings, []);
    const pid = probe.pid!;
    probe.close();
    await until('the process ends at EOF', () => !alive(pid), 10_000);
  });

  it('held in its write: no second write, no second process, the stop gives up at its bound; close does not wait', async () => {
    const log = keeper();
    const probe = new DiskProbe(dir, log, { entry, restartMs: 0 });
    await answered(probe);
    const pid = probe.pid!;
    process.kill(pid, 'SIGSTOP');
    probe.probe();
    const w = probe.waitingSince();
    assert.ok(w, 'a write in flight');
    for (let i = 0; i < 5; i++) {
      probe.probe();
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(probe.pid, pid, 'no other process started');
    assert.equal(probe.waitingSince()?.at, w.at, 'no other write sent: the first one still waits');
    assert.ok(probe.waitingSince()!.ageMs >= 250);
    const t0 = Date.now();
    assert.equal(await probe.answers(300), false, 'not answered within the bound');
    assert.ok(Date.now() - t0 < 2000, `answers() gave up after ${Date.now() - t0} ms`);
    // Going on: the write in flight answered (late), nothing else.
    process.kill(pid, 'SIGCONT');
    await until('the late answer', () => !probe.waitingSince(), 10_000);
    assert.ok(probe.lastAnswer()!.at >= w.at);
    // Held again, then closed: close() returns at once; the process ends at EOF once it goes on.
    process.kill(pid, 'SIGSTOP');
    probe.probe();
    probe.close();
    probe.probe();
    assert.equal(probe.pid, pid);
    process.kill(pid, 'SIGCONT');
    await until('the process ends at EOF', () => !alive(pid), 10_000);
    assert.deepEqual(log.warnings, [], 'an end after close() is not said');
  });

  it('ended with a write in flight: abandoned and said, not an answer; a new process only after the spacing', async () => {
    const log = keeper();
    const probe = new DiskProbe(dir, log, { entry, restartMs: 1500 });
    const first = await answered(probe);
    const pid = probe.pid!;
    process.kill(pid, 'SIGSTOP');
    probe.probe();
    assert.ok(probe.waitingSince());
    process.kill(pid, 'SIGKILL');
    await until('said', () => log.warnings.length > 0, 10_000);
    assert.match(
      log.warnings[0],
      new RegExp(
        `^disk probe: its process \\(pid ${pid}\\) was killed by SIGKILL, with the write and fsync of \\S+ sent at ` +
          '\\S+ not answered \\(\\d+ s\\): abandoned, not counted as an answer of the disk; a new one is started at a ' +
          'pass at least 1.5 s after the last start$',
      ),
    );
    assert.equal(probe.waitingSince(), undefined);
    assert.equal(probe.lastAnswer()!.at, first, 'the abandoned write is no answer');
    probe.probe();
    assert.equal(probe.pid, undefined, 'not started again within the spacing');
    await until(
      'a new process after the spacing',
      () => {
        probe.probe();
        return probe.pid !== undefined;
      },
      10_000,
    );
    assert.notEqual(probe.pid, pid);
    await answered(probe);
    const second = probe.pid!;
    probe.close();
    await until('the process ends at EOF', () => !alive(second), 10_000);
    assert.equal(log.warnings.length, 1);
  });
});
