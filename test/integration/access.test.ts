/**
 * Roles and audit against a real daemon: identities from mTLS client
 * certificates (SPIFFE IDs and a CN), from SO_PEERCRED on the Unix socket
 * (root and an unprivileged user in the socket's group) and anonymous callers
 * from another network namespace; denials are PERMISSION_DENIED naming the
 * method and role and appear in the daemon's log with the identity; plaintext
 * on a non-loopback address is refused without --insecure and warned about
 * with it; message size and watch-stream bounds answer RESOURCE_EXHAUSTED.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { credentials } from '@grpc/grpc-js';
import { ClientError, Status } from 'nice-grpc';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { CLI, kernelOnly, runId, sh, sleep } from '../helpers/env.js';
import { OtherUserRuntime } from '../helpers/other-user.js';
import { makePki } from '../helpers/pki.js';
import { Topology } from '../helpers/topology.js';

const ADMIN = 'spiffe://example.org/ns/ops/sa/admin';
const READER = 'spiffe://example.org/ns/mon/sa/grafana';
const STRANGER = 'spiffe://example.org/ns/web/sa/frontend';

async function code(p: Promise<unknown>): Promise<{ code: Status; details: string }> {
  try {
    await p;
    return { code: Status.OK, details: '' };
  } catch (e) {
    if (!(e instanceof ClientError)) throw e;
    return { code: e.code, details: e.details };
  }
}

/** The audit records in a daemon's log. */
function auditRecords(d: DaemonProcess): Record<string, unknown>[] {
  return d.output
    .split('\n')
    .filter((l) => l.startsWith('{') && l.includes('"audit":true'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

async function waitFor<T>(what: string, fn: () => T | undefined, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

describe('access control over mTLS and the Unix socket', kernelOnly(), () => {
  const id = runId();
  const dir = mkdtempSync(join(tmpdir(), 'xdpctl-access-'));
  const f = (n: string) => join(dir, n);
  const topo = new Topology(id);
  let d: DaemonProcess | undefined;
  const as: Record<string, Clients> = {};

  before(async () => {
    makePki(dir, {
      server: ['server', 'IP:127.0.0.1,DNS:localhost'],
      admin: ['admin-client', `URI:${ADMIN}`],
      reader: ['reader-client', `DNS:grafana.example,URI:${READER}`],
      stranger: ['stranger', `URI:${STRANGER}`],
      alice: ['alice', ''],
    });
    writeFileSync(
      f('auth.yaml'),
      [
        '# who may change (admin) and read (readOnly) xdpctld',
        'admin:',
        `  - ${ADMIN}`,
        '  - unix-uid:0',
        'readOnly:',
        '  - spiffe://example.org/ns/mon/*',
        '  - x509-cn:alice',
        '  - unix-group:nogroup',
      ].join('\n'),
    );
    topo.addHost('a');
    topo.addHost('b');
    d = await DaemonProcess.start(id, [
      '--tls-cert',
      f('server.pem'),
      '--tls-key',
      f('server.key'),
      '--tls-client-ca',
      f('ca.pem'),
      '--auth-config',
      f('auth.yaml'),
      '--socket-group',
      'nogroup',
      '--max-watch-streams',
      '2',
      '--max-message-bytes',
      '65536',
      '--xdp-mode',
      'generic',
    ]);
    const ca = readFileSync(f('ca.pem'));
    for (const who of ['admin', 'reader', 'stranger', 'alice']) {
      as[who] = d.clients(
        d.tcp,
        credentials.createSsl(ca, readFileSync(f(`${who}.key`)), readFileSync(f(`${who}.pem`))),
      );
    }
  });
  after(async () => {
    await d?.destroy();
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  });

  it('lets the SPIFFE admin change the datapath, audited with its identity and the link', async () => {
    const [a, b] = [topo.host('a').hostIf, topo.host('b').hostIf];
    const r = await as.admin.links.connect({ link: { a, b } });
    assert.ok(r.link);
    const rec = await waitFor('the audit record of Connect', () =>
      auditRecords(d!).find((x) => x.method === '/xdpctl.v1.LinkService/Connect'),
    );
    assert.deepEqual(rec.identity, { kind: 'spiffe', principal: ADMIN, via: 'mtls' });
    assert.deepEqual(rec.resources, { links: [`${a}-${b}`] });
    assert.equal(rec.code, 'OK');
    assert.equal(typeof rec.durationMs, 'number');
    assert.equal(rec.applied, true);
    assert.equal(rec.outcome, undefined);
    // Really attached: the kernel shows our program on both ends.
    for (const ifname of [a, b]) {
      assert.ok(JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', ifname]))[0].xdp, `${ifname} has XDP`);
    }
    // The same link set again changes nothing: audited as not applied, "unchanged" (a review's finding: every OK
    // change was audited applied:true, a no-op alike).
    const again = await as.admin.links.applyLinks({ links: [{ a, b }] });
    assert.ok(again.applied);
    const noop = await waitFor('the audit record of ApplyLinks', () =>
      auditRecords(d!).find((x) => x.method === '/xdpctl.v1.LinkService/ApplyLinks'),
    );
    assert.deepEqual([noop.code, noop.applied, noop.outcome], ['OK', false, 'unchanged']);
    assert.deepEqual([noop.resources, noop.requested], [{ links: [] }, { links: [`${a}-${b}`] }], 'nothing changed');
    assert.equal(noop.dryRun, undefined);
    // A dry run of the empty set: its record lists the link it would delete, marked `dryRun: true` (twenty-third
    // review: the same `changes` as a change's, told apart only by `applied: false`).
    await as.admin.links.applyLinks({ links: [], validateOnly: true });
    const dry = await waitFor(
      'the audit record of the dry run',
      () => auditRecords(d!).filter((x) => x.method === '/xdpctl.v1.LinkService/ApplyLinks')[1],
    );
    assert.deepEqual([dry.applied, dry.dryRun, dry.changes], [false, true, { links: { delete: [`${a}-${b}`] } }]);
    assert.equal((await as.admin.links.listLinks({})).links.length, 1, 'the dry run deleted nothing');
    // An empty set deletes the link: the record names the link deleted, not what the request listed (a review
    // found `"resources":{"links":[]},"applied":true` for it, the deleted link nowhere).
    await as.admin.links.applyLinks({ links: [] });
    const del = await waitFor(
      'the audit record of the ApplyLinks that deleted',
      () => auditRecords(d!).filter((x) => x.method === '/xdpctl.v1.LinkService/ApplyLinks')[2],
    );
    assert.deepEqual(
      [del.applied, del.dryRun, del.resources, del.changes, del.requested],
      [true, undefined, { links: [`${a}-${b}`] }, { links: { delete: [`${a}-${b}`] } }, { links: [] }],
    );
    assert.deepEqual((await as.admin.links.listLinks({})).links, []);
    await as.admin.links.connect({ link: { a, b } }); // as the tests after this one found it
  });

  it('lets a read-only identity list and watch, and denies it a change: PERMISSION_DENIED, audited', async () => {
    const links = await as.reader.links.listLinks({});
    assert.equal(links.links.length, 1);
    const ac = new AbortController();
    const first = await as.reader.counters.watchCounters({}, { signal: ac.signal })[Symbol.asyncIterator]().next();
    ac.abort();
    assert.ok(first.value?.counters, 'a counters message');
    assert.equal((await as.alice.daemon.getStatus({})).serving, true, 'x509-cn:alice reads');

    const denied = await code(as.reader.rules.createRule({ rule: { name: 'sneaky' } }));
    assert.equal(denied.code, Status.PERMISSION_DENIED);
    assert.equal(
      denied.details,
      `/xdpctl.v1.RuleService/CreateRule needs the admin role; ${READER} (mtls) has the read-only role`,
    );
    const rec = await waitFor('the audit record of the denial', () =>
      auditRecords(d!).find((x) => x.method === '/xdpctl.v1.RuleService/CreateRule'),
    );
    assert.deepEqual(rec.identity, { kind: 'spiffe', principal: READER, via: 'mtls' });
    assert.deepEqual(rec.resources, { rules: ['sneaky'] });
    assert.equal(rec.code, 'PERMISSION_DENIED');
    assert.equal(rec.roleNeeded, 'admin');
    assert.equal(rec.role, 'read-only');
    assert.equal((await code(as.alice.links.disconnect({ a: 'x', b: 'y' }))).code, Status.PERMISSION_DENIED);
  });

  it('denies an unlisted identity everything but health', async () => {
    const r = await code(as.stranger.links.listLinks({}));
    assert.equal(r.code, Status.PERMISSION_DENIED);
    assert.match(
      r.details,
      /ListLinks needs the read-only role; spiffe:\/\/example\.org\/ns\/web\/sa\/frontend \(mtls\) has no role/,
    );
    assert.equal((await as.stranger.health.check({ service: '' })).status, 1, 'SERVING');
    await waitFor('the audit record', () =>
      auditRecords(d!).find((x) => (x.identity as { principal: string }).principal === STRANGER),
    );
  });

  it('bounds watch streams per identity and message sizes: RESOURCE_EXHAUSTED', async () => {
    const acs = [new AbortController(), new AbortController()];
    try {
      for (const ac of acs)
        await as.reader.counters.watchCounters({}, { signal: ac.signal })[Symbol.asyncIterator]().next();
      const third = await code(as.reader.counters.watchCounters({})[Symbol.asyncIterator]().next());
      assert.equal(third.code, Status.RESOURCE_EXHAUSTED);
      assert.match(third.details, /already has 2 watch streams open \(the limit per client is 2\)/);
      // Another identity has its own budget.
      const ac = new AbortController();
      await as.alice.counters.watchCounters({}, { signal: ac.signal })[Symbol.asyncIterator]().next();
      ac.abort();
    } finally {
      acs.forEach((a) => a.abort());
    }
    // 70 kB > --max-message-bytes 65536: refused before any handler (not INVALID_ARGUMENT).
    const big = await code(as.admin.rules.createRule({ rule: { name: 'big', labels: { k: 'x'.repeat(70_000) } } }));
    assert.equal(big.code, Status.RESOURCE_EXHAUSTED);
    assert.match(big.details, /message larger than max/i);
    const small = await code(as.admin.rules.createRule({ rule: { name: 'big', labels: { k: 'x'.repeat(60_000) } } }));
    assert.equal(small.code, Status.INVALID_ARGUMENT, 'under the bound it reaches validation');
  });

  it('identifies Unix socket peers by SO_PEERCRED; the socket is root:nogroup 0660', async (t) => {
    const sock = d!.unix.slice('unix:'.length);
    const st = statSync(sock);
    assert.equal(st.mode & 0o777, 0o660);
    assert.equal(st.gid, 65534);
    // Root over the socket: admin (unix-uid:0).
    const root = d!.clients(d!.unix);
    await root.links.disconnect({ a: topo.host('a').hostIf, b: topo.host('b').hostIf });
    const rec = await waitFor('the audit record of Disconnect', () =>
      auditRecords(d!).find((x) => x.method === '/xdpctl.v1.LinkService/Disconnect' && x.code === 'OK'),
    );
    const ident = rec.identity as { principal: string; via: string; uid: number; gid: number; pid: number };
    assert.equal(ident.principal, 'unix-uid:0');
    assert.equal(ident.via, 'unix-socket');
    assert.ok(ident.pid === process.pid, `pid ${ident.pid} is this test process`);

    // An unprivileged user in the socket's group: may read, may not change.
    // As uid 65534, from a copy it can read (the checkout may be in a 0700 directory).
    const rt = OtherUserRuntime.create(['dist']);
    t.after(() => rt.remove());
    const cli = (gid: string, args: string[]) =>
      rt.run('dist/client/cli.js', ['--server', d!.unix, '--timeout', '5s', ...args], 65534, gid);
    const read = cli('65534', ['links', 'list']);
    assert.equal(read.status, 0, read.stderr);
    const change = cli('65534', ['links', 'connect', 'lo', 'lo2']);
    assert.notEqual(change.status, 0);
    assert.match(change.stderr, /Connect needs the admin role; unix-uid:65534 \(unix-socket\) has the read-only role/);
    const denial = await waitFor('the audit record of the unprivileged Connect', () =>
      auditRecords(d!).find((x) => x.method === '/xdpctl.v1.LinkService/Connect' && x.code === 'PERMISSION_DENIED'),
    );
    assert.equal((denial.identity as { uid: number; gid: number }).uid, 65534);
    assert.equal((denial.identity as { uid: number; gid: number }).gid, 65534);
    // Outside the group, the socket's mode keeps it out before any RPC.
    // Said as a permission problem (exit 9, what mode and ids refuse it), not "unavailable ... is it running?"
    // (exit 10: a script that restarts a daemon it takes for dead), since the daemon runs and serves.
    const outsider = cli('4242', ['status']);
    assert.equal(outsider.status, 9, outsider.stderr);
    assert.doesNotMatch(outsider.stderr, /PERMISSION_DENIED|needs the|is it running/);
    const why = `you may not open ${sock} \\(mode 0660, owner uid 0, group gid 65534; this process runs as uid 65534 gid 4242\\)`;
    assert.match(outsider.stderr, new RegExp(`^xdpctl: permission denied: ${why}: join the socket's group`));
    // The health probe likewise: it could not ask (exit 3), which says nothing of the daemon (2: no answer).
    const probe = rt.run('dist/client/health-probe.js', ['--server', d!.unix, '--timeout', '5s'], 65534, '4242');
    assert.equal(probe.status, 3, probe.stderr);
    assert.match(probe.stderr, new RegExp(`could not ask: permission denied: ${why}`));
  });
});

describe('plaintext beyond loopback', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess | undefined;
  after(async () => {
    await d?.destroy();
    topo.destroy();
    for (const x of [id, `${id}r`]) {
      XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${x}`);
      rmSync(`/tmp/xdpctl-test-${x}-state`, { recursive: true, force: true });
    }
  });

  it('is refused without --insecure, with a message that says what to do', async () => {
    await assert.rejects(
      DaemonProcess.start(`${id}r`, ['--listen', '0.0.0.0:0']),
      /refusing to serve plaintext gRPC on 0\.0\.0\.0:0: .*--tls-cert and --tls-key .* or pass --insecure/,
    );
    assert.throws(() => statSync(`/sys/fs/bpf/xdpctl-test-${id}r`), /ENOENT/, 'nothing was loaded');
  });

  it('with --insecure warns at start; a remote caller is anonymous with no role except health', async () => {
    const h = topo.addHost('c', '198.18.7.1/24');
    sh('ip', ['addr', 'add', '198.18.7.2/24', 'dev', h.hostIf]);
    d = await DaemonProcess.start(id, ['--listen', '198.18.7.2:0', '--insecure']);
    // The warning and the ready line come on different pipes (stderr, stdout): the warning may arrive after.
    const warned = /"insecure":true.*INSECURE: plaintext gRPC on 198\.18\.7\.2:0 \(--insecure\)/;
    await waitFor('the INSECURE warning', () => (warned.test(d!.output) ? true : undefined)).catch(() => undefined);
    assert.match(d.output, warned);
    const ready = d.output.split('\n').find((l) => l.includes('"msg":"ready"'))!;
    const addr = (JSON.parse(ready) as { addresses: string[] }).addresses.find((a) => a.startsWith('198.18.7.2:'))!;
    const remote = (args: string[]) =>
      spawnSync('nsenter', [`--net=/run/netns/${h.netns}`, CLI, '--server', addr, '--timeout', '5s', ...args], {
        encoding: 'utf8',
      });
    const list = remote(['links', 'list']);
    assert.notEqual(list.status, 0);
    assert.match(
      list.stderr,
      /ListLinks needs the read-only role; anonymous \(plaintext: plaintext connection\) has no role/,
    );
    const health = remote(['health']);
    assert.equal(health.status, 0, health.stderr);
    // Root on this host over loopback is still identified (by uid) and admin.
    assert.equal((await d.clients(d.tcp).links.listLinks({})).links.length, 0);
  });
});
