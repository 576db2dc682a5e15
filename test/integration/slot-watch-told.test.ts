/**
 * The slot watcher is told of other tools' writes instead of reading every slot (dataplane/slot-watch*.ts,
 * bpf/xdpctl-watch.bpf.c). It read every rule entry, backend table and backend entry every ~0.4 s: with 10 000
 * rules the daemon cost 16-18% of one CPU at rest, the thread ~9%. Real daemon, real `bpftool` writes into the
 * pinned map, real programs:
 *  - the start line of the watcher says it is told by tracepoint programs; GetStatus warns of nothing about it;
 *    with 5 000 more rules, a `bpftool map update` of web's rule entry (rule_cfg) is rewritten within 3 s, by a pass
 *    between two full comparisons that read no slot (told); the programs are the
 *    daemon's alone: gone once it has exited (no pin, no link);
 *  - with no watch object beside the XDP object (a kernel that refuses the programs says itself the same way):
 *    the start line and GetStatus say every slot is read every 400 ms and why; the same write is rewritten
 *    within 3 s all the same.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { kernelOnly, sh, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';

/** Rules besides web in the first test. */
const FILLERS = 5000;
const { SERVING } = HealthCheckResponse_ServingStatus;
const REWRITTEN = 'kernel entries differed from the desired state: rewritten';
const COMPARED = 'kernel entries compared with the desired state';
const MOVED = 'kernel entries seen to move compared with the desired state';
const BUILT = new URL('../../build/bpf/', import.meta.url).pathname;
type Line = { msg: string; mode?: string; err?: string; repaired?: string[]; moved?: number; reads?: number };

/** bpftool's byte list of a number's little-endian u32. */
const u32 = (n: number) => [n & 255, (n >> 8) & 255, (n >> 16) & 255, (n >>> 24) & 255].map(String);

/** The ids of the BPF programs process `pid` holds descriptors of, with their names (from bpftool). */
function programsOf(pid: number): Map<number, string> {
  const out = new Map<number, string>();
  for (const fd of readdirSync(`/proc/${pid}/fdinfo`)) {
    let info: string;
    try {
      info = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
    } catch {
      continue; // closed meanwhile
    }
    const m = /^prog_id:\s+(\d+)$/m.exec(info);
    if (!m) continue;
    const id = Number(m[1]);
    out.set(id, (JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'id', String(id)])) as { name: string }).name);
  }
  return out;
}

