/**
 * Every signal Node knows has a decided fate in xdpctld (src/server/signals.ts): stopped on, reloaded on,
 * ignored with a log line, or left to the kernel or Node for a stated reason. A signal added to neither
 * list (a new platform's, or one forgotten) fails here. And what the daemon's children.ts promises: a
 * guarded child dies with its parent, SIGKILL included, and keeps the command's own errors.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { describe, it } from 'node:test';

import { inspectTarget, uncheckedTarget } from '../../src/server/core/unchecked.js';
import { KernelError } from '../../src/server/dataplane/errors.js';
import {
  ChildTimedOut,
  childGuard,
  guardedArgv,
  ownLimit,
  runGuarded,
  runGuardedSync,
} from '../../src/server/dataplane/children.js';
import { SIGNAL_ACTIONS, UNHANDLED } from '../../src/server/signals.js';
import { ROOT, sleep } from '../helpers/env.js';

describe('signals', () => {
  it('every signal is either handled or left alone for a stated reason, never both', () => {
    for (const s of Object.keys(constants.signals)) {
      const handled = s in SIGNAL_ACTIONS;
      const left = s in UNHANDLED;
      assert.ok(handled !== left, `${s}: ${handled ? 'in both lists' : 'in neither list'}`);
    }
  });

  it('the signals whose default action ends a process are all handled, except the ones that cannot be', () => {
    // signal(7): Term and Core default actions.
    const ends = [
      'SIGHUP',
      'SIGINT',
      'SIGQUIT',
      'SIGUSR1',
      'SIGUSR2',
      'SIGALRM',
      'SIGTERM',
      'SIGSTKFLT',
      'SIGXCPU',
      'SIGVTALRM',
      'SIGIO',
      'SIGPWR',
    ];
    for (const s of ends.filter((x) => x in constants.signals)) assert.ok(s in SIGNAL_ACTIONS, s);
    // Core by default, but ignored by Node (a write past RLIMIT_FSIZE fails with EFBIG): left so.
    assert.ok('SIGXFSZ' in UNHANDLED);
    assert.equal(SIGNAL_ACTIONS.SIGHUP.action, 'reload');
    for (const s of ['SIGTERM', 'SIGINT', 'SIGQUIT']) assert.equal(SIGNAL_ACTIONS[s].action, 'stop', s);
  });

  it('README and --help name every signal the daemon handles', () => {
    const readme = readFileSync(`${ROOT}README.md`, 'utf8');
    const main = readFileSync(`${ROOT}src/server/main.ts`, 'utf8');
    for (const s of Object.keys(SIGNAL_ACTIONS).filter((x) => x !== 'SIGPOLL')) {
      assert.ok(new RegExp(`\\b${s}\\b`).test(readme), `README names ${s}`);
      assert.ok(new RegExp(`\\b${s}\\b`).test(main), `--help names ${s}`);
    }
  });
});

describe('child processes (children.ts)', () => {
  it('is guarded on this machine (setpriv from util-linux)', () => {
    assert.deepEqual(childGuard(), { guarded: true });
    const [file, argv] = guardedArgv('ip', ['monitor', 'link']);
    assert.match(file, /\/setpriv$/);
    assert.deepEqual(argv.slice(0, 3), ['--pdeathsig', 'KILL', '--']);
    assert.deepEqual(argv.slice(-3), ['ip', 'monitor', 'link']);
  });

  it('a command that is not there fails as it always did (spawn ENOENT), not through the guard', async () => {
    assert.deepEqual(guardedArgv('xdpctl-no-such-command', ['a']), ['xdpctl-no-such-command', ['a']]);
    await assert.rejects(runGuarded('xdpctl-no-such-command', []), { code: 'ENOENT' });
  });

  it("a failed command's error names the command, not the guard, and carries its output", async () => {
    const e = (await runGuarded('sh', ['-c', 'echo out; echo err >&2; exit 3']).catch((x: unknown) => x)) as Error & {
      code: number;
      stdout: string;
      stderr: string;
      cmd: string;
    };
    assert.equal(e.code, 3);
    assert.equal(e.stdout, 'out\n');
    assert.equal(e.stderr, 'err\n');
    assert.equal(e.cmd, 'sh -c echo out; echo err >&2; exit 3');
    assert.match(e.message, /^Command failed: sh -c echo out; echo err >&2; exit 3\nerr\n$/);
    assert.doesNotMatch(e.message, /setpriv/);
    assert.throws(
      () => runGuardedSync('sh', ['-c', 'exit 4'], { encoding: 'utf8', stdio: 'pipe' }),
      (x: Error) => {
        assert.equal((x as Error & { status: number }).status, 4);
        assert.match(x.message, /^Command failed: sh -c exit 4/);
        return true;
      },
    );
    assert.equal(runGuardedSync('echo', ['a b'], { encoding: 'utf8', stdio: 'pipe' }), 'a b\n');
  });

  it('a child that does not answer is killed at its deadline, the call failing at once (not waiting for it)', async () => {
    // A stopped child (as one in D state): SIGSTOPs itself; the call fails at the deadline, naming the command.
    const t0 = Date.now();
    const e = (await runGuarded('sh', ['-c', 'kill -STOP $$; echo never'], { deadlineMs: 300 }).catch(
      (x: unknown) => x,
    )) as Error & { code: string };
    assert.ok(e instanceof ChildTimedOut, String(e));
    assert.equal(e.code, 'ETIMEDOUT');
    assert.equal(e.message, 'sh -c kill -STOP $$; echo never did not answer within 0.3 s (killed)');
    assert.ok(Date.now() - t0 < 2000, `failed after ${Date.now() - t0} ms`);
    assert.throws(
      () => runGuardedSync('sleep', ['5'], { encoding: 'utf8', stdio: 'pipe', timeout: 300 }),
      /sleep 5 did not answer within 0.3 s \(killed\)/,
    );
    // A refusal of the daemon's own limits is named as such.
    assert.equal(ownLimit({ code: 'EAGAIN' }), 'a pids limit? (cgroup pids.max, TasksMax, RLIMIT_NPROC)');
    assert.equal(ownLimit({ code: 'ENOENT' }), undefined);
  });

  it('a check that could not be made is "cannot be verified", never a verdict from nothing', () => {
    const e = new Error('spawn /usr/bin/setpriv EAGAIN');
    assert.deepEqual(uncheckedTarget('b1', e, undefined), {
      ok: true,
      unverified: true,
      key: 'unchecked',
      detail: 'cannot check b1: spawn /usr/bin/setpriv EAGAIN',
    });
    assert.deepEqual(uncheckedTarget('b1', e, { ok: true, detail: "b1's peer has NAPI" }).ok, true);
    // A negative verdict observed before is kept, said as last checked.
    assert.deepEqual(uncheckedTarget('b1', e, { ok: false, detail: 'its peer b1p is down', waitsForPeer: true }), {
      ok: false,
      detail: 'its peer b1p is down (as last checked; cannot check b1: spawn /usr/bin/setpriv EAGAIN)',
      waitsForPeer: true,
    });
  });

  it('an egress gone during its check (ENODEV looking it up, no such device after) is "does not exist", not unchecked', async () => {
    // The CI run of stop 37 (interface-rename, "a backend's egress renamed and renamed back"): the pass read the
    // interfaces, the egress was renamed before its check, and the rule said "could not be checked (… ENODEV)"
    // for one pass before "does not exist".
    const gone = new KernelError('look up interface b1', 19, [], 'no such interface');
    const dp = (err: Error) => ({ redirectTarget: () => Promise.reject(err) });
    const lookup = (there: boolean) => (n: string) =>
      there && n === 'b1' ? { ifindex: 7, mac: '02:00:00:00:00:01' } : undefined;
    const inspect = (err: Error, there: boolean) => inspectTarget(dp(err), new Map(), 'b1', false, lookup(there));
    assert.deepEqual(await inspect(gone, false), { ok: false, gone: true, detail: 'egress b1 does not exist' });
    // Back by the time of the lookup (renamed back, re-created): nothing was learnt, still unchecked.
    assert.equal((await inspect(gone, true)).unverified, true);
    // ENODEV of another lookup (the peer's, in its namespace) says nothing about b1, there: unchecked.
    const peer = new KernelError('look up interface b1p', 19, [], 'no such interface');
    assert.equal((await inspect(peer, true)).key, 'unchecked');
    // Any other failure with b1 there: unchecked as before; with no b1 now: gone, whatever the check's error.
    const limit = new Error('spawn /usr/bin/setpriv EAGAIN');
    assert.equal((await inspect(limit, true)).key, 'unchecked');
    assert.equal((await inspect(limit, false)).gone, true);
    // A lookup that fails itself (EMFILE) tells nothing: unchecked.
    const failing = () => {
      throw new Error('EMFILE');
    };
    assert.equal((await inspectTarget(dp(gone), new Map(), 'b1', false, failing)).key, 'unchecked');
    // Without a lookup (a change's checks: an egress missing at plan time is accepted and waits), unchecked: a
    // change is not refused for an egress renamed during its check (twenty-fifth review, 6).
    assert.equal((await inspectTarget(dp(gone), new Map(), 'b1', false)).key, 'unchecked');
  });

  it('a guarded child dies with its parent, killed with SIGKILL', async () => {
    // A parent that starts `sleep 300` through the guard, prints the child's pid, and waits.
    const code =
      `import { spawnGuarded } from '${ROOT}src/server/dataplane/children.ts';` +
      `const c = spawnGuarded('sleep', ['300'], { stdio: 'ignore' });` +
      `c.on('spawn', () => console.log(c.pid)); setInterval(() => {}, 1000);`;
    const parent = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const pid = await new Promise<number>((resolve) => parent.stdout.once('data', (d) => resolve(Number(String(d)))));
    const alive = () => {
      try {
        const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
        return st.slice(st.lastIndexOf(')') + 2)[0] !== 'Z';
      } catch {
        return false;
      }
    };
    try {
      // The guard execs the command under the same pid.
      for (let i = 0; i < 50 && !readFileSync(`/proc/${pid}/cmdline`, 'utf8').startsWith('sleep\0'); i++)
        await sleep(20);
      assert.equal(readFileSync(`/proc/${pid}/cmdline`, 'utf8'), 'sleep\x00300\x00');
      parent.kill('SIGKILL');
      const t0 = Date.now();
      while (alive() && Date.now() - t0 < 2000) await sleep(20);
      assert.equal(alive(), false, `sleep ${pid} still running ${Date.now() - t0} ms after its parent was killed`);
    } finally {
      parent.kill('SIGKILL');
      spawnSync('kill', ['-9', String(pid)]);
    }
  });
});
