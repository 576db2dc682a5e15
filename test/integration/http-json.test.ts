/**
 * HTTP/JSON (--http-listen, the Connect protocol's unary form) driven with curl, the tool the old
 * redirector's users had: changes and reads land as over gRPC; errors carry the same code, message
 * and field violations (google.rpc.BadRequest, its JSON under "debug"); identities come from the
 * connection (loopback TCP and Unix socket peers by uid, mTLS clients by certificate) with the same
 * roles and audit records; bodies over --max-message-bytes are refused; plaintext on a non-loopback
 * address is refused without --insecure.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { ClientError, Metadata, Status } from 'nice-grpc';

import { BadRequest } from '../../src/gen/google/rpc/error_details.js';
import { DeleteRuleRequest, GetRuleRequest, Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { decodeStatusDetails } from '../../src/server/services/status.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { DAEMON, DAEMON_NODE_FLAGS, kernelOnly, ROOT, runId, sleep } from '../helpers/env.js';
import { makePki } from '../helpers/pki.js';
import { Topology } from '../helpers/topology.js';

type Reply = { status: number; body: Record<string, unknown>; exit: number; stderr: string };

/** curl, as root or as another user; the HTTP status and the JSON body. */
function curl(args: string[], user?: string): Reply {
  const cmd = [...(user ? ['runuser', '-u', user, '--'] : []), 'curl', '-sS', '-w', '\n%{http_code}', ...args];
  const r = spawnSync(cmd[0], cmd.slice(1), { encoding: 'utf8', timeout: 15_000 });
  const out = r.stdout ?? '';
  const cut = out.lastIndexOf('\n');
  const text = out.slice(0, cut);
  let body: Record<string, unknown> = {};
  try {
    body = text ? (JSON.parse(text) as Record<string, unknown>) : {};
  } catch {
    body = { raw: text };
  }
  return { status: Number(out.slice(cut + 1)), body, exit: r.status ?? -1, stderr: r.stderr ?? '' };
}

type Violation = { field: string; description: string };
const violationsOf = (body: Record<string, unknown>): Violation[] =>
  ((body.details as { type: string; debug?: { fieldViolations?: Violation[] } }[] | undefined) ?? [])
    .filter((x) => x.type === 'google.rpc.BadRequest')
    .flatMap((x) => x.debug?.fieldViolations ?? []);