describe('the slot watcher told of writes through bpf() by tracepoint programs', kernelOnly(), () => {
  let lab = new Lab();
  let dir: string | undefined;
  afterEach(async () => {
    await lab.destroy();
    lab = new Lab();
    if (dir) rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });
  after(() => lab.destroy());

  /** Start a daemon with web (two backends), write web's rule entry with bpftool; the lines after the write. */
  async function rewriteRuleEntry(extra: string[] = [], fillers = 0, env: NodeJS.ProcessEnv = {}) {
    const { b1, b2 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', b2: '198.18.3.1/24' });
    const { d, c } = await lab.start(
      ['--log-level', 'debug', '--max-rules', String(fillers + 16), '--max-message-bytes', String(64 << 20), ...extra],
      env,
    );
    const web = lab.rule('web', 7821, [backendOf(b1), backendOf(b2)]);
    await c.rules.createRule({ rule: web });
    await lab.untilActive('web');
    await until('the watcher started', () => d.logLines<Line>().some((l) => l.msg.startsWith('slot watcher: ')));
    const started = d.logLines<Line>().find((l) => l.msg.startsWith('slot watcher: '))!;
    // web's slot: the one rule entry with the ACTIVE bit (bpf/xdpctl.h XDPCTL_RULE_F_ACTIVE).
    const pin = `${d.pinRoot}/maps/rule_cfg`;
    const dump = execFileSync('bpftool', ['-j', 'map', 'dump', 'pinned', pin], { maxBuffer: 256 << 20 });
    const entries = JSON.parse(dump.toString()) as {
      key: string[];
      value: string[];
    }[];
    const word = (bytes: string[], at: number) => Buffer.from(bytes.map((b) => parseInt(b, 16))).readUInt32LE(at);
    const active = entries.filter((e) => word(e.value, 0) & 1);
    assert.equal(active.length, 1, 'one active rule entry (web alone yet)');
    const slot = word(active[0].key, 0);
    const statsId = word(active[0].value, 4);
    if (fillers) {
      // Enough rules that the full comparison of them all runs less often than every pass (its interval scales
      // with its cost): the passes between compare what the watcher says moved.
      const rules = Array.from({ length: fillers }, (_, i) =>
        lab.rule(`f${i}`, 20_000 + i, [backendOf(b1), backendOf(b2)]),
      );
      await c.rules.applyRules({ rules: [web, ...rules], validateOnly: false });
      await until('health SERVING', async () => (await lab.health()) === SERVING, 60_000);
      // The watcher's first read of the slots that came in use, taken by a pass (every one of them reported).
      await until(
        'the new slots read and compared',
        () => d.logLines<Line>().some((l) => l.msg === MOVED && (l.moved ?? 0) >= fillers),
        30_000,
      );
    }
    // Just after a full comparison: the next one is at least a pass away (with FILLERS rules, several).
    const full = d.output.length;
    await until('a full comparison', () => d.logLines<Line>(full).some((l) => l.msg === COMPARED), 30_000);
    const at = d.output.length;
    const t0 = Date.now();
    // The ACTIVE bit cleared: web's datagrams are dropped until it is rewritten.
    sh('bpftool', ['map', 'update', 'pinned', pin, 'key', ...u32(slot), 'value', ...u32(0), ...u32(statsId)]);
    const mentions = (l: Line) =>
      l.msg === REWRITTEN && l.repaired?.some((x) => x.includes(`map rule_cfg, rule slot ${slot}`));
    await until('the rule entry rewritten', () => d.logLines<Line>(at).some(mentions), 20_000);
    const ms = Date.now() - t0;
    assert.equal(
      word(
        (JSON.parse(sh('bpftool', ['-j', 'map', 'lookup', 'pinned', pin, 'key', ...u32(slot)])) as { value: string[] })
          .value,
        0,
      ) & 1,
      1,
      'ACTIVE again',
    );
    assert.equal((await lab.status('web')).state, RuleState.RULE_STATE_ACTIVE);
    const warnings = (await c.daemon.getStatus({})).datapath!.warnings;
    return { d, started, ms, lines: d.logLines<Line>(at), warnings };
  }

  it('told: the start line says so, a bpftool write is rewritten within 3 s by a pass that read no slot, the programs end with the daemon', async () => {
    // No read of every slot in the while (its safety period, 30 s by default, one hour here).
    const { d, started, ms, lines, warnings } = await rewriteRuleEntry([], FILLERS, {
      XDPCTL_WATCH_SAFETY_MS: '3600000',
    });
    console.log(`told: ${started.msg}; rewritten after ${ms} ms`);
    assert.equal(started.mode, 'told', `the watcher's start line: ${JSON.stringify(started)}`);
    assert.match(started.msg, /told by tracepoint programs; every slot is read every 3600 s/);
    assert.deepEqual(
      warnings.filter((w) => /read every/.test(w)),
      [],
      'no warning of the watcher in GetStatus',
    );
    assert.ok(ms <= 3000, `rewritten within 3 s: ${ms} ms`);
    // The pass that rewrote it: the last comparison logged before the rewrite line.
    const i = lines.findIndex((l) => l.msg === REWRITTEN);
    const pass = lines
      .slice(0, i)
      .reverse()
      .find((l) => l.msg === MOVED || l.msg === COMPARED);
    assert.equal(pass?.msg, MOVED, `rewritten by a pass between two full comparisons: ${JSON.stringify(pass)}`);
    assert.equal(
      pass.reads,
      0,
      `that pass compared what moved with no read of the slots (told): ${JSON.stringify(pass)}`,
    );
    // The programs: the daemon's descriptors only (no pin, links not pinned), freed once it has exited.
    const pid = d.child.pid!;
    const ours = [...programsOf(pid)].filter(([, name]) => name.startsWith('xdpctl_watch'));
    assert.equal(ours.length, 3, `three watch programs held by the daemon: ${JSON.stringify(ours)}`);
    assert.equal(sh('sh', ['-c', `grep -rl xdpctl_watch ${d.pinRoot} || true`]).trim(), '', 'nothing pinned');
    const exited = new Promise((r) => d.child.once('exit', r));
    d.child.kill('SIGTERM');
    await exited;
    for (const [id] of ours) {
      await until(`program ${id} freed`, () => {
        try {
          sh('bpftool', ['prog', 'show', 'id', String(id)]);
          return false;
        } catch {
          return true;
        }
      });
    }
  });

  it('without the watch object: the start line and GetStatus say every slot is read every 400 ms; the write is rewritten within 3 s', async () => {
    dir = mkdtempSync(join(tmpdir(), 'xdpctl-nowatch-'));
    for (const f of ['xdpctl.bpf.o', 'xdpctl-trace.bpf.o']) copyFileSync(join(BUILT, f), join(dir, f));
    const { started, ms, warnings } = await rewriteRuleEntry(['--bpf-object', join(dir, 'xdpctl.bpf.o')]);
    console.log(`reading: ${started.msg} (${started.err}); rewritten after ${ms} ms`);
    assert.equal(started.mode, 'reading', `the watcher's start line: ${JSON.stringify(started)}`);
    assert.match(started.err ?? '', /xdpctl-watch\.bpf\.o/);
    const said = warnings.filter((w) => /read every 400 ms/.test(w));
    assert.equal(said.length, 1, `GetStatus says how the watcher works: ${JSON.stringify(warnings)}`);
    assert.match(said[0], /did not attach: .*xdpctl-watch\.bpf\.o/);
    assert.ok(ms <= 3000, `rewritten within 3 s: ${ms} ms`);
  });
});
