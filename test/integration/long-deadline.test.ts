/**
 * Deadlines of 2^31 ms (~24.8 days) or more, against a real daemon. grpc-js's server reads `grpc-timeout` as
 * `(value * unit) | 0` (an int32: 30 days, `2592000S`, became -1702967296 ms), and nice-grpc's client deadline
 * middleware armed one setTimeout, which Node fires after 1 ms past 2^31-1 ms: either way a CreateRule with a
 * 30-day deadline was told DEADLINE_EXCEEDED at once while the rule was applied (in ListRules and the kernel).
 * Here each client — the project's TypeScript client, a bare grpc-js client that sends grpc-timeout, the
 * independent Python client (gRPC's C core), the CLI with `--timeout 2592000s` — gets its rule created and is
 * told so; the HTTP/JSON listener refuses a Connect-Timeout-Ms it cannot hold, with nothing applied; the CLI
 * refuses a --timeout no gRPC call can carry. Each reply is checked against ListRules and the kernel's maps.
 */
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { after, before, describe, it } from 'node:test';

import { credentials, Client as GrpcClient, Metadata, type ServiceError } from '@grpc/grpc-js';

import { createXdpctlClient, type Rule } from '../../src/client/index.js';
import { CreateRuleRequest, CreateRuleResponse, Protocol } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, xdpctl } from '../helpers/daemon.js';
import { kernelOnly, runId, sleep } from '../helpers/env.js';
import { runPythonClient } from '../helpers/python-client.js';
import { Topology, type Host } from '../helpers/topology.js';

const DAYS_30_MS = 30 * 24 * 3600 * 1000;

