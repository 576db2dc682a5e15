/**
 * A start refused for its configuration leaves the host as it found it: every configuration input
 * (TLS files, listen addresses) is checked before the kernel is touched, and what fails after it was
 * touched (here: a corrupt state store) is undone. Checked in the kernel after each refused start: the
 * pin root is as it was (absent, or the previous daemon's pins), no new program or tracepoint link of
 * ours survives (bpftool's id sets before and after), and a previous daemon's links are the same ones.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { DAEMON, DAEMON_NODE_FLAGS, kernelOnly, OBJECT_NEXT, ROOT, runId, sh, sleep } from '../helpers/env.js';
import { issue, makeCa, makeRequest } from '../helpers/pki.js';

interface BpfObject {
  id: number;
  name?: string;
  prog_id?: number;
  pinned?: string[];
}

/** Our programs (xdpctl_*) and the links that run them, by id, with their pins (bpftool -f). */
function ours(): { progs: Map<number, BpfObject>; links: Map<number, BpfObject> } {
  const progs = new Map<number, BpfObject>();
  for (const p of JSON.parse(sh('bpftool', ['-f', '-j', 'prog', 'show'])) as BpfObject[]) {
    if (p.name?.startsWith('xdpctl')) progs.set(p.id, p);
  }
  const links = new Map<number, BpfObject>();
  for (const l of JSON.parse(sh('bpftool', ['-f', '-j', 'link', 'show'])) as BpfObject[]) {
    if (l.prog_id !== undefined && progs.has(l.prog_id)) links.set(l.id, l);
  }
  return { progs, links };
}

/**
 * Programs and links of ours that appeared since `before` and that nothing else accounts for: pinned
 * under `pinRoot`, or with no pin anywhere and no pinned link running them (other tests running at the
 * same time pin theirs under their own pin roots). Only what stays so for 3 s counts: another test's
 * object may be between its load and its pin, or about to be closed.
 */
async function leaked(before: ReturnType<typeof ours>, pinRoot: string): Promise<string[]> {
  let found: Set<string> | undefined;
  for (let i = 0; i < 4; i++) {
    if (i > 0) await sleep(1000);
    const now = ours();
    const linked = new Set([...now.links.values()].filter((l) => l.pinned?.length).map((l) => l.prog_id));
    const seen = new Set<string>();
    for (const [kind, map, old] of [
      ['prog', now.progs, before.progs],
      ['link', now.links, before.links],
    ] as const) {
      for (const [id, o] of map) {
        if (old.has(id)) continue;
        const pins = o.pinned ?? [];
        const ourPin = pins.some((p) => p.startsWith(`${pinRoot}/`));
        const orphan = pins.length === 0 && !(kind === 'prog' && linked.has(id));
        if (ourPin || orphan) seen.add(`${kind} ${id} ${o.name ?? ''} pins ${JSON.stringify(pins)}`);
      }
    }
    found = found ? new Set([...found].filter((x) => seen.has(x))) : seen;
    if (found.size === 0) return [];
  }
  return [...found!];
}

/** Start xdpctld with these flags; resolves with its exit code and output (it must not become ready). */
function refusedStart(id: string, extra: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [
        ...DAEMON_NODE_FLAGS,
        DAEMON,
        '--pin-root',
        `/sys/fs/bpf/xdpctl-test-${id}`,
        '--state-dir',
        `/tmp/xdpctl-test-${id}-state`,
        '--max-rules',
        '16',
        ...(extra.includes('--listen') ? [] : ['--listen', '127.0.0.1:0', `unix:/tmp/xdpctl-test-${id}.sock`]),
        ...extra,
      ],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`xdpctld neither started nor refused within 20 s: ${out}`));
    }, 20_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
    child.stdout.on('data', () => {
      if (out.includes('"msg":"ready"')) child.kill('SIGKILL');
    });
  });
}

