/**
 * End to end: a real xdpctld process driven through the generated client,
 * with real packets in namespaces: both old demos, validation and error
 * details, optimistic concurrency, atomicity (maps read back), counter
 * streaming, consistent hashing, health.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { ClientError, Metadata, Status } from 'nice-grpc';
import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { decodeStatusDetails } from '../../src/server/services/status.js';
import { BadRequest, ErrorInfo } from '../../src/gen/google/rpc/error_details.js';
import { CounterKind } from '../../src/gen/xdpctl/v1/counters.js';
import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { Protocol, RuleState, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, sleep } from '../helpers/env.js';
import { Lab, NOWHERE } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';
const PORT = 7999;

/** Call and capture the gRPC error with its trailer. */
async function fails(fn: (md: { onTrailer: (m: Metadata) => void }) => Promise<unknown>) {
  let trailer: Metadata | undefined;
  try {
    await fn({ onTrailer: (m) => (trailer = m) });
  } catch (e) {
    assert.ok(e instanceof ClientError, `not a ClientError: ${e}`);
    return { code: e.code, message: e.details, status: decodeStatusDetails(trailer) };
  }
  assert.fail('the call succeeded');
}

function badFields(status: ReturnType<typeof decodeStatusDetails>): string[] {
  const d = status?.details.find((x) => x.typeUrl.endsWith('google.rpc.BadRequest'));
  return d ? BadRequest.decode(d.value).fieldViolations.map((v) => v.field) : [];
}

