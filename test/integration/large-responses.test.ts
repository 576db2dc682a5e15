/**
 * No response over a client's default 4 MiB receive limit, on a real daemon:
 * 1000 rules of 64 backends each, the backends spread over 64 egress
 * interfaces, with 63-character names and labels (within the documented
 * limits: 4096 rules, 64 backends a rule, 16 x --max-rules backends in all).
 * 700 rules go in with `xdpctl rules apply -f` (an applied change must not come
 * back as "Received message larger than max", which the CLI used to report as
 * a full table; 1000 such rules are more than one 4 MiB request holds), the
 * rest with CreateRule; then a default Python grpcio client (gRPC's C core,
 * 4 MiB), the generated TypeScript client (grpc-js, 4 MiB) and the CLI read
 * every rule, interface and counter through ListRules, ListInterfaces and
 * GetCounters pages and WatchCounters samples split into parts, and each
 * collects everything: 1000 rules, 65 interfaces each used by 1000 rules
 * (about 5 MB of used_by in all), 64 000 backend counters. Every other reply
 * is measured at that scale too (GetStatus, ListLinks, GetInterface, ApplyRules,
 * and a link that shadows all 1000 rules: Connect, ListLinks).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { ClientError, Status } from 'nice-grpc';

import {
  getAllCounters,
  listAllInterfaces,
  listAllLinks,
  listAllRules,
  watchCounterSamples,
} from '../../src/client/index.js';
import { CounterKind } from '../../src/gen/xdpctl/v1/counters.js';
import { GetStatusResponse } from '../../src/gen/xdpctl/v1/daemon.js';
import { ManagedInterface } from '../../src/gen/xdpctl/v1/interface.js';
import { ConnectResponse, LinkDirection, ListLinksResponse } from '../../src/gen/xdpctl/v1/link.js';
import { ApplyRulesResponse, RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { CLI, kernelOnly, runId } from '../helpers/env.js';
import { runPythonClient } from '../helpers/python-client.js';
import { Topology, type Host } from '../helpers/topology.js';

const RULES = 1000;
/** Rules put in with one `rules apply -f` (the rest with CreateRule: 1000 do not fit one 4 MiB request). */
const APPLIED = 700;
const BACKENDS = 64;
/** Egress interfaces: backend b of every rule leaves through interface b. */
const EGRESS = 64;
/** gRPC's default receive limit (grpc-js, C core, Go). */
const CLIENT_LIMIT = 4 * 1024 * 1024;

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function xdpctl(args: string[]): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(CLI, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('responses within a default client limit (1000 rules x 64 backends on 64 interfaces)', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const dir = mkdtempSync(join(tmpdir(), `xdpctl-big-${id}-`));
  let d: DaemonProcess;
  let c: Clients;
  let vm: Host;
  let egress: Host[] = [];
  /** 63 characters, [a-z0-9-], distinct per rule and per run. */
  const ruleName = (r: number) => `r${id}-${String(r).padStart(4, '0')}-`.padEnd(62, 'n') + 'z';
  const names = Array.from({ length: RULES }, (_, r) => ruleName(r)).sort();
  const cli = (...args: string[]) => xdpctl(['--server', d.unix, ...args]);

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    egress = Array.from({ length: EGRESS }, (_, i) => topo.addHost(`e${i}`));
    // --max-rules as shipped (4096): 16 x 4096 backends, room for 1000 x 64.
    d = await DaemonProcess.start(`big${id}`, ['--max-rules', '4096']);
    c = d.clients(d.unix);
  });
  after(async () => {
    await d?.destroy();
    topo.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it('xdpctl rules apply -f of 700 rules x 64 backends succeeds (no "table full" after applying); 300 more by CreateRule', async () => {
    const rules = Array.from({ length: RULES }, (_, r) => ({
      name: ruleName(r),
      port: 1024 + r,
      ingress: [vm.hostIf],
      labels: { ['owner-' + 'o'.repeat(57)]: 'v'.repeat(63) },
      backends: Array.from({ length: BACKENDS }, (_, b) => ({
        ip: `10.${100 + (r >> 8)}.${r & 255}.${b + 1}`,
        mac: `02:00:00:${(r >> 8).toString(16).padStart(2, '0')}:${(r & 255).toString(16).padStart(2, '0')}:${(b + 1).toString(16).padStart(2, '0')}`,
        interface: egress[b % EGRESS].hostIf,
        weight: 1,
      })),
    }));
    const file = join(dir, 'rules.yaml');
    writeFileSync(file, JSON.stringify({ rules: rules.slice(0, APPLIED) })); // JSON is YAML
    const res = await cli('-o', 'json', 'rules', 'apply', '-f', file);
    assert.equal(res.code, 0, `exit ${res.code}: ${res.stderr}`);
    const out = ApplyRulesResponse.fromJSON(JSON.parse(res.stdout));
    assert.equal(out.applied, true);
    assert.equal(out.changes.length, APPLIED);
    assert.ok(res.stdout.length < CLIENT_LIMIT, `the ApplyRules reply as JSON: ${res.stdout.length} bytes`);
    for (const r of rules.slice(APPLIED)) {
      const rule = {
        name: r.name,
        match: { port: r.port },
        ingressInterfaces: r.ingress,
        labels: r.labels,
        backends: r.backends,
      };
      await c.rules.createRule({ rule });
    }
    // The whole rule set (about 5 MB with statuses) would not fit a default client: left out, and said so.
    assert.equal(out.rulesOmitted, true);
    assert.deepEqual(out.rules, []);
    const { rules: first } = await c.rules.listRules({ pageSize: 1 });
    assert.equal(first[0].backends.length, BACKENDS, 'the rules are in');
  });

  it('a default Python grpcio client pages ListRules and GetCounters within 4 MiB and collects everything', async (t) => {
    const run = await runPythonClient(
      d.unix,
      [
        { op: 'pages', method: 'xdpctl.v1.RuleService/ListRules', request: {}, tally: { rules: 'name' } },
        {
          op: 'pages',
          method: 'xdpctl.v1.CounterService/GetCounters',
          request: {},
          tally: { 'counters.rules': 'rule', 'counters.backends': 'rule' },
        },
      ],
      { timeoutMs: 120_000 },
    );
    const [list, counters] = run.results;
    const sizes = (r: typeof list) => (r.parts ?? []).map((p) => p.bytes).join(', ');
    t.diagnostic(`ListRules pages (bytes): ${sizes(list)}; GetCounters pages (bytes): ${sizes(counters)}`);
    assert.ok(list.ok, JSON.stringify(list));
    assert.ok(list.parts!.length > 1, `ListRules came in ${list.parts!.length} page(s)`);
    for (const p of list.parts!) assert.ok(p.bytes < CLIENT_LIMIT, `a ListRules page of ${p.bytes} bytes`);
    assert.deepEqual(Object.keys(list.tally!.rules), names, 'every rule once, in name order');
    assert.ok(
      Object.values(list.tally!.rules).every((n) => n === 1),
      'no rule twice',
    );

    assert.ok(counters.ok, JSON.stringify(counters));
    assert.ok(counters.parts!.length > 1, `GetCounters came in ${counters.parts!.length} page(s)`);
    for (const p of counters.parts!) assert.ok(p.bytes < CLIENT_LIMIT, `a GetCounters page of ${p.bytes} bytes`);
    assert.deepEqual(Object.keys(counters.tally!['counters.rules']).sort(), names);
    const perRule = counters.tally!['counters.backends'];
    assert.deepEqual(Object.keys(perRule).sort(), names);
    for (const n of names) assert.equal(perRule[n], BACKENDS, `backend counters of ${n}`);
  });

  it('a default Python grpcio client receives whole WatchCounters samples in parts within 4 MiB', async (t) => {
    const run = await runPythonClient(
      d.unix,
      [
        {
          op: 'stream',
          method: 'xdpctl.v1.CounterService/WatchCounters',
          request: { interval: '1s' },
          count: 2,
          timeout: 60,
          tally: { 'counters.rules': 'rule', 'counters.backends': 'rule' },
        },
      ],
      { timeoutMs: 120_000 },
    );
    const [watch] = run.results;
    t.diagnostic(`WatchCounters messages (bytes): ${(watch.parts ?? []).map((p) => p.bytes).join(', ')}`);
    assert.ok(watch.ok, JSON.stringify(watch).slice(0, 2000));
    assert.equal(watch.samples!.length, 2);
    for (const p of watch.parts!) assert.ok(p.bytes < CLIENT_LIMIT, `a WatchCounters message of ${p.bytes} bytes`);
    assert.ok(
      watch.parts!.some((p) => p.continued),
      'a sample of 45 500 entries comes in several messages',
    );
    for (const sample of watch.samples!) {
      assert.deepEqual(Object.keys(sample['counters.rules']).sort(), names);
      for (const n of names) assert.equal(sample['counters.backends'][n], BACKENDS, `backend counters of ${n}`);
    }
    // The parts of one sample carry one time; the next sample another.
    const times = watch.parts!.map((p) => p.time);
    const firstEnd = watch.parts!.findIndex((p) => !p.continued);
    assert.ok(
      times.slice(0, firstEnd + 1).every((t) => t === times[0]),
      JSON.stringify(times),
    );
    assert.notEqual(times[firstEnd + 1], times[0]);
  });

  it('the TypeScript client collects every rule and counter (listAllRules, getAllCounters, watchCounterSamples)', async () => {
    const all = await listAllRules(c.rules);
    assert.deepEqual(
      all.map((r) => r.name),
      names,
    );
    assert.ok(all.every((r) => r.backends.length === BACKENDS));
    const counters = await getAllCounters(c.counters);
    assert.equal(counters.rules.length, RULES);
    assert.equal(counters.backends.length, RULES * BACKENDS);
    assert.ok(counters.global, 'global counters come with the first page');
    const backendsOnly = await getAllCounters(c.counters, { kinds: [CounterKind.COUNTER_KIND_BACKENDS] });
    assert.equal(backendsOnly.backends.length, RULES * BACKENDS);
    assert.equal(backendsOnly.rules.length, 0);
    const ac = new AbortController();
    let samples = 0;
    try {
      for await (const sample of watchCounterSamples(
        c.counters,
        { interval: { seconds: 1n, nanos: 0 } },
        { signal: ac.signal },
      )) {
        assert.equal(sample.rules.length, RULES);
        assert.equal(sample.backends.length, RULES * BACKENDS);
        if (++samples === 2) ac.abort();
      }
    } catch (e) {
      if (!ac.signal.aborted) throw e;
    }
    assert.equal(samples, 2);
  });

  it('the CLI lists every rule and watches every backend', async () => {
    const list = await cli('-o', 'json', 'rules', 'list');
    assert.equal(list.code, 0, list.stderr);
    const rules = (JSON.parse(list.stdout) as { rules: { name: string; backends: unknown[] }[] }).rules;
    assert.deepEqual(
      rules.map((r) => r.name),
      names,
    );
    assert.ok(rules.every((r) => r.backends.length === BACKENDS));
    const table = await cli('rules', 'list');
    assert.equal(table.code, 0, table.stderr);
    for (const n of [names[0], names[RULES - 1]]) assert.match(table.stdout, new RegExp(`^${n}\\s`, 'm'));

    const watch = await cli('-o', 'json', 'watch', 'backends', '--count', '1');
    assert.equal(watch.code, 0, watch.stderr);
    const lines = watch.stdout.trim().split('\n');
    assert.equal(lines.length, 1, 'one sample, printed whole');
    const sample = JSON.parse(lines[0]) as { counters: { backends: { rule: string }[] } };
    assert.equal(sample.counters.backends.length, RULES * BACKENDS);
  });

  it('ListInterfaces in pages within 4 MiB: the Python client, the TypeScript client and the CLI get every interface', async (t) => {
    const ifnames = [vm, ...egress].map((h) => h.hostIf).sort();
    const run = await runPythonClient(
      d.unix,
      [
        {
          op: 'pages',
          method: 'xdpctl.v1.InterfaceService/ListInterfaces',
          request: {},
          tally: { interfaces: 'name' },
        },
      ],
      { timeoutMs: 120_000 },
    );
    const [list] = run.results;
    t.diagnostic(`ListInterfaces pages (bytes): ${(list.parts ?? []).map((p) => p.bytes).join(', ')}`);
    assert.ok(list.ok, JSON.stringify(list).slice(0, 2000));
    assert.ok(list.parts!.length > 1, `ListInterfaces came in ${list.parts!.length} page(s)`);
    for (const p of list.parts!) assert.ok(p.bytes < CLIENT_LIMIT, `a ListInterfaces page of ${p.bytes} bytes`);
    assert.deepEqual(Object.keys(list.tally!.interfaces), ifnames, 'every interface once, in name order');

    const all = await listAllInterfaces(c.interfaces);
    assert.deepEqual(
      all.map((i) => i.name),
      ifnames,
    );
    const total = all.reduce((n, i) => n + ManagedInterface.encode(i).finish().length, 0);
    t.diagnostic(`ListInterfaces in all: ${total} bytes`);
    assert.ok(total > CLIENT_LIMIT, `the whole list (${total} bytes) would not fit one default response`);
    for (const i of all) {
      assert.equal(i.usedBy.length, RULES, `${i.name} is used by every rule`);
      assert.equal(i.usedByOmitted, 0);
    }
    // One interface alone: GetInterface with every user.
    const one = await c.interfaces.getInterface({ name: egress[0].hostIf });
    assert.equal(one.interface!.usedBy.length, RULES);
    // A token this server did not issue.
    await assert.rejects(c.interfaces.listInterfaces({ pageToken: 'bm90LWEtdG9rZW4' }), (e: ClientError) => {
      assert.equal(e.code, Status.INVALID_ARGUMENT);
      assert.match(e.details, /page_token/);
      return true;
    });

    const json = await cli('-o', 'json', 'interfaces', 'list');
    assert.equal(json.code, 0, json.stderr);
    const listed = (JSON.parse(json.stdout) as { interfaces: { name: string; usedBy: string[] }[] }).interfaces;
    assert.deepEqual(
      listed.map((i) => i.name),
      ifnames,
    );
    assert.ok(listed.every((i) => i.usedBy.length === RULES));
    const table = await cli('interfaces', 'list');
    assert.equal(table.code, 0, table.stderr);
    for (const n of ifnames) assert.match(table.stdout, new RegExp(`^${n}\\s`, 'm'));
  });

  it('every other reply at this scale is within 4 MiB: GetStatus, a link shadowing all 1000 rules (Connect, ListLinks), ListRules then', async (t) => {
    const status = await c.daemon.getStatus({});
    const sizes: Record<string, number> = { GetStatus: GetStatusResponse.encode(status).finish().length };
    assert.equal(status.datapath!.ruleCount, RULES);
    // A one-way link from the rules' ingress: every rule is shadowed there (and says so); the link names
    // a bounded number of them, not 1000.
    const link = { a: vm.hostIf, b: egress[0].hostIf, direction: LinkDirection.LINK_DIRECTION_A_TO_B };
    const connected = await c.links.connect({ link });
    sizes.Connect = ConnectResponse.encode(connected).finish().length;
    try {
      const warnings = connected.link!.status!.warnings;
      assert.ok(warnings.length <= 17, `${warnings.length} warnings`);
      assert.match(warnings.at(-1)!, /984 more rule ingress\(es\) are shadowed/);
      const links = await listAllLinks(c.links);
      sizes.ListLinks = ListLinksResponse.encode({ links, nextPageToken: '' }).finish().length;
      assert.equal(links.length, 1);
      const run = await runPythonClient(
        d.unix,
        [
          { op: 'pages', method: 'xdpctl.v1.LinkService/ListLinks', request: {}, tally: { links: 'a' } },
          { op: 'pages', method: 'xdpctl.v1.RuleService/ListRules', request: {}, tally: { rules: 'name' } },
        ],
        { timeoutMs: 120_000 },
      );
      const [pyLinks, pyRules] = run.results;
      assert.ok(pyLinks.ok && pyRules.ok, JSON.stringify(run.results).slice(0, 2000));
      for (const p of pyRules.parts!) assert.ok(p.bytes < CLIENT_LIMIT, `a ListRules page of ${p.bytes} bytes`);
      assert.equal(Object.keys(pyRules.tally!.rules).length, RULES);
      const shadowed = await c.rules.getRule({ name: names[0] });
      assert.equal(shadowed.rule!.status!.state, RuleState.RULE_STATE_INACTIVE);
    } finally {
      await c.links.disconnect({ a: link.a, b: link.b });
    }
    t.diagnostic(`reply sizes (bytes): ${JSON.stringify(sizes)}`);
    for (const [k, n] of Object.entries(sizes)) assert.ok(n < CLIENT_LIMIT / 2, `${k}: ${n} bytes`);
  });
});