describe('a refused start leaves the host as it found it', kernelOnly(), () => {
  const id = runId();
  const dir = mkdtempSync(join(tmpdir(), 'xdpctl-refused-'));
  const f = (n: string) => join(dir, n);
  const used: string[] = [];
  let busy: Server | undefined;
  let busyPort = 0;

  before(async () => {
    makeCa(dir);
    makeRequest(dir, 'expired');
    issue(dir, 'expired', { ext: 'subjectAltName=IP:127.0.0.1', days: -1 });
    busy = createServer();
    await new Promise<void>((r) => busy!.listen(0, '127.0.0.1', r));
    busyPort = (busy.address() as { port: number }).port;
  });

  after(() => {
    busy?.close();
    for (const u of used) {
      XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${u}`);
      rmSync(`/tmp/xdpctl-test-${u}-state`, { recursive: true, force: true });
      rmSync(`/tmp/xdpctl-test-${u}.sock`, { force: true });
      rmSync(`/tmp/xdpctl-test-${u}.sock.lock`, { force: true });
    }
    rmSync(dir, { recursive: true, force: true });
  });

  // [what, flags, what stderr says]
  const cases: [string, (n: string) => string[], RegExp][] = [
    [
      'its own certificate expired',
      () => ['--tls-cert', f('expired.pem'), '--tls-key', f('expired.key')],
      /xdpctld: TLS files .*expired\.pem .*certificate expired on \d{4}-/,
    ],
    [
      'an unreadable key',
      () => ['--tls-cert', f('expired.pem'), '--tls-key', f('missing.key')],
      /xdpctld: read TLS key .*missing\.key: ENOENT/,
    ],
    [
      'a --listen address that is not this host',
      () => ['--listen', '192.0.2.1:0', '--insecure'],
      /xdpctld: --listen 192\.0\.2\.1:0: cannot listen there \(EADDRNOTAVAIL\)/,
    ],
    [
      'a --listen port in use',
      () => ['--listen', `127.0.0.1:${busyPort}`],
      /xdpctld: --listen 127\.0\.0\.1:\d+: cannot listen there \(EADDRINUSE\)/,
    ],
    [
      'an --http-listen address that is not this host',
      (n) => ['--listen', `unix:/tmp/xdpctl-test-${n}.sock`, '--http-listen', '192.0.2.1:0', '--insecure'],
      /xdpctld: --http-listen 192\.0\.2\.1:0: cannot listen there \(EADDRNOTAVAIL\)/,
    ],
    [
      'a socket directory that cannot be made',
      () => ['--listen', `unix:${f('expired.pem')}/x.sock`],
      /xdpctld: --listen unix:.*expired\.pem\/x\.sock: cannot listen there \((ENOTDIR|EEXIST)\)/,
    ],
  ];
  for (const [what, flags, says] of cases) {
    it(`${what}: refused before the kernel is touched (fresh pin root)`, async () => {
      const n = `${id}${used.length}`;
      used.push(n);
      const pinRoot = `/sys/fs/bpf/xdpctl-test-${n}`;
      const bpffs = readdirSync('/sys/fs/bpf');
      const snapshot = ours();
      const r = await refusedStart(n, flags(n));
      assert.notEqual(r.code, 0, r.out);
      assert.match(r.out, says);
      assert.equal(existsSync(pinRoot), false, `pin root ${pinRoot} left behind`);
      assert.deepEqual(
        readdirSync('/sys/fs/bpf').filter((e) => e.includes(n)),
        bpffs.filter((e) => e.includes(n)),
      );
      assert.deepEqual(await leaked(snapshot, pinRoot), []);
    });
  }

  it('a corrupt state store found after the maps were made: every pin, program and link goes again', async () => {
    const n = `${id}${used.length}`;
    used.push(n);
    const pinRoot = `/sys/fs/bpf/xdpctl-test-${n}`;
    mkdirSync(`/tmp/xdpctl-test-${n}-state`, { recursive: true, mode: 0o700 });
    writeFileSync(`/tmp/xdpctl-test-${n}-state/state.db`, 'not a database, not at all'.repeat(200));
    const snapshot = ours();
    const r = await refusedStart(n, []);
    assert.notEqual(r.code, 0, r.out);
    assert.match(r.out, /state/);
    assert.equal(existsSync(pinRoot), false, `pin root ${pinRoot} left behind`);
    assert.deepEqual(await leaked(snapshot, pinRoot), []);
  });

  it('after a daemon stopped: a refused start keeps its pins and tracepoint links (same ids)', async () => {
    const n = `${id}${used.length}`;
    used.push(n);
    const pinRoot = `/sys/fs/bpf/xdpctl-test-${n}`;
    const d = await DaemonProcess.start(n);
    assert.equal(await d.stop(), 0);
    const pins = sh('find', [pinRoot]).split('\n').sort();
    const linksBefore = [...ours().links.values()].filter((l) => l.pinned?.some((p) => p.startsWith(`${pinRoot}/`)));
    assert.equal(linksBefore.length, 3, 'the stopped daemon left its three tracepoint links pinned');
    // Refused for its configuration, then (state store corrupted) after the kernel was touched.
    const progPin = `${pinRoot}/progs/xdpctl_main`;
    const progId = () => (JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'pinned', progPin])) as { id: number }).id;
    const prog = progId();
    // Refused for its configuration; then, the state store corrupted, after the kernel was touched: with
    // the same object, and with another one (an upgrade, whose program would replace the pinned one).
    const starts: [string, string[], boolean][] = [
      ['expired certificate', ['--tls-cert', f('expired.pem'), '--tls-key', f('expired.key')], false],
      ['corrupt store', [], true],
      ['corrupt store, upgrade', ['--bpf-object', OBJECT_NEXT], true],
    ];
    for (const [what, extra, corrupt] of starts) {
      if (corrupt) writeFileSync(`/tmp/xdpctl-test-${n}-state/state.db`, 'garbage'.repeat(500));
      const r = await refusedStart(n, extra);
      assert.notEqual(r.code, 0, r.out);
      assert.deepEqual(sh('find', [pinRoot]).split('\n').sort(), pins, `${what}: pins changed`);
      assert.equal(progId(), prog, `${what}: ${progPin} names another program`);
      const linksAfter = [...ours().links.values()].filter((l) => l.pinned?.some((p) => p.startsWith(`${pinRoot}/`)));
      assert.deepEqual(
        linksAfter.map((l) => l.id).sort(),
        linksBefore.map((l) => l.id).sort(),
        `${what}: the previous daemon's tracepoint links were replaced`,
      );
    }
  });

  it('SIGTERM during the start, or as soon as "ready" is read, stops the daemon cleanly (exit 0, nothing left)', async () => {
    // [when to signal: at the first log line (the datapath is being opened) or at "ready"]
    for (const [when, at] of [
      ['during the start', '"msg":"created maps"'],
      ...Array.from({ length: 5 }, () => ['at ready', '"msg":"ready"']),
    ]) {
      const n = `${id}${used.length}`;
      used.push(n);
      const pinRoot = `/sys/fs/bpf/xdpctl-test-${n}`;
      const child = spawn(
        process.execPath,
        [
          ...DAEMON_NODE_FLAGS,
          DAEMON,
          '--pin-root',
          pinRoot,
          '--state-dir',
          `/tmp/xdpctl-test-${n}-state`,
          '--listen',
          '127.0.0.1:0',
          `unix:/tmp/xdpctl-test-${n}.sock`,
          '--max-rules',
          '16',
          '--cleanup-on-exit',
        ],
        { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let out = '';
      let sent = false;
      child.stdout.on('data', (d) => {
        out += d;
        if (!sent && out.includes(at)) {
          sent = true;
          child.kill('SIGTERM');
        }
      });
      child.stderr.on('data', (d) => (out += d));
      const [code, signal] = await new Promise<[number | null, string | null]>((r) =>
        child.once('exit', (c, sig) => r([c, sig])),
      );
      assert.ok(sent, `${when}: no ${at} line: ${out}`);
      assert.deepEqual([code, signal], [0, null], `${when}: ${out}`);
      assert.equal(existsSync(pinRoot), false, `${when}: --cleanup-on-exit left ${pinRoot}`);
    }
  });
});
