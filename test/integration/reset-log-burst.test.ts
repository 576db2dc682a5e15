/**
 * --reset-datapath with a new, empty state dir over pins that hold 3 000 rules, stdout a file on a healthy disk (24th
 * review, MED-4). Before: the start wrote one error line per removed rule (~1.9 MB in 200 ms, more than the 1 MiB
 * --log-buffer-bytes), 1 162 of ~3 000 were dropped, the drop notice said "held in a write its disk did not
 * complete" / "is stdout's disk not completing writes?", and each line gave as cause "Either a change was not saved
 * ... the pins record no store generation" while the pins recorded one. After: one error line with the exact count,
 * the first 10 named and the true cause (the reset, the pins' store generation and the new store's); nothing dropped.
 * Real daemons, real pins; the first stopped by SIGTERM without --cleanup-on-exit, so the pins keep its rules.
 */
import assert from 'node:assert/strict';
import { type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess, fileLogLines, fileText, metric, startFileLoggedDaemon } from '../helpers/daemon.js';
import { kernelOnly, runId, sh } from '../helpers/env.js';
import { apiUdpRule, backendOf } from '../helpers/lab.js';
import { Topology, type Host } from '../helpers/topology.js';

const RULES = 3000;

describe('--reset-datapath over 3 000 pinned rules with a new state dir, stdout a file', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  const stateDir = `/tmp/xdpctl-test-${id}-state`;
  const newDir = `/tmp/xdpctl-test-${id}-new`;
  const sock = `/tmp/xdpctl-test-${id}-b.sock`;
  const out = `/tmp/xdpctl-test-${id}.out`;
  const err = `/tmp/xdpctl-test-${id}.err`;
  let first: DaemonProcess | undefined;
  let second: ChildProcess | undefined;
  let vm: Host, b1: Host;

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
  });
  after(async () => {
    await first?.destroy();
    if (second && second.exitCode === null && second.signalCode === null) {
      const gone = new Promise((r) => second!.once('exit', r));
      second.kill('SIGKILL');
      await gone;
    }
    topo.destroy();
    XdpDatapath.unpinAll(pinRoot);
    for (const p of [stateDir, newDir, sock, `${sock}.lock`, out, err]) rmSync(p, { recursive: true, force: true });
  });

  /** The generation the pins record, read with bpftool (a u64, little-endian). */
  const pinGeneration = () => {
    const dump = JSON.parse(sh('bpftool', ['-j', 'map', 'dump', 'pinned', `${pinRoot}/store_generation`])) as {
      value: string[];
    }[];
    return Number(Buffer.from(dump[0].value.map((b) => parseInt(b, 16))).readBigUInt64LE(0));
  };

  it('one error line with the exact count, the first 10 named and the true cause; no line dropped', async (t) => {
    first = await DaemonProcess.start(id, ['--max-rules', String(RULES + 100)]);
    const rules = Array.from({ length: RULES }, (_, i) =>
      apiUdpRule(`r${i}`, 10_000 + i, [vm.hostIf], [backendOf(b1)]),
    );
    await first.clients().rules.applyRules({ rules, validateOnly: false });
    assert.equal(await first.stop(), 0); // SIGTERM, no --cleanup-on-exit: the pins keep the rules
    first = undefined;
    const generation = pinGeneration();
    assert.ok(generation > 0, `the pins record a store generation: ${generation}`);

    const d = await startFileLoggedDaemon({
      out,
      err,
      sock,
      pinRoot,
      stateDir: newDir,
      readyMs: 120_000, // 3 000 rules removed on a loaded machine
      extra: ['--reset-datapath', '--max-rules', String(RULES + 100), '--log-level', 'info'],
    });
    second = d.child;
    const lines = fileLogLines(out);
    const errors = lines.filter((l) => (l.level ?? 0) >= 50);
    const removed = lines.filter((l) => /^restore removed/.test(l.msg ?? ''));
    t.diagnostic(`start: ${lines.length} lines, ${errors.length} at error; ${fileText(out).length} bytes`);
    t.diagnostic(`removed: ${removed[0]?.msg?.slice(0, 400)} ... ${removed[0]?.msg?.slice(-420)}`);
    assert.equal(removed.length, 1, 'one line for the rules removed');
    const r = removed[0];
    assert.equal(r.level, 50);
    assert.equal(r.count, RULES, 'the exact count');
    assert.equal(r.named, 10);
    const named = [...r.msg!.matchAll(/slot (\d+): udp port \d+ on (\S+) \(ifindex \d+\)/g)];
    assert.equal(named.length, 10, 'the first 10 named');
    assert.ok(
      named.every((m) => m[2] === vm.hostIf),
      'the ingress named by the kernel (no stored rule names it)',
    );
    const slots = named.map((m) => Number(m[1]));
    assert.deepEqual(
      slots,
      [...slots].sort((a, b) => a - b),
      'in slot order',
    );
    assert.match(r.msg!, new RegExp(`^restore removed ${RULES} rules the state store does not know`));
    assert.match(r.msg!, /; and 2990 more \(each at debug\)\./);
    assert.match(r.msg!, /This start ran with --reset-datapath, which takes the state store as the truth/);
    assert.match(
      r.msg!,
      new RegExp(`the pins record store generation ${generation}; this store was at generation 0 \\(new\\)`),
    );
    assert.doesNotMatch(r.msg!, /record no store generation|Either a change was not saved/);
    assert.ok(errors.length <= 5, `a few error lines, not one per rule: ${errors.length}`);
    // Nothing dropped: no notice on stderr, no summary, the counter at 0.
    assert.doesNotMatch(fileText(err), /takes no more log lines/);
    assert.equal(lines.filter((l) => /were dropped from/.test(l.msg ?? '')).length, 0);
    for (const kind of ['log', 'audit']) {
      assert.equal((await metric(d.prometheus, 'xdpctl_log_lines_dropped_total', { xdpctl_log_kind: kind })) ?? 0, 0);
    }
    const gone = new Promise((res) => second!.once('exit', res));
    second.kill('SIGTERM');
    await gone;
  });
});