describe('deadlines of 2^31 ms or more', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess;
  let vm: Host, b1: Host;

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    d = await DaemonProcess.start(`ld${id}`, ['--http-listen', '127.0.0.1:0']);
  });
  after(async () => {
    await d?.destroy();
    topo.destroy();
  });

  const rule = (name: string, port: number): Rule => ({
    name,
    match: { protocol: Protocol.PROTOCOL_UDP, port, destination: '', sourcePrefixes: [] },
    ingressInterfaces: [vm.hostIf],
    backends: [{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf, weight: 1 }],
    udpChecksum: 0,
    labels: {},
    generation: 0n,
  });
  const listed = async () => (await d.clients().rules.listRules({})).rules.map((r) => r.name).sort();
  /**
   * What a caller was told and what happened: the error it got (none: OK), whether the rule is then in ListRules,
   * and how many rule_match entries were added. After an error the daemon is given 2 s to land a change late.
   */
  async function fate(name: string, before: number, call: Promise<unknown>) {
    const t0 = performance.now();
    const err = await call.then(
      (r) => (r instanceof Error ? r : undefined),
      (e: unknown) => e as Error,
    );
    const ms = Math.round(performance.now() - t0);
    if (err) for (let i = 0; i < 20 && !(await listed()).includes(name); i++) await sleep(100);
    return {
      told: err ? `${err.message} (after ${ms} ms)` : 'OK',
      inListRules: (await listed()).includes(name),
      addedToKernel: inKernel() - before,
    };
  }
  const created = { told: 'OK', inListRules: true, addedToKernel: 1 };
  /** Rules in the kernel's rule_match map (one entry per ingress interface and port here). */
  const inKernel = () => (d.dumpMaps().rule_match as unknown[]).length;

  it('the TypeScript client (nice-grpc): a 30-day deadline creates the rule and says so', async () => {
    const c = createXdpctlClient({ address: d.tcp });
    try {
      const call = c.rules.createRule({ rule: rule('ts30d', 7101) }, { deadline: DAYS_30_MS });
      assert.deepEqual(await fate('ts30d', inKernel(), call), created);
    } finally {
      c.close();
    }
  });

  it('a bare grpc-js client sending grpc-timeout 2592000S: created and told so', async () => {
    const client = new GrpcClient(d.tcp, credentials.createInsecure());
    try {
      const call = new Promise<CreateRuleResponse | ServiceError>((resolve) =>
        client.makeUnaryRequest(
          '/xdpctl.v1.RuleService/CreateRule',
          (req: CreateRuleRequest) => Buffer.from(CreateRuleRequest.encode(req).finish()),
          (buf: Buffer) => CreateRuleResponse.decode(buf),
          { rule: rule('js30d', 7102) },
          new Metadata(),
          { deadline: Date.now() + DAYS_30_MS },
          (err, res) => resolve(err ?? res!),
        ),
      );
      assert.deepEqual(await fate('js30d', inKernel(), call), created);
    } finally {
      client.close();
    }
  });

  it('the independent client (python3-grpcio, gRPC C core: grpc-timeout 720H): created and told so', async () => {
    const r = rule('py30d', 7103);
    const call = runPythonClient(d.tcp, [
      {
        op: 'unary',
        method: 'xdpctl.v1.RuleService/CreateRule',
        request: {
          rule: {
            name: r.name,
            match: { protocol: 'PROTOCOL_UDP', port: r.match!.port },
            ingressInterfaces: r.ingressInterfaces,
            backends: r.backends.map((b) => ({ ip: b.ip, mac: b.mac, interface: b.interface })),
          },
        },
        timeout: DAYS_30_MS / 1000,
      },
    ]).then((run) => {
      const res = run.results[0];
      return res?.ok ? res : new Error(`${res?.code}: ${res?.details} ${res ? '' : run.transcript}`);
    });
    assert.deepEqual(await fate('py30d', inKernel(), call), created);
  });

  it('the CLI: --timeout 2592000s creates the rule and says so; a --timeout no call can carry is refused', async () => {
    const add = (name: string, port: number, timeout: string) =>
      xdpctl(d.tcp, [
        '--timeout',
        timeout,
        'rules',
        'add',
        name,
        '--port',
        String(port),
        '--ingress',
        vm.hostIf,
        '--backend',
        `${b1.ip},${b1.mac},${b1.hostIf}`,
      ]);
    let stderr = '';
    const call = add('cli30d', 7104, '2592000s').then((r) => {
      stderr = r.stderr;
      return r.code === 0 ? r : new Error(`exit ${r.code}: ${r.stderr.trim().split('\n').at(-1)}`);
    });
    assert.deepEqual(await fate('cli30d', inKernel(), call), created);
    assert.doesNotMatch(stderr, /TimeoutOverflowWarning/);

    const before = inKernel();
    const tooLong = await add('clitoolong', 7105, '100000000h');
    assert.equal(tooLong.code, 2, `exit ${tooLong.code}: ${tooLong.stderr}`);
    assert.match(tooLong.stderr, /--timeout.*at most 99999999h/);
    assert.ok(!(await listed()).includes('clitoolong'), 'nothing sent');
    assert.equal(inKernel(), before);
  });

  /** CreateRule as a raw HTTP/2 request with the given grpc-timeout; resolves with its grpc-status and message. */
  function rawCreate(r: Rule, grpcTimeout: string): Promise<Error | { status: string }> {
    const body = Buffer.from(CreateRuleRequest.encode({ rule: r }).finish());
    const frame = Buffer.alloc(5 + body.length);
    frame.writeUInt32BE(body.length, 1);
    body.copy(frame, 5);
    const s = http2.connect(`http://${d.tcp}`);
    return new Promise<Error | { status: string }>((resolve) => {
      s.on('error', (e) => resolve(e));
      const req = s.request({
        ':method': 'POST',
        ':path': '/xdpctl.v1.RuleService/CreateRule',
        'content-type': 'application/grpc',
        te: 'trailers',
        'grpc-timeout': grpcTimeout,
      });
      let headers: http2.IncomingHttpHeaders = {};
      req.on('response', (h) => (headers = h));
      req.on('trailers', (t) => (headers = { ...headers, ...t }));
      req.on('error', (e) => resolve(e));
      req.on('data', () => {});
      req.on('end', () => {
        const status = String(headers['grpc-status']);
        resolve(status === '0' ? { status } : new Error(`grpc-status ${status}: ${String(headers['grpc-message'])}`));
      });
      req.end(frame);
    }).finally(() => s.close());
  }

  it('a deadline already passed on arrival (grpc-timeout 1n): refused, nothing applied', async () => {
    const got = await fate('gone1n', inKernel(), rawCreate(rule('gone1n', 7107), '1n'));
    assert.match(got.told, /grpc-status (4|1):/, JSON.stringify(got));
    assert.deepEqual(
      { inListRules: got.inListRules, addedToKernel: got.addedToKernel },
      { inListRules: false, addedToKernel: 0 },
    );
  });

  it('grpc-timeout at the spec maximum (99999999H) by a raw HTTP/2 request: created and told so', async () => {
    assert.deepEqual(await fate('max8h', inKernel(), rawCreate(rule('max8h', 7108), '99999999H')), created);
  });

  it('HTTP/JSON: a Connect-Timeout-Ms past 2^31-1 is refused before anything runs', async () => {
    const before = inKernel();
    const r = rule('http30d', 7106);
    const res = await fetch(`http://${d.http[0]}/xdpctl.v1.RuleService/CreateRule`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Connect-Timeout-Ms': String(DAYS_30_MS) },
      body: JSON.stringify({
        rule: {
          name: r.name,
          match: { protocol: 'PROTOCOL_UDP', port: r.match!.port },
          ingressInterfaces: r.ingressInterfaces,
          backends: r.backends.map((b) => ({ ip: b.ip, mac: b.mac, interface: b.interface })),
        },
      }),
    });
    const body = (await res.json()) as { code?: string; message?: string };
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.equal(body.code, 'invalid_argument');
    assert.match(body.message ?? '', /timeout 2592000000ms must be <= 2147483647/);
    assert.ok(!(await listed()).includes('http30d'), 'nothing applied');
    assert.equal(inKernel(), before);
    // Within the bound it runs as usual.
    const okRes = await fetch(`http://${d.http[0]}/xdpctl.v1.RuleService/CreateRule`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Connect-Timeout-Ms': String(2 ** 31 - 1) },
      body: JSON.stringify({
        rule: {
          name: r.name,
          match: { protocol: 'PROTOCOL_UDP', port: r.match!.port },
          ingressInterfaces: r.ingressInterfaces,
          backends: r.backends.map((b) => ({ ip: b.ip, mac: b.mac, interface: b.interface })),
        },
      }),
    });
    assert.equal(okRes.status, 200, await okRes.text());
    assert.ok((await listed()).includes('http30d'));
    assert.equal(inKernel(), before + 1);
  });
});
