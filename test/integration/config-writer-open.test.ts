/**
 * Config-file mode never applies a file that is still being written (a review's finding: a file written in
 * two steps by a writer that held it open 1.5 s was applied half-written — a valid YAML without one of the
 * links — the link deleted and created again 1.6 s later, 15 of 40 pings lost). While a process holds the
 * file open for writing, the daemon waits for it to close the file (at most WRITER_WAIT_MS), says so in the
 * status (reason BeingWritten, the writer's pid, the text's sha256) and keeps the last good configuration
 * forwarding; an editor's write (truncate and write at once, or a temporary file renamed over) is applied at
 * once; a writer that never closes the file has its text applied after the bound, with a log line that says
 * a writer still holds it open. Pings through the cross-connect prove the datapath.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it, type TestContext } from 'node:test';

import { HealthCheckResponse_ServingStatus as Serving } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { WRITER_WAIT_MS } from '../../src/server/config-watcher.js';
import { linkPair as pair, sha, stopDaemon, untilApplied } from '../helpers/config-file.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, runId, sleep } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';

/**
 * A python writer: opens `file` for writing (truncating it), writes each part with a flush, sleeping
 * `pauseS` between parts, then closes it — or, with `hold`, keeps it open until killed. Resolves once the
 * first part is on disk.
 */
async function writer(
  file: string,
  parts: string[],
  pauseS: number,
  hold = false,
): Promise<{ child: ChildProcess; done: Promise<number | null> }> {
  const code = `
import sys, time, json
parts = json.loads(sys.argv[2])
f = open(sys.argv[1], 'w')
for i, p in enumerate(parts):
    if i:
        time.sleep(${pauseS})
    f.write(p)
    f.flush()
    if i == 0:
        print('FIRST', flush=True)
if ${hold ? 'True' : 'False'}:
    time.sleep(600)
f.close()
`;
  const child = spawn('python3', ['-c', code, file, JSON.stringify(parts)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const done = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d) => {
      out += d;
      if (out.includes('FIRST')) resolve();
    });
    child.on('exit', (c) => reject(new Error(`writer exited ${c} before its first part`)));
  });
  return { child, done };
}

/** `count` pings 50 ms apart from a host; resolves with how many replies came back. */
function pings(netns: string, ip: string, count: number): Promise<{ sent: number; received: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      'nsenter',
      [`--net=/run/netns/${netns}`, 'ping', '-c', String(count), '-i', '0.05', '-W', '1', ip],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', () => {
      const m = /(\d+) packets transmitted, (\d+) received/.exec(out);
      if (!m) return reject(new Error(`ping said: ${out}`));
      resolve({ sent: Number(m[1]), received: Number(m[2]) });
    });
  });
}