function auditRecords(d: DaemonProcess): Record<string, unknown>[] {
  return d.output
    .split('\n')
    .filter((l) => l.startsWith('{') && l.includes('"audit":true'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

async function audited(d: DaemonProcess, match: (r: Record<string, unknown>) => boolean, what: string) {
  const end = Date.now() + 5000;
  for (;;) {
    const r = auditRecords(d).find(match);
    if (r) return r;
    if (Date.now() > end) throw new Error(`no audit record of ${what}`);
    await sleep(50);
  }
}

describe('HTTP/JSON with curl (Connect protocol)', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const httpSock = `/tmp/xdpctl-test-${id}-http.sock`;
  let d: DaemonProcess;
  let grpc: Clients;
  let base: string;

  before(async () => {
    topo.addHost('in');
    topo.addHost('be', '198.18.7.2/24');
    d = await DaemonProcess.start(id, [
      '--http-listen',
      '127.0.0.1:0',
      `unix:${httpSock}`,
      // Others may connect to the sockets; what they may do is the roles' business.
      '--socket-mode',
      '666',
      '--max-message-bytes',
      '65536',
      '--max-connections-per-peer',
      '4',
      '--preface-timeout-seconds',
      '3',
      '--log-level',
      'info',
    ]);
    grpc = d.clients();
    base = `http://${d.http.find((a) => !a.startsWith('unix:'))}`;
  });
  after(async () => {
    await d?.destroy();
    rmSync(httpSock, { force: true });
    rmSync(`${httpSock}.lock`, { force: true });
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
  });

  const rule = (name: string, over: Record<string, unknown> = {}) => ({
    name,
    match: { protocol: 'PROTOCOL_UDP', port: 7999, sourcePrefixes: ['192.0.2.0/24'] },
    ingressInterfaces: [topo.host('in').hostIf],
    backends: [{ ip: '198.18.7.2', mac: topo.host('be').mac, interface: topo.host('be').hostIf }],
    ...over,
  });
  const post = (method: string, body: unknown, extra: string[] = [], user?: string) =>
    curl(['--json', JSON.stringify(body), ...extra, `${base}/xdpctl.v1.${method}`], user);

  it('creates, reads (POST and GET), lists and deletes a rule; gRPC sees the same rule', async () => {
    const created = post('RuleService/CreateRule', { rule: rule('web') });
    assert.equal(created.status, 200, JSON.stringify(created));
    const r = created.body.rule as { name: string; generation: string; status: { state: string } };
    assert.equal(r.name, 'web');
    assert.equal(r.status.state, 'RULE_STATE_ACTIVE', JSON.stringify(r.status));
    // Over gRPC: the same rule, in the same proto3 JSON mapping.
    const viaGrpc = Rule.toJSON((await grpc.rules.getRule({ name: 'web' })).rule!);
    const viaGet = curl([
      '-G',
      `${base}/xdpctl.v1.RuleService/GetRule`,
      '-d',
      'encoding=json',
      '--data-urlencode',
      'message={"name":"web"}',
    ]);
    assert.equal(viaGet.status, 200);
    const norm = (x: unknown) => JSON.parse(JSON.stringify(x, (_k, v) => (typeof v === 'number' ? String(v) : v)));
    // Conditions carry their last transition time, which both show alike; numbers compared as text (int64 is a string in JSON).
    assert.deepEqual(norm(viaGet.body.rule), norm(viaGrpc));
    const list = post('RuleService/ListRules', {});
    assert.deepEqual(
      (list.body.rules as { name: string }[]).map((x) => x.name),
      ['web'],
    );
    // The Unix socket serves the same (curl --unix-socket).
    const u = curl(['--unix-socket', httpSock, '--json', '{}', 'http://xdpctld/xdpctl.v1.RuleService/ListRules']);
    assert.equal(u.status, 200);
    assert.deepEqual(u.body, list.body);
    const del = post('RuleService/DeleteRule', { name: 'web' });
    assert.equal(del.status, 200);
    assert.deepEqual(del.body, {});
    assert.deepEqual((await grpc.rules.listRules({})).rules, []);
  });

  it('serves JSON only: binary protobuf (Content-Type: application/proto, GET ?encoding=proto) is 415 and applies nothing', async () => {
    assert.equal(post('RuleService/CreateRule', { rule: rule('bin') }).status, 200);
    const dir = mkdtempSync(join(tmpdir(), 'xdpctl-proto-'));
    try {
      const bodyOf = (name: string, bytes: Uint8Array) => {
        const file = join(dir, name);
        writeFileSync(file, bytes);
        return `@${file}`;
      };
      // Before: GetRule 200 and DeleteRule 200 (the rule deleted), an unknown field skipped unseen.
      const binary = (method: string, body: string, type = 'application/proto') =>
        curl(['-H', `content-type: ${type}`, '--data-binary', body, `${base}/xdpctl.v1.RuleService/${method}`]);
      const get = binary('GetRule', bodyOf('get', GetRuleRequest.encode({ name: 'bin' }).finish()));
      assert.equal(get.status, 415, JSON.stringify(get));
      assert.equal(get.body.code, 'invalid_argument');
      assert.match(
        String(get.body.message),
        /^Content-Type application\/proto is not accepted: send Content-Type: application\/json .*binary protobuf is served over gRPC$/,
      );
      const del = bodyOf('del', DeleteRuleRequest.encode(DeleteRuleRequest.fromPartial({ name: 'bin' })).finish());
      for (const type of ['application/proto', 'application/connect+proto', 'application/json+proto']) {
        const r = binary('DeleteRule', del, type);
        assert.equal(r.status, 415, `${type}: ${JSON.stringify(r)}`);
      }
      const viaGet = curl([
        '-G',
        `${base}/xdpctl.v1.RuleService/GetRule`,
        '-d',
        'encoding=proto',
        '--data-urlencode',
        `message=${Buffer.from(GetRuleRequest.encode({ name: 'bin' }).finish()).toString('latin1')}`,
      ]);
      assert.equal(viaGet.status, 415, JSON.stringify(viaGet));
      assert.match(String(viaGet.body.message), /^encoding=proto is not accepted/);
      // Nothing applied: the rule is still there; JSON with a charset is still served.
      assert.equal((await grpc.rules.getRule({ name: 'bin' })).rule!.name, 'bin');
      const charset = binary('GetRule', JSON.stringify({ name: 'bin' }), 'application/json; charset=utf-8');
      assert.equal(charset.status, 200, JSON.stringify(charset));
    } finally {
      rmSync(dir, { recursive: true, force: true });
      await grpc.rules.deleteRule({ name: 'bin' }).catch(() => undefined);
    }
  });

  it('closes a TCP connection that sends nothing within the preface timeout, as the gRPC listeners do', async () => {
    const u = new URL(base);
    const started = Date.now();
    const socket = connect(Number(u.port), u.hostname);
    const closed = await new Promise<number>((resolve, reject) => {
      const guard = setTimeout(() => reject(new Error('still open after 15 s')), 15_000);
      socket.on('close', () => (clearTimeout(guard), resolve(Date.now() - started)));
      socket.on('error', () => {});
    });
    assert.ok(closed >= 2500, `closed after ${closed} ms, not before the 3 s timeout`);
    assert.equal(
      curl(['--json', '{}', `${base}/xdpctl.v1.RuleService/ListRules`]).status,
      200,
      'talking clients still served',
    );
  });

  it('HTTP/2 with prior knowledge on the plaintext listener: GOAWAY HTTP_1_1_REQUIRED and a log line', async () => {
    for (const args of [[`${base}/xdpctl.v1.RuleService/ListRules`], ['--unix-socket', httpSock, 'http://x/']]) {
      const r = curl(['--http2-prior-knowledge', '-v', '--json', '{}', ...args]);
      assert.notEqual(r.exit, 0);
      assert.match(r.stderr, /GOAWAY, error=13/, r.stderr); // 13: HTTP_1_1_REQUIRED (RFC 9113 section 7)
    }
    const end = Date.now() + 5000;
    const said = () =>
      d.output.split('\n').filter((l) => l.includes('HTTP/2 without TLS (prior knowledge) on the plaintext'));
    while (said().length < 2 && Date.now() < end) await sleep(50);
    assert.equal(said().length, 2, `one log line per connection, TCP and Unix socket: ${said().join('\n')}`);
    assert.equal(curl(['--json', '{}', `${base}/xdpctl.v1.RuleService/ListRules`]).status, 200, 'HTTP/1.1 served');
  });

  it('refuses what a web page could send: an Origin header, or a Host that is not loopback (DNS rebinding)', () => {
    const list = `${base}/xdpctl.v1.RuleService/ListRules`;
    assert.equal(curl(['--json', '{}', list]).status, 200, 'curl as it is');
    const fromPage = curl(['--json', '{}', '-H', 'Origin: http://attacker.example', list]);
    assert.equal(fromPage.status, 403);
    assert.equal(fromPage.body.code, 'permission_denied');
    assert.match(String(fromPage.body.message), /web pages/);
    const rebound = curl(['--json', '{}', '-H', `Host: attacker.example:${new URL(base).port}`, list]);
    assert.equal(rebound.status, 403);
    assert.match(String(rebound.body.message), /not a loopback name/);
    const viaGet = curl(['-G', list, '-d', 'encoding=json', '-d', 'message={}', '-H', 'Sec-Fetch-Site: same-origin']);
    assert.equal(viaGet.status, 403, 'a same-origin GET from a page carries Sec-Fetch-Site');
  });

  it('bad input: the code, message and field violations that gRPC gives, and nothing applied', async () => {
    const bad = rule('bad', {
      match: { protocol: 'PROTOCOL_UDP', port: 70000 },
      backends: [{ ip: '198.18.7.300', mac: 'zz', interface: topo.host('be').hostIf }],
    });
    const h = post('RuleService/CreateRule', { rule: bad });
    assert.equal(h.status, 400);
    assert.equal(h.body.code, 'invalid_argument');
    let trailer: Metadata | undefined;
    const g = await grpc.rules
      .createRule({ rule: Rule.fromJSON(bad) }, { onTrailer: (m) => (trailer = m) })
      .then(() => assert.fail('gRPC accepted it'))
      .catch((e: unknown) => e as ClientError);
    assert.equal(h.body.message, g.details);
    const grpcViolations = BadRequest.decode(
      decodeStatusDetails(trailer)!.details.find((x) => x.typeUrl.endsWith('google.rpc.BadRequest'))!.value,
    ).fieldViolations;
    assert.deepEqual(violationsOf(h.body), grpcViolations);
    assert.deepEqual(
      violationsOf(h.body).map((v) => v.field),
      ['rule.match.port', 'rule.backends[0].ip', 'rule.backends[0].mac'].filter((f) =>
        grpcViolations.some((v) => v.field === f),
      ),
    );
    assert.ok(violationsOf(h.body).some((v) => v.field === 'rule.match.port'));
    assert.deepEqual((await grpc.rules.listRules({})).rules, [], 'nothing applied');

    // Well formed but unusable: a broadcast, a multicast and an all-zero backend MAC, a multicast
    // backend address, a bad label named by its key; the same fields through both protocols.
    const be = topo.host('be');
    const unusable = rule('unusable', {
      backends: [
        { ip: '198.18.7.2', mac: be.mac, interface: be.hostIf },
        { ip: '198.18.7.3', mac: '00:00:00:00:00:00', interface: be.hostIf },
        { ip: '198.18.7.4', mac: 'FF:FF:FF:FF:FF:FF', interface: be.hostIf },
        { ip: '198.18.7.5', mac: '01:00:5e:00:00:fb', interface: be.hostIf },
        { ip: '224.0.0.251', mac: be.mac, interface: be.hostIf },
      ],
      labels: { owner: 'me', 'Bad Key': 'v'.repeat(300) },
    });
    const want = [
      'rule.backends[1].mac',
      'rule.backends[2].mac',
      'rule.backends[3].mac',
      'rule.backends[4].ip',
      'rule.labels["Bad Key"]',
    ];
    const hu = post('RuleService/CreateRule', { rule: unusable });
    assert.equal(hu.status, 400, JSON.stringify(hu.body));
    assert.deepEqual(
      violationsOf(hu.body)
        .map((v) => v.field)
        .sort(),
      want,
    );
    const gu = await grpc.rules
      .createRule({ rule: Rule.fromJSON(unusable) }, { onTrailer: (m) => (trailer = m) })
      .then(() => assert.fail('gRPC accepted it'))
      .catch((e: unknown) => e as ClientError);
    assert.equal(gu.code, Status.INVALID_ARGUMENT);
    assert.deepEqual(
      BadRequest.decode(
        decodeStatusDetails(trailer)!.details.find((x) => x.typeUrl.endsWith('google.rpc.BadRequest'))!.value,
      )
        .fieldViolations.map((v) => v.field)
        .sort(),
      want,
    );
    assert.deepEqual((await grpc.rules.listRules({})).rules, [], 'nothing applied');

    // A body that cannot be decoded names the field, with a field violation, as gRPC validation does.
    for (const [match, field, description] of [
      [{ protocol: 'PROTOCOL_NOPE' }, 'rule.match.protocol', /PROTOCOL_UDP.*"PROTOCOL_NOPE"/],
      [{ protocol: 'PROTOCOL_TCP' }, 'rule.match.protocol', /PROTOCOL_UDP.*"PROTOCOL_TCP"/],
      [{ protocol: 'PROTOCOL_UDP', port: 'abc' }, 'rule.match.port', /"abc"/],
      [{ protocol: 'PROTOCOL_UDP', sourcePrefixes: ['192.0.2.0/24', 3] }, 'rule.match.source_prefixes[1]', /3/],
    ] as const) {
      const r = post('RuleService/CreateRule', { rule: rule('undecodable', { match }) });
      assert.equal(r.status, 400, JSON.stringify(r.body));
      assert.equal(r.body.code, 'invalid_argument');
      assert.ok(String(r.body.message).startsWith(`${field}: `), JSON.stringify(r.body));
      assert.deepEqual(
        violationsOf(r.body).map((v) => v.field),
        [field],
      );
      assert.match(violationsOf(r.body)[0].description, description);
    }
    // A protocol number that decodes reaches the same validation as over gRPC.
    const seven = post('RuleService/CreateRule', { rule: rule('seven', { match: { protocol: 7 } }) });
    assert.equal(seven.status, 400, JSON.stringify(seven.body));
    assert.match(String(seven.body.message), /rule\.match\.protocol: must be UDP/);
    assert.deepEqual((await grpc.rules.listRules({})).rules, [], 'nothing applied');

    // A misspelt field (the old API's "sourceAddr") is named, not ignored.
    const typo = post('RuleService/CreateRule', { rule: { ...rule('typo'), sourceAddr: '192.0.2.1' } });
    assert.equal(typo.status, 400);
    assert.equal(typo.body.code, 'invalid_argument');
    assert.match(String(typo.body.message), /sourceAddr/);
    // An interface name no interface can have is a bad argument naming the field, not a miss.
    const badIf = post('InterfaceService/GetInterface', { name: 'a/b'.repeat(100) });
    assert.equal(badIf.status, 400, JSON.stringify(badIf.body));
    assert.deepEqual(
      violationsOf(badIf.body).map((v) => v.field),
      ['name'],
    );
    // Requests that are no call get a body saying what to send, not a bare status.
    const noMethod = curl(['--json', '{}', `${base}/rules`]);
    assert.equal(noMethod.status, 404);
    assert.equal(noMethod.body.code, 'unimplemented');
    assert.match(String(noMethod.body.message), /no method at \/rules: calls are POST \/<package.Service>\/<Method>/);
    // A method that exists but is served on gRPC only: 501 saying so (before: 404 "no method at ...").
    const stream = post('CounterService/WatchCounters', {});
    assert.equal(stream.status, 501, JSON.stringify(stream));
    assert.equal(stream.body.code, 'unimplemented');
    assert.match(
      String(stream.body.message),
      /^xdpctl\.v1\.CounterService\/WatchCounters is a server stream: served on gRPC only .*poll POST \/xdpctl\.v1\.CounterService\/GetCounters here$/,
    );
    for (const m of ['Check', 'Watch']) {
      const health = curl(['--json', '{}', `${base}/grpc.health.v1.Health/${m}`]);
      assert.equal(health.status, 501, JSON.stringify(health));
      assert.equal(health.body.code, 'unimplemented');
      assert.match(
        String(health.body.message),
        new RegExp(`^grpc\\.health\\.v1\\.Health/${m} is served on gRPC only .*DaemonService/GetStatus`),
      );
    }
    const reflection = curl(['--json', '{}', `${base}/grpc.reflection.v1.ServerReflection/ServerReflectionInfo`]);
    assert.equal(reflection.status, 501, JSON.stringify(reflection));
    // A method of no service: still 404.
    assert.equal(post('CounterService/WatchCounter', {}).status, 404);
    const wrongVerb = curl(['-X', 'DELETE', `${base}/xdpctl.v1.RuleService/CreateRule`]);
    assert.equal(wrongVerb.status, 405);
    assert.match(
      String(wrongVerb.body.message),
      /DELETE is not allowed on \/xdpctl.v1.RuleService\/CreateRule: use POST/,
    );
    const wrongType = curl([
      '-H',
      'content-type: text/plain',
      '--data',
      '{}',
      `${base}/xdpctl.v1.RuleService/ListRules`,
    ]);
    assert.equal(wrongType.status, 415);
    assert.equal(wrongType.body.code, 'invalid_argument');
    assert.match(
      String(wrongType.body.message),
      /Content-Type text\/plain is not accepted: send Content-Type: application\/json/,
    );
    // Not found, with the gRPC message.
    const missing = post('RuleService/GetRule', { name: 'nope' });
    assert.equal(missing.status, 404);
    assert.equal(missing.body.code, 'not_found');
    // Bodies over --max-message-bytes (64 KiB) are refused before any handler.
    const big = post('RuleService/CreateRule', { rule: rule('big', { labels: { k: 'x'.repeat(70_000) } }) });
    assert.equal(big.body.code, 'resource_exhausted', JSON.stringify(big.body));
    assert.equal(big.status, 429);
    // In the daemon's words (its flag), not the library's option (readMaxBytes).
    assert.match(String(big.body.message), /is larger than xdpctld's --max-message-bytes \(65536 bytes\)$/);
    // A body without a Content-Length (chunked) is cut at the same bound and says the same.
    const chunked = curl([
      '-H',
      'Content-Type: application/json',
      '-H',
      'Transfer-Encoding: chunked',
      '--data-binary',
      JSON.stringify({ rule: rule('big', { labels: { k: 'x'.repeat(70_000) } }) }),
      `${base}/xdpctl.v1.RuleService/CreateRule`,
    ]);
    assert.equal(chunked.status, 429, JSON.stringify(chunked.body));
    assert.match(String(chunked.body.message), /is larger than xdpctld's --max-message-bytes \(65536 bytes\)$/);
    assert.deepEqual((await grpc.rules.listRules({})).rules, []);
  });

  it('identifies callers from the connection: roles and audit as on gRPC', async () => {
    // Root over loopback TCP: admin, audited with its uid from the kernel's socket table.
    assert.equal(post('RuleService/CreateRule', { rule: rule('audited') }).status, 200);
    const rec = await audited(
      d,
      (r) => r.method === '/xdpctl.v1.RuleService/CreateRule' && r.code === 'OK',
      'the CreateRule',
    );
    assert.deepEqual(rec.identity, { kind: 'unix', principal: 'unix-uid:0', via: 'loopback-tcp', uid: 0 });
    assert.equal(rec.applied, true);
    // nobody over loopback TCP and over the Unix socket: no role (the default policy), denied.
    const tcp = post('RuleService/ListRules', {}, [], 'nobody');
    assert.equal(tcp.status, 403, JSON.stringify(tcp));
    assert.equal(tcp.body.code, 'permission_denied');
    assert.equal(
      tcp.body.message,
      '/xdpctl.v1.RuleService/ListRules needs the read-only role; unix-uid:65534 (loopback-tcp) has no role',
    );
    const unix = curl(
      [
        '--unix-socket',
        httpSock,
        '--json',
        JSON.stringify({ name: 'audited' }),
        'http://x/xdpctl.v1.RuleService/DeleteRule',
      ],
      'nobody',
    );
    assert.equal(unix.status, 403, JSON.stringify(unix));
    assert.match(
      String(unix.body.message),
      /DeleteRule needs the admin role; unix-uid:65534 \(unix-socket\) has no role/,
    );
    const denial = await audited(
      d,
      (r) => r.method === '/xdpctl.v1.RuleService/DeleteRule' && r.code === 'PERMISSION_DENIED',
      'the denied DeleteRule',
    );
    assert.equal((denial.identity as { via: string; uid: number }).via, 'unix-socket');
    assert.equal((denial.identity as { via: string; uid: number }).uid, 65534);
    assert.deepEqual(denial.resources, { rules: ['audited'] });
    assert.equal((await grpc.rules.getRule({ name: 'audited' })).rule!.name, 'audited', 'still there');
    await grpc.rules.deleteRule({ name: 'audited' });
  });
  it("a client's W3C traceparent is honoured as on gRPC: the audit record and log lines carry its trace id", async () => {
    // Before: the call ran in a fresh trace (no trace_id, or another one): the header was not carried.
    const traceId = `4bf92f3577b34da6a3ce929d${id
      .replace(/[^0-9a-f]/g, '')
      .padStart(8, '0')
      .slice(-8)}`;
    const r = post('LinkService/Disconnect', { a: 'nope1', b: 'nope2' }, [
      '-H',
      `traceparent: 00-${traceId}-00f067aa0ba902b7-01`,
      '-H',
      'tracestate: xdpctl=t1',
    ]);
    assert.notEqual(r.status, 200, JSON.stringify(r));
    const rec = await audited(
      d,
      (x) => x.method === '/xdpctl.v1.LinkService/Disconnect' && x.trace_id === traceId,
      `the Disconnect in trace ${traceId}`,
    ).catch((err: Error) => {
      const seen = auditRecords(d)
        .filter((x) => x.method === '/xdpctl.v1.LinkService/Disconnect')
        .map((x) => x.trace_id);
      throw new Error(`${err.message}; Disconnect audit records had trace_id ${JSON.stringify(seen)}`);
    });
    assert.equal(rec.trace_id, traceId);
    // Without the header: no trace of the client (the daemon exports nothing here, so no trace at all).
    post('LinkService/Disconnect', { a: 'nope3', b: 'nope4' });
    const plain = await audited(
      d,
      (x) => x.method === '/xdpctl.v1.LinkService/Disconnect' && JSON.stringify(x).includes('nope3'),
      'the Disconnect without traceparent',
    );
    assert.notEqual(plain.trace_id, traceId);
  });

  it("the TCP listeners' connection bounds hold here too: a fifth connection from one peer (a loopback uid) is refused", async () => {
    const [host, port] = [base.slice(7, base.lastIndexOf(':')), Number(base.slice(base.lastIndexOf(':') + 1))];
    const idle = await Promise.all(
      [0, 1, 2, 3].map(
        () =>
          new Promise<Socket>((resolve, reject) => {
            const s = connect(port, host, () => resolve(s));
            s.on('error', reject);
          }),
      ),
    );
    try {
      await sleep(200);
      const refused = post('DaemonService/GetStatus', {});
      assert.notEqual(refused.status, 200, JSON.stringify(refused));
      const end = Date.now() + 5000;
      while (!/connection refused: uid 0 \(loopback\) already has 4 connections/.test(d.output) && Date.now() < end) {
        await sleep(50);
      }
      assert.match(d.output, /connection refused: uid 0 \(loopback\) already has 4 connections/);
    } finally {
      idle.forEach((s) => s.destroy());
    }
    await sleep(200);
    assert.equal(post('DaemonService/GetStatus', {}).status, 200, 'served again once they closed');
  });
});

describe('HTTP/JSON over mutual TLS (the gRPC listeners’ files)', kernelOnly(), () => {
  const id = runId();
  const dir = mkdtempSync(join(tmpdir(), 'xdpctl-http-'));
  const f = (n: string) => join(dir, n);
  let d: DaemonProcess;
  let base: string;

  before(async () => {
    makePki(dir, {
      server: ['server', 'IP:127.0.0.1,DNS:localhost'],
      ops: ['ops', 'URI:spiffe://example.org/ns/ops/sa/admin'],
      viewer: ['viewer', ''],
    });
    writeFileSync(f('auth.yaml'), 'admin:\n  - spiffe://example.org/ns/ops/sa/admin\nreadOnly:\n  - x509-cn:viewer\n');
    d = await DaemonProcess.start(id, [
      '--tls-cert',
      f('server.pem'),
      '--tls-key',
      f('server.key'),
      '--tls-client-ca',
      f('ca.pem'),
      '--auth-config',
      f('auth.yaml'),
      '--http-listen',
      '127.0.0.1:0',
    ]);
    base = `https://${d.http[0]}`;
  });
  after(async () => {
    await d?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  const as = (who: string, method: string, body: unknown) =>
    curl([
      '--cacert',
      f('ca.pem'),
      '--cert',
      f(`${who}.pem`),
      '--key',
      f(`${who}.key`),
      '--json',
      JSON.stringify(body),
      `${base}/xdpctl.v1.${method}`,
    ]);

  it('a client certificate is the identity; without one, or in plaintext, no call is served', async () => {
    const status = as('ops', 'DaemonService/GetStatus', {});
    assert.equal(status.status, 200, JSON.stringify(status));
    assert.equal(status.body.serving, true);
    const change = as('viewer', 'LinkService/Connect', { link: { a: 'lo', b: 'lo' } });
    assert.equal(change.status, 403);
    assert.equal(
      change.body.message,
      '/xdpctl.v1.LinkService/Connect needs the admin role; x509-cn:viewer (mtls) has the read-only role',
    );
    assert.equal(as('viewer', 'LinkService/ListLinks', {}).status, 200);
    const anon = curl(['--cacert', f('ca.pem'), '--json', '{}', `${base}/xdpctl.v1.LinkService/ListLinks`]);
    assert.notEqual(anon.exit, 0, 'the handshake needs a client certificate');
    // Logged as on the gRPC listeners (tls.ts: bounded, with the reason).
    const end = Date.now() + 5000;
    while (!/TLS handshake refused/.test(d.output) && Date.now() < end) await sleep(50);
    assert.match(d.output, /"reason":"the client sent no certificate".*TLS handshake refused/);
    assert.notEqual(anon.status, 200);
    const plain = curl(['--json', '{}', `${base.replace('https:', 'http:')}/xdpctl.v1.LinkService/ListLinks`]);
    assert.notEqual(plain.status, 200);
  });

  it("GetStatus's accepts_writes is the caller's: false for a read-only identity, naming its role", () => {
    // Before: acceptsWrites true for the viewer, whose every change is PERMISSION_DENIED.
    const ops = as('ops', 'DaemonService/GetStatus', {});
    assert.equal(ops.body.acceptsWrites, true, JSON.stringify(ops.body));
    assert.equal(ops.body.writesRefused, undefined);
    const viewer = as('viewer', 'DaemonService/GetStatus', {});
    assert.equal(viewer.status, 200, JSON.stringify(viewer));
    assert.equal(viewer.body.serving, true);
    assert.equal(viewer.body.acceptsWrites, undefined, 'false (proto3 JSON leaves it out)');
    assert.equal(
      viewer.body.writesRefused,
      'x509-cn:viewer (mtls) has the read-only role: changes need the admin role',
    );
  });
});

describe('HTTP/JSON is opt-in and guarded', kernelOnly(), () => {
  it('refuses plaintext HTTP/JSON on a non-loopback address without --insecure', async () => {
    const id = runId();
    const child = spawn(
      process.execPath,
      [
        ...DAEMON_NODE_FLAGS,
        DAEMON,
        '--listen',
        `unix:/tmp/xdpctl-test-${id}.sock`,
        '--http-listen',
        '0.0.0.0:0',
        '--pin-root',
        `/sys/fs/bpf/xdpctl-test-${id}`,
        '--no-state',
      ],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let err = '';
    child.stderr.on('data', (x) => (err += x));
    const code = await new Promise<number | null>((r) => child.on('exit', r));
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}.sock`, { force: true });
    assert.equal(code, 1);
    assert.match(err, /refusing to serve plaintext HTTP\/JSON on 0\.0\.0\.0:0: .*or pass --insecure/);
  });
});
