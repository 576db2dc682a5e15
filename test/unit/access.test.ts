/**
 * Access control without a daemon: the method -> role table covers every
 * method of every service served; identities from certificates, SAN parsing,
 * the kernel's socket table and SO_PEERCRED; the auth file's validation; and
 * an in-process server proving that a client cannot claim an identity through
 * metadata, that denials are PERMISSION_DENIED and audited, and that watch
 * streams are bounded per identity.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { PeerCertificate } from 'node:tls';

import { ServerCredentials } from '@grpc/grpc-js';
import {
  ClientError,
  createChannel,
  createClient,
  createServer,
  Metadata,
  ServerError,
  Status,
  type Server,
} from 'nice-grpc';
import { HealthDefinition } from 'nice-grpc-server-health';

import {
  identityFromCertificate,
  isLoopbackAddress,
  localIdentity,
  loopbackPeerUid,
  parseSubjectAltNames,
} from '../../src/server/auth/identity.js';
import {
  AuthConfigError,
  defaultAuthConfig,
  parseAuthConfig,
  parseUserDb,
  Policy,
  roleSatisfies,
} from '../../src/server/auth/policy.js';
import { METHOD_ROLES, roleForMethod } from '../../src/server/auth/roles.js';
import { exposedPlaintext, isLoopbackListen, parseSocketMode } from '../../src/server/auth/transport.js';
import { SERVICE_NAMES } from '../../src/server/daemon.js';
import { peerCred } from '../../src/server/dataplane/peer-cred.js';
import type { Logger } from '../../src/server/log.js';
import {
  accessMiddleware,
  IDENTITY_KEY,
  listenerCredentials,
  resourcesOf,
  SEAL,
} from '../../src/server/services/access.js';
import { errorMiddleware } from '../../src/server/services/status.js';
import { CounterServiceDefinition } from '../../src/gen/xdpctl/v1/counters.js';
import { RuleServiceDefinition } from '../../src/gen/xdpctl/v1/rule.js';

const ROOT = new URL('../..', import.meta.url).pathname;

interface Def {
  fullName: string;
  methods: Record<string, { name: string }>;
}

/** Every service definition exported by src/gen, plus health. */
async function allServices(): Promise<Def[]> {
  const files = (dir: string): string[] =>
    readdirSync(dir).flatMap((e) => {
      const p = join(dir, e);
      return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : [];
    });
  const defs: Def[] = [HealthDefinition as unknown as Def];
  for (const f of files(join(ROOT, 'src/gen'))) {
    const mod = (await import(f)) as Record<string, unknown>;
    for (const [k, v] of Object.entries(mod)) {
      if (k.endsWith('Definition') && typeof v === 'object' && v && 'fullName' in v && 'methods' in v) {
        defs.push(v as Def);
      }
    }
  }
  return defs;
}

describe('method -> role table', () => {
  it('covers every method of every service in src/gen and health, and nothing else', async () => {
    const defs = await allServices();
    const paths = defs.flatMap((d) => Object.values(d.methods).map((m) => `/${d.fullName}/${m.name}`));
    assert.ok(paths.length >= 19, `found ${paths.length} methods`);
    for (const name of SERVICE_NAMES) {
      assert.ok(
        defs.some((d) => d.fullName === name),
        `served service ${name} has a definition`,
      );
    }
    const missing = paths.filter((p) => !(p in METHOD_ROLES));
    assert.deepEqual(missing, [], 'unclassified methods');
    const stale = Object.keys(METHOD_ROLES).filter((p) => !paths.includes(p));
    assert.deepEqual(stale, [], 'table entries for methods that do not exist');
  });

  it('reads are read-only, changes admin, health public, unknown paths admin', () => {
    for (const [path, role] of Object.entries(METHOD_ROLES)) {
      const name = path.slice(path.lastIndexOf('/') + 1);
      if (path.startsWith('/grpc.health.')) assert.equal(role, 'public', path);
      else if (/^(Get|List|Watch|ServerReflectionInfo)/.test(name)) assert.equal(role, 'read-only', path);
      else assert.equal(role, 'admin', path);
    }
    assert.equal(roleForMethod('/xdpctl.v1.RuleService/PurgeEverything'), 'admin');
    assert.equal(roleSatisfies(undefined, 'public'), true);
    assert.equal(roleSatisfies(undefined, 'read-only'), false);
    assert.equal(roleSatisfies('read-only', 'admin'), false);
    assert.equal(roleSatisfies('admin', 'read-only'), true);
  });
});