describe('xdpctld end to end', kernelOnly(), () => {
  const lab = new Lab();
  const { topo, listeners } = lab;
  let d: DaemonProcess;
  let c: Clients;
  let vm: Host, b1: Host, b2: Host, b3: Host, h1: Host, h2: Host, h3: Host;

  before(async () => {
    ({ vm, b1, b2, b3, h1, h2, h3 } = lab.addHosts({
      vm: '198.18.1.1/24',
      b1: '198.18.2.1/24',
      b2: '198.18.3.1/24',
      b3: '198.18.4.1/24',
      h1: '198.18.0.1/24',
      h2: '198.18.0.2/24',
      h3: '198.18.0.3/24',
    }));
    ({ d, c } = await lab.start([]));
  });
  after(() => lab.destroy()); // the pins and state dir also when the daemon never started

  const listen = async (h: Host) => {
    const l = await UdpListener.start(h.netns, h.ip!, PORT);
    listeners.push(l);
    return l;
  };
  const backend = (h: Host, extra: Partial<{ mac: string; weight: number }> = {}) => ({
    ip: h.ip!,
    mac: h.mac,
    interface: h.hostIf,
    ...extra,
  });
  const rule = (name: string, backends: ReturnType<typeof backend>[], over: Partial<Rule> = {}): Rule => ({
    name,
    match: { protocol: Protocol.PROTOCOL_UDP, port: PORT, destination: '', sourcePrefixes: [] },
    ingressInterfaces: [vm.hostIf],
    backends,
    udpChecksum: 0,
    labels: {},
    generation: 0n,
    ...over,
  });

  it('reports SERVING through gRPC health and its status', async () => {
    const h = await c.health.check({ service: '' });
    assert.equal(h.status, HealthCheckResponse_ServingStatus.SERVING);
    const s = await c.daemon.getStatus({});
    assert.equal(s.serving, true);
    assert.ok(s.datapath!.programId > 0);
    assert.deepEqual(s.datapath!.warnings, [], 'everything observed (the tracepoint programs are attached)');
    // The Unix socket serves the same API.
    const u = d.clients(d.unix);
    assert.equal((await u.daemon.getStatus({})).datapath!.programId, s.datapath!.programId);
  });

  it('UDP demo: a rule redirects port 7999 into the container; counters match what was sent', async () => {
    // MAC omitted and no neighbour entry: the rule says so.
    const created = await c.rules.createRule({ rule: rule('web', [backend(b1, { mac: '' })]) });
    assert.equal(created.rule!.status!.state, RuleState.RULE_STATE_INACTIVE);
    assert.match(created.rule!.status!.backendStatus[0].message, /no neighbour entry for 198\.18\.2\.1/);
    assert.equal(created.rule!.generation, 1n);

    // Once the neighbour is known, an update resolves it. As the kernel learns it (REACHABLE); an entry set
    // by hand (PERMANENT) is confirmed the same way, by an ARP probe of ours (neighbour-handset.test.ts).
    sh('ip', ['neigh', 'replace', b1.ip!, 'lladdr', b1.mac, 'dev', b1.hostIf, 'nud', 'reachable']);
    const updated = await c.rules.updateRule({
      rule: rule('web', [backend(b1, { mac: '' })], { labels: { owner: 'e2e' } }),
      expectedGeneration: 1n,
    });
    assert.equal(updated.rule!.backends[0].mac, '', 'the MAC as specified (empty)');
    assert.equal(updated.rule!.status!.backendStatus[0].mac, b1.mac, 'MAC from the neighbour table');
    assert.equal(updated.rule!.generation, 2n);
    // Written by a tool here (ip neigh replace), not answered by the host yet: not confirmed, so DEGRADED with
    // BackendsReceiving Unknown (neighbour-unconfirmed.test.ts) until the reconciler's probe is answered.
    assert.equal(updated.rule!.status!.state, RuleState.RULE_STATE_DEGRADED, updated.rule!.status!.message);
    assert.match(updated.rule!.status!.backendStatus[0].message, /not confirmed yet/);
    assert.equal(
      updated.rule!.status!.conditions.find((x) => x.type === 'BackendsReceiving')!.status,
      ConditionStatus.CONDITION_STATUS_UNKNOWN,
    );
    for (let t0 = Date.now(); Date.now() - t0 < 5000; await sleep(100)) {
      if ((await c.rules.getRule({ name: 'web' })).rule!.status!.state === RuleState.RULE_STATE_ACTIVE) break;
    }
    const answered = (await c.rules.getRule({ name: 'web' })).rule!.status!;
    assert.equal(answered.state, RuleState.RULE_STATE_ACTIVE, `once the host answered our probe: ${answered.message}`);
    assert.equal(answered.backendStatus[0].message, 'MAC resolved from the neighbour table');

    const l = await listen(b1);
    const { sent } = await sendUdp(vm.netns, NOWHERE, PORT, 300).done;
    await sleep(100);
    const got = await l.stop();
    assert.equal(got.bad, 0);
    assert.equal(got.unique, sent);
    const { counters } = await c.counters.getCounters({ filter: { kinds: [], rules: ['web'], interfaces: [] } });
    assert.equal(counters!.rules[0].redirectedPackets, BigInt(sent));
    assert.equal(counters!.backends[0].packets, BigInt(sent));
    assert.equal(counters!.backends[0].ip, b1.ip);
  });

  it('rejects a stale update with ABORTED and GENERATION_MISMATCH', async () => {
    const f = await fails((o) => c.rules.updateRule({ rule: rule('web', [backend(b2)]), expectedGeneration: 1n }, o));
    assert.equal(f.code, Status.ABORTED);
    assert.match(f.message, /generation 2, not 1/);
    const info = f.status!.details.find((x) => x.typeUrl.endsWith('ErrorInfo'))!;
    assert.equal(ErrorInfo.decode(info.value).reason, 'GENERATION_MISMATCH');
    assert.equal((await c.rules.getRule({ name: 'web' })).rule!.backends[0].ip, b1.ip, 'unchanged');
  });

  it('validates every field and leaves the maps exactly as they were', async () => {
    const before = d.dumpMaps();
    const bad = rule('Bad_Name', [{ ip: '300.1.1.1', mac: '02:42:ac:11:00', interface: b1.hostIf, weight: 5000 }], {
      match: { protocol: 0, port: 0, destination: 'nope', sourcePrefixes: ['10.0.0.0/33', '10.1.2.3/8'] },
      ingressInterfaces: [],
    });
    const f = await fails((o) => c.rules.createRule({ rule: bad }, o));
    assert.equal(f.code, Status.INVALID_ARGUMENT);
    assert.deepEqual(badFields(f.status).sort(), [
      'rule.backends[0].ip',
      'rule.backends[0].mac',
      'rule.backends[0].weight',
      'rule.ingress_interfaces',
      'rule.match.destination',
      'rule.match.port',
      'rule.match.source_prefixes[0]',
      'rule.match.source_prefixes[1]',
      'rule.name',
    ]);
    // Port 65536, an unknown enum value.
    const g = await fails((o) =>
      c.rules.createRule(
        {
          rule: rule('p', [backend(b1)], {
            match: { protocol: 7 as Protocol, port: 65536, destination: '', sourcePrefixes: [] },
          }),
        },
        o,
      ),
    );
    assert.deepEqual(badFields(g.status).sort(), ['rule.match.port', 'rule.match.protocol']);
    // Unknown interface: NOT_FOUND naming the field.
    const u = await fails((o) =>
      c.rules.createRule(
        {
          rule: rule('ghost', [{ ...backend(b1), interface: 'nosuchif0' }], {
            match: { protocol: 1, port: 7000, destination: '', sourcePrefixes: [] },
          }),
        },
        o,
      ),
    );
    assert.equal(u.code, Status.NOT_FOUND);
    assert.match(u.message, /rule\.backends\[0\]\.interface: interface "nosuchif0" does not exist/);
    // Already exists; conflicting match with another rule.
    assert.equal(
      (await fails((o) => c.rules.createRule({ rule: rule('web', [backend(b1)]) }, o))).code,
      Status.ALREADY_EXISTS,
    );
    const conflict = await fails((o) => c.rules.createRule({ rule: rule('web2', [backend(b2)]) }, o));
    assert.equal(conflict.code, Status.FAILED_PRECONDITION);
    assert.match(conflict.message, /both match UDP port 7999/);
    // Table full: 17 rules where the daemon holds 16.
    const many = Array.from({ length: 17 }, (_, i) =>
      rule(`r${i}`, [backend(b1)], { match: { protocol: 1, port: 9000 + i, destination: '', sourcePrefixes: [] } }),
    );
    assert.equal(
      (await fails((o) => c.rules.applyRules({ rules: many, validateOnly: false }, o))).code,
      Status.RESOURCE_EXHAUSTED,
    );
    // Links: no second interface, unknown interface. (An interface linked
    // to itself is refused too: interface-altname.test.ts.)
    const l = await fails((o) => c.links.connect({ link: { a: h1.hostIf, b: '', direction: 0 } }, o));
    assert.deepEqual(badFields(l.status), ['link.b']);
    assert.equal(
      (await fails((o) => c.links.connect({ link: { a: h1.hostIf, b: 'nosuchif0', direction: 0 } }, o))).code,
      Status.NOT_FOUND,
    );

    assert.deepEqual(d.dumpMaps(), before, 'no rejected request changed a map');
    assert.deepEqual(
      (await c.rules.listRules({ pageSize: 0, pageToken: '' })).rules.map((r) => r.name),
      ['web'],
    );
  });

  it('ApplyRules: dry run reports, the real run replaces the set atomically', async () => {
    const next = [
      rule('web', [backend(b2)]),
      rule('dns', [backend(b3)], { match: { protocol: 1, port: 5353, destination: '', sourcePrefixes: [] } }),
    ];
    const before = d.dumpMaps();
    const dry = await c.rules.applyRules({ rules: next, validateOnly: true });
    assert.equal(dry.applied, false);
    assert.deepEqual(
      dry.changes.map((x) => [x.name, x.action]),
      [
        ['dns', 1],
        ['web', 2],
      ],
    );
    assert.deepEqual(d.dumpMaps(), before, 'a dry run writes nothing');
    const real = await c.rules.applyRules({ rules: next, validateOnly: false });
    assert.equal(real.applied, true);
    assert.deepEqual(
      real.rules.map((r) => r.name),
      ['dns', 'web'],
    );
    const l = await listen(b2);
    const { sent } = await sendUdp(vm.netns, NOWHERE, PORT, 100).done;
    await sleep(100);
    assert.equal((await l.stop()).unique, sent, 'web now goes to b2');
    // Back to web only (dns deleted).
    const back = await c.rules.applyRules({ rules: [rule('web', [backend(b1)])], validateOnly: false });
    assert.deepEqual(
      back.changes.map((x) => [x.name, x.action]),
      [
        ['dns', 3],
        ['web', 2],
      ],
    );
  });

  it('a failed change is undone: maps and attachments as before', async () => {
    // b3's peer has GRO on now (fixed earlier); a veth whose peer lacks NAPI
    // cannot take native redirects, and this daemon must refuse.
    const x = topo.addHost('x', '198.18.5.1/24');
    const before = d.dumpMaps();
    const ifacesBefore = (await c.interfaces.listInterfaces({})).interfaces.map((i) => i.name);
    const stopped = await d.stop();
    assert.equal(stopped, 0);
    ({ d, c } = await lab.start(['--no-fix-veth-peers']));
    // (the restarted daemon started empty: the datapath state is re-applied first)
    await c.rules.applyRules({ rules: [rule('web', [backend(b1)])], validateOnly: false });
    const ref = d.dumpMaps();
    const f = await fails((o) =>
      c.rules.createRule({ rule: rule('newrule', [backend(x)], { ingressInterfaces: [h3.hostIf] }) }, o),
    );
    assert.equal(f.code, Status.FAILED_PRECONDITION);
    assert.match(f.message, /would be dropped: its peer eth0 in netns .* has neither an XDP program nor GRO/);
    assert.deepEqual(d.dumpMaps(), ref, 'maps unchanged after the undo');
    assert.equal(JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', h3.hostIf]))[0].xdp, undefined, 'attach undone');
    void before;
    void ifacesBefore;
    // Back to a daemon that satisfies the precondition itself.
    assert.equal(await d.stop(), 0);
    ({ d, c } = await lab.start([]));
    await c.rules.applyRules({ rules: [rule('web', [backend(b1)])], validateOnly: false });
  });

  it('streams counters that rise while traffic flows', async () => {
    const ac = new AbortController();
    const seen: number[] = [];
    let lastPps = 0;
    const watching = (async () => {
      for await (const m of c.counters.watchCounters(
        {
          filter: { kinds: [CounterKind.COUNTER_KIND_RULES], rules: ['web'], interfaces: [] },
          interval: { seconds: 0n, nanos: 200e6 },
        },
        { signal: ac.signal },
      )) {
        const r = m.counters!.rules[0];
        seen.push(Number(r.redirectedPackets));
        if (r.redirectedRates?.pps) lastPps = Math.max(lastPps, r.redirectedRates.pps);
      }
    })().catch((e) => {
      if (!ac.signal.aborted) throw e;
    });
    await sleep(300);
    const l = await listen(b1);
    const { sent } = await sendUdp(vm.netns, NOWHERE, PORT, 400, { perTick: 10, tickMs: 10 }).done;
    await sleep(500);
    ac.abort();
    await watching;
    await l.stop();
    assert.ok(seen.length >= 4, `${seen.length} messages`);
    assert.ok(seen.at(-1)! - seen[0] === sent, `rose by ${seen.at(-1)! - seen[0]}, sent ${sent}`);
    assert.ok(new Set(seen).size >= 3, 'several distinct values while traffic flowed');
    assert.ok(lastPps > 0, 'rates derived from deltas');
    // A bad interval is refused.
    const f = await fails(async (o) => {
      for await (const _ of c.counters.watchCounters({ interval: { seconds: 0n, nanos: 10e6 } }, o)) break;
    });
    assert.equal(f.code, Status.INVALID_ARGUMENT);
  });

  it('consistent hashing: removing a backend moves only its flows, adding one moves flows only to it; weight 0 drains', async () => {
    const flows = 48;
    const run = async (backends: ReturnType<typeof backend>[], sportBase: number) => {
      const gen = (await c.rules.getRule({ name: 'web' })).rule!.generation;
      await c.rules.updateRule({ rule: rule('web', backends), expectedGeneration: gen });
      const ls = await Promise.all([b1, b2, b3].map(listen));
      const { sent } = await sendUdp(vm.netns, NOWHERE, PORT, flows * 3, { flows, sportBase }).done;
      await sleep(100);
      const got = await Promise.all(ls.map((x) => x.stop()));
      assert.equal(
        got.reduce((n, g) => n + g.unique, 0),
        sent,
      );
      const where = new Map<string, number>();
      got.forEach((g, i) => Object.keys(g.bySport).forEach((p) => where.set(p, i)));
      return where;
    };
    const all = await run([backend(b1), backend(b2), backend(b3)], 42000);
    assert.equal(new Set(all.values()).size, 3, 'three backends in use');
    const without2 = await run([backend(b1), backend(b3)], 42000);
    let moved = 0;
    for (const [sport, be] of all) {
      if (be === 1) moved++;
      else assert.equal(without2.get(sport), be, `flow ${sport} moved from backend ${be}`);
    }
    assert.ok(moved > 0);
    // Adding a backend back moves flows only onto it (the table is updated
    // from the current one: shares within one slot, nothing else reshuffled).
    const back = await run([backend(b1), backend(b2), backend(b3)], 42000);
    let taken = 0;
    for (const [sport, be] of without2) {
      if (back.get(sport) !== be) {
        assert.equal(back.get(sport), 1, `flow ${sport} moved from backend ${be} to another old backend`);
        taken++;
      }
    }
    assert.ok(taken > 0, 'the returning backend takes flows');
    const drained = await run([backend(b1), backend(b2), backend(b3, { weight: 0 })], 42000);
    for (const [sport, be] of back) {
      assert.notEqual(drained.get(sport), 2, 'no flow on the drained backend');
      if (be !== 2) assert.equal(drained.get(sport), be, `flow ${sport} moved though its backend stayed`);
    }
  });

  it('cross-connect demo through LinkService: connect, swap with ApplyLinks, counters', async () => {
    assert.equal(topo.ping('h1', h2.ip!, 1), false);
    const r = await c.links.connect({
      link: { a: h1.hostIf, b: h2.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH },
    });
    assert.deepEqual([r.link!.status!.aToBActive, r.link!.status!.bToAActive], [true, true]);
    assert.equal(topo.ping('h1', h2.ip!), true);
    const dry = await c.links.applyLinks({ links: [{ a: h1.hostIf, b: h3.hostIf, direction: 0 }], validateOnly: true });
    assert.deepEqual(dry.changes.map((x) => x.action).sort(), [1, 3]);
    await c.links.applyLinks({ links: [{ a: h1.hostIf, b: h3.hostIf, direction: 0 }], validateOnly: false });
    assert.equal(topo.ping('h1', h3.ip!), true, 'h1 reaches h3 after the swap');
    assert.equal(topo.ping('h1', h2.ip!, 1), false, 'and no longer h2');
    const { counters } = await c.counters.getCounters({
      filter: { kinds: [CounterKind.COUNTER_KIND_LINKS], rules: [], interfaces: [] },
    });
    const fromH1 = counters!.links.find((x) => x.fromInterface === h1.hostIf)!;
    assert.equal(fromH1.toInterface, h3.hostIf);
    assert.ok(fromH1.packets >= 4, `h1 direction counted ${fromH1.packets}`);
    const ifs = (await c.interfaces.listInterfaces({})).interfaces;
    const i1 = ifs.find((i) => i.name === h1.hostIf)!;
    assert.equal(i1.effectiveMode, 2 /* NATIVE */);
    assert.ok(i1.programId > 0);
    await c.links.disconnect({ a: h1.hostIf, b: h3.hostIf });
    assert.deepEqual((await c.links.listLinks({})).links, []);
  });

  it('a MAC given in upper case (or with dashes) is stored and echoed in one canonical form', async () => {
    const upper = b1.mac.toUpperCase().replace(/:/g, '-');
    const created = await c.rules.createRule({
      rule: rule('macs', [{ ip: b1.ip!, mac: upper, interface: b1.hostIf }], {
        match: { protocol: Protocol.PROTOCOL_UDP, port: 7123, destination: '', sourcePrefixes: [] },
      }),
    });
    try {
      assert.equal(created.rule!.backends[0].mac, b1.mac.toLowerCase());
      assert.equal((await c.rules.getRule({ name: 'macs' })).rule!.backends[0].mac, b1.mac.toLowerCase());
      const listed = (await c.rules.listRules({})).rules.find((r) => r.name === 'macs')!;
      assert.equal(listed.backends[0].mac, b1.mac.toLowerCase());
      assert.equal(listed.status!.backendStatus[0].mac, b1.mac.toLowerCase());
      // The same MAC in another spelling is the same rule: nothing to update.
      const same = await c.rules.updateRule({
        rule: rule('macs', [{ ip: b1.ip!, mac: b1.mac.toUpperCase(), interface: b1.hostIf }], {
          match: { protocol: Protocol.PROTOCOL_UDP, port: 7123, destination: '', sourcePrefixes: [] },
        }),
      });
      assert.equal(same.rule!.generation, 1n, 'no new generation for a different spelling');
    } finally {
      await c.rules.deleteRule({ name: 'macs' });
    }
  });

  it('interfaces used only as a backend egress are listed by ListInterfaces and found by GetInterface', async () => {
    const egress = topo.addHost('e', '198.18.6.1/24');
    await c.rules.createRule({
      rule: rule('egress', [backend(egress)], {
        match: { protocol: Protocol.PROTOCOL_UDP, port: 7124, destination: '', sourcePrefixes: [] },
      }),
    });
    try {
      const listed = (await c.interfaces.listInterfaces({})).interfaces.find((i) => i.name === egress.hostIf);
      assert.ok(listed, `${egress.hostIf} in ListInterfaces`);
      assert.deepEqual(listed.usedBy, ['rule/egress/egress']);
      assert.equal(listed.present, true);
      assert.equal(listed.ifindex, JSON.parse(sh('ip', ['-j', 'link', 'show', egress.hostIf]))[0].ifindex);
      const got = (await c.interfaces.getInterface({ name: egress.hostIf })).interface!;
      assert.deepEqual(got, listed);
    } finally {
      await c.rules.deleteRule({ name: 'egress' });
    }
    const f = await fails((o) => c.interfaces.getInterface({ name: egress.hostIf }, o));
    assert.equal(f.code, Status.NOT_FOUND, 'no longer named by anything');
  });

  it("a link that shadows a rule on its interface says so in LinkStatus.warnings, and the rule's status too", async () => {
    await c.rules.createRule({
      rule: rule('shadowed', [backend(b1)], {
        match: { protocol: Protocol.PROTOCOL_UDP, port: 7125, destination: '', sourcePrefixes: [] },
        ingressInterfaces: [h1.hostIf],
      }),
    });
    try {
      assert.deepEqual((await c.rules.getRule({ name: 'shadowed' })).rule!.status!.warnings, []);
      await c.links.connect({ link: { a: h2.hostIf, b: h1.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH } });
      const warning = new RegExp(`^rule shadowed on ${h1.hostIf} is shadowed by link ${h2.hostIf}:${h1.hostIf}`);
      const link = (await c.links.listLinks({})).links.find((l) => l.a === h2.hostIf)!;
      assert.equal(link.status!.bToAActive, true);
      assert.equal(link.status!.warnings.length, 1, JSON.stringify(link.status));
      assert.match(link.status!.warnings[0], warning);
      const shadowedStatus = (await c.rules.getRule({ name: 'shadowed' })).rule!.status!;
      const ruleWarnings = shadowedStatus.warnings;
      assert.equal(ruleWarnings.length, 1, JSON.stringify(ruleWarnings));
      assert.match(ruleWarnings[0], warning);
      // Its only ingress is cross-connected before rules are matched: it forwards nothing.
      assert.equal(shadowedStatus.state, RuleState.RULE_STATE_INACTIVE, shadowedStatus.message);
      assert.match(shadowedStatus.message, /cross-connected by a link/);
      const ready = shadowedStatus.conditions.find((x) => x.type === 'Ready')!;
      assert.equal(ready.status, ConditionStatus.CONDITION_STATUS_FALSE);
      const listed = (await c.rules.listRules({})).rules.find((r) => r.name === 'shadowed')!;
      assert.deepEqual(listed.status!.warnings, ruleWarnings);
      await c.links.disconnect({ a: h2.hostIf, b: h1.hostIf });
      assert.deepEqual((await c.rules.getRule({ name: 'shadowed' })).rule!.status!.warnings, []);
      assert.equal((await c.rules.getRule({ name: 'shadowed' })).rule!.status!.state, RuleState.RULE_STATE_ACTIVE);
    } finally {
      await c.links.disconnect({ a: h2.hostIf, b: h1.hostIf }).catch(() => undefined);
      await c.rules.deleteRule({ name: 'shadowed' });
    }
  });

  it('ApplyLinks reports its changes in ascending order of (a, b) (a ring of one-way links)', async () => {
    const [x, y, z] = [h1.hostIf, h2.hostIf, h3.hostIf].sort();
    const res = await c.links.applyLinks({
      links: [
        { a: z, b: x, direction: LinkDirection.LINK_DIRECTION_A_TO_B },
        { a: x, b: y, direction: LinkDirection.LINK_DIRECTION_A_TO_B },
        { a: y, b: z, direction: LinkDirection.LINK_DIRECTION_A_TO_B },
      ],
      validateOnly: true,
    });
    assert.deepEqual(
      res.changes.map((ch) => [ch.a, ch.b]),
      [
        [x, y],
        [y, z],
        [z, x],
      ],
    );
  });

  it('goes NOT_SERVING while shutting down', async () => {
    const statuses: number[] = [];
    const watch = (async () => {
      for await (const m of c.health.watch({ service: '' })) statuses.push(m.status);
    })().catch(() => undefined);
    await sleep(200);
    assert.equal(await d.stop(), 0);
    await watch;
    assert.deepEqual(statuses.slice(0, 2), [
      HealthCheckResponse_ServingStatus.SERVING,
      HealthCheckResponse_ServingStatus.NOT_SERVING,
    ]);
  });
});