describe('config-file mode: a file still being written is not applied', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const dir = `/tmp/xdpctl-test-${id}-wo`;
  const file = `${dir}/links.yaml`;
  let d: DaemonProcess | undefined;
  const writers: ChildProcess[] = [];
  let h1: Host, h2: Host, h3: Host, h4: Host;

  before(() => {
    h1 = topo.addHost('h1', '198.18.0.1/24');
    h2 = topo.addHost('h2', '198.18.0.2/24');
    h3 = topo.addHost('h3', '198.18.0.3/24');
    h4 = topo.addHost('h4', '198.18.0.4/24');
    mkdirSync(dir, { recursive: true });
  });
  const stop = async () => {
    for (const w of writers.splice(0)) if (w.exitCode === null && w.signalCode === null) w.kill('SIGKILL');
    await stopDaemon(d, id);
    d = undefined;
  };
  after(async () => {
    await stop();
    topo.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  const line = (a: Host, b: Host) => `  ${a.hostIf}: ${b.hostIf}\n`;
  const look = async () => {
    const c = d!.clients();
    const links = (await c.links.listLinks({})).links.map((l) => [l.a, l.b].sort().join('-')).sort();
    const s = (await c.daemon.getStatus({})).configFile!;
    return { links, s };
  };
  /** Until the daemon's links are `want` and it says `text` is in force (at most `ms`); returns the time taken. */
  const applied = (want: string[], text: string, ms = 8000) => untilApplied(d!, want, text, { ms, every: 50 });
  const appliedLogs = () => d!.output.split('\n').filter((l) => l.includes('"msg":"config applied"'));

  /**
   * The review's example. `proc`: the daemon may not take a lease on the file (no CAP_LEASE, the file
   * another user's): it reads /proc instead, and says so.
   */
  async function twoSteps(t: TestContext, proc: boolean): Promise<void> {
    const before = `links:\n${line(h1, h2)}`;
    writeFileSync(file, before);
    if (proc) chownSync(file, 65534, 65534);
    const wrap = proc ? ['setpriv', '--bounding-set', '-lease', '--'] : [];
    d = await DaemonProcess.start(id, ['--config', file, '--cleanup-on-exit', '--log-level', 'info'], {}, wrap);
    try {
      await applied([pair(h1, h2)], before);
      assert.equal(topo.ping('h1', h2.ip!), true, 'h1 -> h2 forwards');
      const logsBefore = appliedLogs().length;
      // The first part alone is valid YAML: it drops h1 -> h2. 80 pings 50 ms apart cover the whole write.
      const parts = [`links:\n${line(h3, h4)}`, line(h1, h2)];
      const final = parts.join('');
      const traffic = pings(h1.netns, h2.ip!, 80);
      await sleep(500);
      const w = await writer(file, parts, 1.5);
      writers.push(w.child);
      // While the writer holds it: not applied, said so (who, which text), the last good file runs. Looked at
      // until the status says so or the writer is done (a loaded machine may take a while to see the write).
      let exited = false;
      void w.done.then(() => (exited = true));
      let mid = await look();
      const seen = (m: typeof mid) =>
        m.s.inForceCondition?.reason === 'BeingWritten' && m.s.refusedSha256 === sha(parts[0]);
      while (!exited && !seen(mid)) {
        await sleep(50);
        mid = await look();
      }
      const health = (await d.clients().health.check({ service: 'xdpctl.config' })).status;
      await w.done;
      // From the close: applied at once (the file is looked at every 100 ms while a writer holds it).
      const took = await applied([pair(h1, h2), pair(h3, h4)], final);
      const { sent, received } = await traffic;
      t.diagnostic(
        `pings ${received}/${sent}; applied ${took} ms after the close; status meanwhile: ${mid.s.inForceCondition?.message}`,
      );
      assert.equal(w.child.exitCode, 0, 'the writer wrote both parts');
      assert.equal(sent - received, 0, `pings lost while the file was being written (${received}/${sent} received)`);
      assert.deepEqual(mid.links, [pair(h1, h2)], 'while being written: the last good configuration runs');
      assert.equal(mid.s.inForce, false, 'while being written: the text on disk is not in force');
      assert.equal(mid.s.inForceCondition?.reason, 'BeingWritten');
      assert.match(mid.s.inForceCondition!.message, new RegExp(`pid ${w.child.pid} \\(python3\\)`));
      assert.match(mid.s.inForceCondition!.message, /holds it open for writing \(seen since/);
      assert.match(
        mid.s.inForceCondition!.message,
        proc ? /seen in \/proc/ : /the kernel says so: it refuses a read lease/,
      );
      if (proc) assert.match(d.output, /a read lease is refused: EACCES\): \/proc is read instead/);
      assert.equal(mid.s.refusedSha256, sha(parts[0]), 'the text seen while being written, by its sha256');
      assert.equal(mid.s.appliedSha256, sha(before), 'what runs: the last good file');
      assert.equal(health, Serving.NOT_SERVING, 'xdpctl.config: the file on disk is not in force yet');
      // (The apply itself attaches to two interfaces: ~0.3 s here, more on a loaded machine.)
      assert.ok(took < 3000, `applied ${took} ms after the close`);
      const logs = appliedLogs().slice(logsBefore);
      assert.equal(logs.length, 1, `one apply, of the whole file: ${logs.join('\n')}`);
      t.diagnostic(logs[0]);
      assert.match(logs[0], /no process holds it open for writing any more/);
      assert.ok(
        d.output.includes('is being written') && d.output.includes(`pid ${w.child.pid}`),
        'the wait was logged',
      );
      assert.equal(topo.ping('h3', h4.ip!), true, 'h3 -> h4 forwards');
      assert.equal(topo.ping('h1', h2.ip!), true, 'h1 -> h2 forwards');
    } finally {
      await stop();
    }
  }

  it('a file written in two steps by a writer that holds it open 1.5 s: applied once, whole; 0 pings lost', (t) =>
    twoSteps(t, false));

  it('the same where the daemon may not take a lease on the file: /proc tells, and the log says so', (t) =>
    twoSteps(t, true));

  it("an editor's writes (truncate and write at once; a temporary file renamed over) are applied at once", async (t) => {
    const first = `links:\n${line(h1, h2)}`;
    writeFileSync(file, first);
    d = await DaemonProcess.start(id, ['--config', file, '--cleanup-on-exit', '--log-level', 'info']);
    try {
      await applied([pair(h1, h2)], first);
      const second = `links:\n${line(h1, h2)}${line(h3, h4)}`;
      writeFileSync(file, second);
      const inPlace = await applied([pair(h1, h2), pair(h3, h4)], second);
      const third = `links:\n${line(h3, h4)}`;
      writeFileSync(`${file}.tmp`, third);
      renameSync(`${file}.tmp`, file);
      const renamed = await applied([pair(h3, h4)], third);
      t.diagnostic(`applied ${inPlace} ms after a write in place, ${renamed} ms after a rename`);
      // Nobody holds the file once written: no wait for a writer (0.2-0.5 s here, the apply included).
      assert.ok(inPlace < 3000, `written in place: applied in ${inPlace} ms`);
      assert.ok(renamed < 3000, `renamed over: applied in ${renamed} ms`);
      assert.doesNotMatch(d.output, /is being written/, 'no writer was waited for');
      assert.equal(topo.ping('h3', h4.ip!), true, 'h3 -> h4 forwards');
    } finally {
      await stop();
    }
  });

  it('a writer that never closes the file: its text is applied after the bound, and the log says so', async (t) => {
    const first = `links:\n${line(h1, h2)}${line(h3, h4)}`;
    writeFileSync(file, first);
    d = await DaemonProcess.start(id, ['--config', file, '--cleanup-on-exit', '--log-level', 'info']);
    try {
      await applied([pair(h1, h2), pair(h3, h4)], first);
      const next = `links:\n${line(h1, h2)}`;
      const t0 = Date.now();
      const w = await writer(file, [next], 0, true);
      writers.push(w.child);
      await sleep(WRITER_WAIT_MS / 2);
      const mid = await look();
      assert.deepEqual(mid.links, [pair(h1, h2), pair(h3, h4)], 'within the bound: the last good configuration runs');
      assert.equal(mid.s.inForceCondition?.reason, 'BeingWritten');
      assert.match(mid.s.inForceCondition!.message, new RegExp(`pid ${w.child.pid} \\(python3\\)`));
      await applied([pair(h1, h2)], next, WRITER_WAIT_MS + 3000);
      const waited = Date.now() - t0;
      assert.ok(waited >= WRITER_WAIT_MS, `applied after ${waited} ms, not before the bound`);
      assert.equal(w.child.exitCode, null, 'the writer still holds the file open');
      const logs = appliedLogs();
      t.diagnostic(`applied ${waited} ms after the write: ${logs[logs.length - 1]}`);
      assert.match(logs[logs.length - 1], /still holds it open for writing/);
      assert.equal(topo.ping('h1', h2.ip!), true, 'h1 -> h2 forwards');
    } finally {
      await stop();
    }
  });
});