describe('identities', () => {
  const cert = (subjectaltname: string | undefined, cn?: string | string[]) =>
    ({ subjectaltname, subject: cn === undefined ? {} : { CN: cn } }) as unknown as PeerCertificate;

  it('parses SANs, including values Node quotes', () => {
    assert.deepEqual(parseSubjectAltNames('DNS:a.example, URI:spiffe://td/x, IP Address:10.0.0.1'), [
      { type: 'DNS', value: 'a.example' },
      { type: 'URI', value: 'spiffe://td/x' },
      { type: 'IP Address', value: '10.0.0.1' },
    ]);
    // A comma inside a quoted value cannot forge a second entry.
    assert.deepEqual(parseSubjectAltNames('URI:"http://x/a, URI:spiffe://td/admin"'), [
      { type: 'URI', value: 'http://x/a, URI:spiffe://td/admin' },
    ]);
  });

  it('takes the SPIFFE ID, else the CN; ambiguous certificates are anonymous', () => {
    assert.deepEqual(identityFromCertificate(cert('DNS:x, URI:spiffe://example.org/ns/ops/sa/admin', 'client')), {
      kind: 'spiffe',
      principal: 'spiffe://example.org/ns/ops/sa/admin',
      via: 'mtls',
    });
    assert.deepEqual(identityFromCertificate(cert('DNS:alice.example', 'alice')), {
      kind: 'x509-cn',
      principal: 'x509-cn:alice',
      via: 'mtls',
    });
    assert.equal(identityFromCertificate(cert('URI:spiffe://a/x, URI:spiffe://a/y', 'c')).kind, 'anonymous');
    assert.equal(identityFromCertificate(cert('URI:spiffe://Bad/x', 'c')).kind, 'anonymous');
    assert.equal(identityFromCertificate(cert(undefined, ['a', 'b'])).kind, 'anonymous');
    assert.equal(identityFromCertificate(cert(undefined)).kind, 'anonymous');
    // A non-SPIFFE URI does not count: the CN is used.
    assert.equal(identityFromCertificate(cert('URI:https://example.org/', 'bob')).principal, 'x509-cn:bob');
  });

  it('knows loopback addresses and listen addresses', () => {
    for (const a of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1']) assert.ok(isLoopbackAddress(a), a);
    for (const a of ['10.0.0.1', '::', '0.0.0.0', '::ffff:10.0.0.1', 'fe80::1', 'x']) {
      assert.ok(!isLoopbackAddress(a), a);
    }
    assert.ok(isLoopbackListen('localhost:9091') && isLoopbackListen('[::1]:1') && isLoopbackListen('127.0.0.1:0'));
    assert.deepEqual(exposedPlaintext(['127.0.0.1:1', 'unix:/x', '0.0.0.0:2', '[::]:3', 'host.example:4'], false), [
      '0.0.0.0:2',
      '[::]:3',
      'host.example:4',
    ]);
    assert.deepEqual(exposedPlaintext(['0.0.0.0:2'], true), []);
    assert.equal(parseSocketMode('660'), 0o660);
    assert.equal(parseSocketMode('0600'), 0o600);
    assert.equal(parseSocketMode('999'), undefined);
  });

  it('finds the uid of a loopback TCP client in the kernel socket table, and SO_PEERCRED on a Unix socket', async () => {
    const uid = process.getuid!();
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
    const client = net.connect(port, '127.0.0.1');
    const s = await accepted;
    try {
      assert.equal(loopbackPeerUid(s.remoteAddress!, s.remotePort!, s.localAddress!, s.localPort!), uid);
      assert.equal(loopbackPeerUid(s.remoteAddress!, s.remotePort! + 1, s.localAddress!, s.localPort!), undefined);
    } finally {
      client.destroy();
      server.close();
    }

    const dir = mkdtempSync(join(tmpdir(), 'xdpctl-peercred-'));
    const path = join(dir, 's.sock');
    const us = net.createServer();
    await new Promise<void>((r) => us.listen(path, r));
    const got = new Promise<net.Socket>((r) => us.once('connection', r));
    const uc = net.connect(path);
    const peer = await got;
    try {
      const fd = (peer as unknown as { _handle: { fd: number } })._handle.fd;
      assert.deepEqual(peerCred(fd), { pid: process.pid, uid, gid: process.getgid!() });
      assert.throws(() => peerCred(-1), /SO_PEERCRED/);
    } finally {
      uc.destroy();
      us.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('finds the uid whatever the client socket family: IPv6 socket to 127.0.0.1, IPv4 client of a [::] server', async () => {
    const uid = process.getuid!();
    // [server host, client's destination]: an AF_INET6 client of an IPv4 listener is listed in tcp6 as
    // ::ffff:127.0.0.1 (gRPC's C core dials that way); a dual-stack server sees an IPv4 client as mapped.
    for (const [host, dial] of [
      ['127.0.0.1', '::ffff:127.0.0.1'],
      ['::', '127.0.0.1'],
      ['::', '::ffff:127.0.0.1'],
      ['::1', '::1'],
    ]) {
      const server = net.createServer();
      await new Promise<void>((r) => server.listen(0, host, r));
      const port = (server.address() as net.AddressInfo).port;
      const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
      const client = net.connect(port, dial);
      const s = await accepted;
      try {
        const where = `${dial} -> ${host} (server sees ${s.remoteAddress} -> ${s.localAddress})`;
        assert.equal(loopbackPeerUid(s.remoteAddress!, s.remotePort!, s.localAddress!, s.localPort!), uid, where);
        assert.equal(loopbackPeerUid(s.remoteAddress!, s.remotePort! + 1, s.localAddress!, s.localPort!), undefined);
      } finally {
        client.destroy();
        server.close();
      }
    }
  });

  it('reads IPv4-mapped client rows from /proc/net/tcp6 for an IPv4 server address', () => {
    const dir = mkdtempSync(join(tmpdir(), 'xdpctl-procnet-'));
    try {
      // Client ::ffff:127.0.0.1 port 40000 -> ::ffff:127.0.0.1 port 9091, uid 4321; tcp has only the server's row.
      const mapped = '0000000000000000FFFF00000100007F';
      writeFileSync(
        join(dir, 'tcp'),
        '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n' +
          '   0: 0100007F:2383 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0\n',
      );
      writeFileSync(
        join(dir, 'tcp6'),
        '  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n' +
          `   0: ${mapped}:9C40 ${mapped}:2383 01 00000000:00000000 00:00000000 00000000  4321        0 1 1 0\n`,
      );
      assert.equal(loopbackPeerUid('127.0.0.1', 40000, '127.0.0.1', 9091, dir), 4321);
      assert.equal(loopbackPeerUid('::ffff:127.0.0.1', 40000, '::ffff:127.0.0.1', 9091, dir), 4321);
      assert.equal(loopbackPeerUid('127.0.0.1', 40001, '127.0.0.1', 9091, dir), undefined);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reads /proc/net/tcp6 entries for IPv6 loopback', () => {
    const dir = mkdtempSync(join(tmpdir(), 'xdpctl-procnet-'));
    try {
      // ::1 port 40000 -> ::1 port 9091, uid 1234 (format of /proc/net/tcp6).
      writeFileSync(
        join(dir, 'tcp6'),
        '  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n' +
          '   0: 00000000000000000000000001000000:9C40 00000000000000000000000001000000:2383 01 00000000:00000000 00:00000000 00000000  1234        0 1 1 0\n',
      );
      assert.equal(loopbackPeerUid('::1', 40000, '::1', 9091, dir), 1234);
      assert.equal(loopbackPeerUid('::1', 40001, '::1', 9091, dir), undefined);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('auth config', () => {
  const db = parseUserDb(
    'root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n',
    'root:x:0:\nalice:x:1000:\nbob:x:1001:\nnetops:x:2000:bob\n',
  );
  const problems = (text: string) => {
    try {
      parseAuthConfig(text, 'auth.yaml', db);
    } catch (e) {
      assert.ok(e instanceof AuthConfigError);
      assert.match(e.message, /^auth config auth.yaml: /);
      return e.problems;
    }
    assert.fail('accepted');
  };

  it('accepts every identity form and resolves names', () => {
    const c = parseAuthConfig(
      'admin:\n  - spiffe://example.org/ns/net/sa/ctl\n  - unix-uid:0\n  - unix-group:netops\n' +
        'readOnly: ["spiffe://example.org/ns/mon/*", "x509-cn:grafana", unix-user:alice, unix-gid:7, anonymous]\n',
      'auth.yaml',
      db,
    );
    assert.deepEqual(c.admin, [
      { type: 'spiffe', id: 'spiffe://example.org/ns/net/sa/ctl', prefix: false },
      { type: 'unix-uid', uid: 0 },
      { type: 'unix-gid', gid: 2000 },
    ]);
    assert.deepEqual(c.readOnly, [
      { type: 'spiffe', id: 'spiffe://example.org/ns/mon', prefix: true },
      { type: 'x509-cn', cn: 'grafana' },
      { type: 'unix-uid', uid: 1000 },
      { type: 'unix-gid', gid: 7 },
      { type: 'anonymous' },
    ]);
    const p = new Policy(c, db);
    const spiffe = (id: string) => ({ kind: 'spiffe' as const, principal: id, via: 'mtls' as const });
    assert.equal(p.roleOf(spiffe('spiffe://example.org/ns/net/sa/ctl')), 'admin');
    assert.equal(p.roleOf(spiffe('spiffe://example.org/ns/net/sa/ctl2')), undefined);
    assert.equal(p.roleOf(spiffe('spiffe://example.org/ns/mon/sa/grafana')), 'read-only');
    assert.equal(p.roleOf(spiffe('spiffe://example.org/ns/monitoring')), undefined, 'prefix ends at a segment');
    assert.equal(p.roleOf({ kind: 'x509-cn', principal: 'x509-cn:grafana', via: 'mtls' }), 'read-only');
    assert.equal(p.roleOf({ kind: 'x509-cn', principal: 'x509-cn:grafana2', via: 'mtls' }), undefined);
    assert.equal(p.roleOf(localIdentity('unix-socket', 0, 0, 1)), 'admin');
    assert.equal(p.roleOf(localIdentity('loopback-tcp', 1001)), 'admin', 'bob is a member of netops');
    assert.equal(p.roleOf(localIdentity('unix-socket', 1000, 1000, 1)), 'read-only');
    assert.equal(p.roleOf(localIdentity('unix-socket', 4242, 7, 1)), 'read-only', 'peer gid 7');
    assert.equal(p.roleOf(localIdentity('unix-socket', 4242, 8, 1)), undefined);
    assert.equal(p.roleOf({ kind: 'anonymous', principal: 'anonymous', via: 'plaintext' }), 'read-only');
    // A CN that looks like another kind of principal matches nothing else.
    assert.equal(p.roleOf({ kind: 'x509-cn', principal: 'x509-cn:unix-uid:0', via: 'mtls' }), undefined);
  });

  it('reports every problem with its path', () => {
    assert.deepEqual(problems('admin: [unix-uid:x, "spiffe://Example.org/a", nobody, 7]\nreadOnly: yes\nextra: 1\n'), [
      'extra: unknown key (expected admin, readOnly)',
      'admin[0]: "unix-uid:x": unix-uid needs a number (unix-uid:0)',
      'admin[1]: "spiffe://Example.org/a": SPIFFE ID trust domain must be lowercase letters, digits, ".", "-" or "_"',
      'admin[2]: "nobody" is not an identity: use spiffe://TRUST-DOMAIN/PATH (or .../*), x509-cn:NAME, unix-uid:N, unix-user:NAME, unix-gid:N, unix-group:NAME or anonymous',
      'admin[3]: must be a string, not number',
      'readOnly: must be a list of identities',
    ]);
    assert.deepEqual(problems('admin: [unix-user:carol, unix-group:wheel, "spiffe://td/a//b", "x509-cn:"]\n'), [
      'admin[0]: "unix-user:carol": no user "carol" in /etc/passwd',
      'admin[1]: "unix-group:wheel": no group "wheel" in /etc/group',
      'admin[2]: "spiffe://td/a//b": SPIFFE ID path segments must be non-empty letters, digits, ".", "-" or "_" (not "." or "..")',
      'admin[3]: "x509-cn:": x509-cn needs a name (x509-cn:alice)',
    ]);
    assert.deepEqual(problems('{}'), ['grants no role: list identities under "admin" and/or "readOnly"']);
    assert.deepEqual(problems('- a'), ['must be a mapping with "admin" and/or "readOnly" lists']);
    assert.match(problems('admin: [a\n')[0], /^YAML: /);
    assert.match(problems('admin: []\nadmin: []\n')[0], /^YAML: .*unique/i);
  });

  it('default policy: root and self admin, socket group and certificates read-only, others nothing', () => {
    const p = new Policy(defaultAuthConfig({ selfUid: 1001, socketGid: 2000 }), db, true);
    assert.equal(p.roleOf(localIdentity('unix-socket', 0, 0, 1)), 'admin');
    assert.equal(p.roleOf(localIdentity('loopback-tcp', 1001)), 'admin');
    assert.equal(p.roleOf(localIdentity('unix-socket', 1000, 2000, 1)), 'read-only');
    assert.equal(p.roleOf(localIdentity('unix-socket', 1000, 1000, 1)), undefined);
    assert.equal(p.roleOf({ kind: 'spiffe', principal: 'spiffe://td/x', via: 'mtls' }), 'read-only');
    assert.equal(p.roleOf({ kind: 'x509-cn', principal: 'x509-cn:x', via: 'mtls' }), 'read-only');
    assert.equal(p.roleOf({ kind: 'anonymous', principal: 'anonymous', via: 'tls' }), undefined);
  });

  it('names the resources of each mutation, bounded', () => {
    assert.deepEqual(resourcesOf('/xdpctl.v1.RuleService/CreateRule', { rule: { name: 'web' } }), { rules: ['web'] });
    assert.deepEqual(resourcesOf('/xdpctl.v1.RuleService/DeleteRule', { name: 'web' }), { rules: ['web'] });
    assert.deepEqual(resourcesOf('/xdpctl.v1.LinkService/Connect', { link: { a: 'eth0', b: 'tap0' } }), {
      links: ['eth0-tap0'],
    });
    assert.deepEqual(resourcesOf('/xdpctl.v1.LinkService/Disconnect', { a: 'eth0', b: 'tap0' }), {
      links: ['eth0-tap0'],
    });
    const many = resourcesOf('/xdpctl.v1.RuleService/ApplyRules', {
      rules: Array.from({ length: 40 }, (_, i) => ({ name: i === 0 ? 'x'.repeat(100_000) : `r${i}` })),
    });
    assert.equal(many!.rules!.length, 33);
    assert.equal(many!.rules![0].length, 128);
    assert.equal(many!.rules![32], '... 8 more');
  });
});

describe('access middleware on an in-process server', () => {
  let server: Server;
  let address = '';
  const records: { level: string; obj: Record<string, unknown> }[] = [];
  const audit: Logger = {
    debug: () => {},
    info: (obj) => records.push({ level: 'info', obj: obj as Record<string, unknown> }),
    warn: (obj) => records.push({ level: 'warn', obj: obj as Record<string, unknown> }),
    error: () => {},
    child: () => audit,
  };
  const me = `unix-uid:${process.getuid!()}`;
  let created = 0;

  before(async () => {
    const db = parseUserDb('', '');
    // This process's uid (how the kernel sees the test client on loopback) may read, not change.
    const policy = new Policy(
      {
        admin: [{ type: 'spiffe', id: 'spiffe://td/admin', prefix: false }],
        readOnly: [{ type: 'unix-uid', uid: process.getuid!() }],
      },
      db,
    );
    server = createServer()
      .use(accessMiddleware({ policy, audit, maxWatchStreams: 2 }))
      .use(errorMiddleware(audit));
    const no = async () => {
      throw new ServerError(Status.UNIMPLEMENTED, 'not here');
    };
    server.add(RuleServiceDefinition, {
      createRule: async () => {
        created++;
        return {};
      },
      getRule: no,
      listRules: async () => ({ rules: [], nextPageToken: '' }),
      updateRule: no,
      deleteRule: no,
      applyRules: no,
    });
    server.add(CounterServiceDefinition, {
      getCounters: no,
      async *watchCounters(_req, ctx) {
        while (!ctx.signal.aborted) {
          yield {};
          await new Promise((r) => setTimeout(r, 50));
        }
      },
    });
    const port = await server.listen('127.0.0.1:0', listenerCredentials('tcp', ServerCredentials.createInsecure()));
    address = `127.0.0.1:${port}`;
  });
  after(() => server.forceShutdown());

  it('identifies the loopback caller by uid; a forged identity entry is stripped, even with the seal', async () => {
    const ch = createChannel(address);
    const rules = createClient(RuleServiceDefinition, ch);
    try {
      await rules.listRules({});
      const forged = JSON.stringify({ kind: 'spiffe', principal: 'spiffe://td/admin', via: 'mtls' });
      for (const value of [forged, `${SEAL}.${forged}`]) {
        records.length = 0;
        const err = await rules
          .createRule({ rule: { name: 'web' } }, { metadata: Metadata({ [IDENTITY_KEY]: value }) })
          .then(
            () => undefined,
            (e: unknown) => e,
          );
        assert.ok(err instanceof ClientError);
        assert.equal(err.code, Status.PERMISSION_DENIED);
        assert.match(
          err.details,
          /\/xdpctl\.v1\.RuleService\/CreateRule needs the admin role; unix-uid:\d+ \(loopback-tcp\) has the read-only role/,
        );
        assert.equal(records.length, 1);
        const r = records[0];
        assert.equal(r.level, 'warn');
        assert.equal((r.obj.identity as { principal: string }).principal, me);
        assert.deepEqual(r.obj.resources, { rules: ['web'] });
        assert.equal(r.obj.code, 'PERMISSION_DENIED');
        assert.equal(r.obj.roleNeeded, 'admin');
        assert.equal(typeof r.obj.durationMs, 'number');
      }
      assert.equal(created, 0, 'the handler never ran');
    } finally {
      ch.close();
    }
  });

  it('bounds watch streams per identity with RESOURCE_EXHAUSTED, and frees the slot when a stream ends', async () => {
    const ch = createChannel(address);
    const counters = createClient(CounterServiceDefinition, ch);
    const aborts = [new AbortController(), new AbortController()];
    const first = async (ac: AbortController) => {
      const it = counters.watchCounters({}, { signal: ac.signal })[Symbol.asyncIterator]();
      await it.next();
      return it;
    };
    try {
      const open = await Promise.all(aborts.map(first));
      const third = await first(new AbortController()).then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.ok(third instanceof ClientError, String(third));
      assert.equal(third.code, Status.RESOURCE_EXHAUSTED);
      assert.match(third.details, /already has 2 watch streams open \(the limit per client is 2\)/);
      aborts[0].abort();
      await open[0].next().catch(() => undefined);
      // The server notices the cancellation shortly after.
      let again: unknown;
      for (let i = 0; i < 50; i++) {
        const ac = new AbortController();
        again = await first(ac).then(
          () => (ac.abort(), 'ok'),
          (e: unknown) => e,
        );
        if (again === 'ok') break;
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(again, 'ok');
    } finally {
      aborts.forEach((a) => a.abort());
      ch.close();
    }
  });
});
