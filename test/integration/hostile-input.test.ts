/**
 * Hostile input against a real daemon on the real kernel (in-process
 * Daemon.start, generic XDP on veths of this run): over 10 000 generated
 * requests mixing valid and broken fields, malformed and oversized protobuf
 * bytes, and generated config files applied through Controller.applyConfig.
 *
 * For every request the test knows the outcome: the generator knows which
 * fields it broke (INVALID_ARGUMENT must name exactly those), and a model of
 * the desired state gives NOT_FOUND / ALREADY_EXISTS / ABORTED /
 * FAILED_PRECONDITION / OK. A rejected request must not write to the kernel
 * at all (every libbpf map write and XDP attach is counted), must leave the
 * small maps byte-identical (hashed after every request) and all maps
 * byte-identical (a full snapshot closes a window of rejected requests
 * whenever the next request is expected to change something, or after 150).
 * An accepted one must match the model, through the List RPCs and the maps.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, it, type TestContext } from 'node:test';

import { Client as RawClient, credentials, Metadata as GrpcMetadata } from '@grpc/grpc-js';
import fc from 'fast-check';
import { stringify } from 'yaml';
import { ClientError, createChannel, createClient, Status, type Channel, type Metadata } from 'nice-grpc';

import { CoreError } from '../../src/server/core/errors.js';
import { capacityForRules, Daemon, DEFAULTS } from '../../src/server/daemon.js';
import { parseConfig } from '../../src/shared/config-file.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { lib } from '../../src/server/dataplane/libbpf.js';
import { decodeStatusDetails } from '../../src/server/services/status.js';
import { BadRequest } from '../../src/gen/google/rpc/error_details.js';
import { CounterServiceDefinition, type CounterKind } from '../../src/gen/xdpctl/v1/counters.js';
import {
  ApplyLinksRequest,
  ConnectRequest,
  DisconnectRequest,
  LinkDirection,
  LinkServiceDefinition,
  type Link,
} from '../../src/gen/xdpctl/v1/link.js';
import {
  ApplyRulesRequest,
  CreateRuleRequest,
  DeleteRuleRequest,
  GetRuleRequest,
  RuleServiceDefinition,
  UdpChecksumMode,
  UpdateRuleRequest,
  type Rule,
} from '../../src/gen/xdpctl/v1/rule.js';
import {
  appendedField,
  BAD_ENUMS,
  BAD_NAMES,
  breakLink,
  breakRule,
  INTERVALS,
  validLink,
  validRule,
  type Broken,
  type Env,
} from '../helpers/arbitraries.js';
import { kernelOnly, runId } from '../helpers/env.js';
import { changedMaps, mapSnapshotter, type MapSnapshot } from '../helpers/map-snapshot.js';
import { Topology } from '../helpers/topology.js';

// ---- the model -------------------------------------------------------------------------------

type Dir = 'both' | 'a-to-b';
interface ModelLink {
  a: string;
  b: string;
  direction: Dir;
}
const linkKey = (l: { a: string; b: string }) => (l.a < l.b ? `${l.a}|${l.b}` : `${l.b}|${l.a}`);
const dirOf = (d: LinkDirection): Dir => (d === LinkDirection.LINK_DIRECTION_A_TO_B ? 'a-to-b' : 'both');

/** A rule as the daemon stores it (defaults applied), in the order it compares specs. */
function norm(r: Rule) {
  return {
    name: r.name,
    port: r.match?.port ?? 0,
    destination: r.match?.destination ?? '',
    sourcePrefixes: [...(r.match?.sourcePrefixes ?? [])],
    ingressInterfaces: [...r.ingressInterfaces],
    backends: r.backends.map((b) => ({ ip: b.ip, mac: b.mac, interface: b.interface, weight: b.weight ?? 1 })),
    udpChecksum: r.udpChecksum === UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO ? 'zero' : 'update',
    labels: { ...r.labels },
  };
}
type NormRule = ReturnType<typeof norm>;
const same = (a: NormRule, b: NormRule) => JSON.stringify(a) === JSON.stringify(b);

class Model {
  rules = new Map<string, { rule: NormRule; generation: number }>();
  links = new Map<string, ModelLink>();

  /** Two rules claiming one (ingress, port, destination). */
  static conflicts(rules: NormRule[]): boolean {
    const claims = new Map<string, string>();
    for (const r of rules) {
      for (const i of r.ingressInterfaces) {
        const k = `${i}|${r.port}|${r.destination}`;
        if (claims.has(k) && claims.get(k) !== r.name) return true;
        claims.set(k, r.name);
      }
    }
    return false;
  }

  /**
   * The rules of one request that claim an (ingress, port, destination) an earlier rule of it claims: each is
   * INVALID_ARGUMENT on rules[i].match (the request's own mistake; a clash with a stored rule is a conflict).
   */
  static clashes(rules: NormRule[]): string[] {
    const claims = new Set<string>();
    const out: string[] = [];
    for (const [n, r] of rules.entries()) {
      const keys = r.ingressInterfaces.map((i) => `${i}|${r.port}|${r.destination}`);
      if (keys.some((k) => claims.has(k))) out.push(`rules[${n}].match`);
      for (const k of keys) claims.add(k);
    }
    return out;
  }

  /** One interface forwarding to two. */
  static linkConflicts(links: ModelLink[]): boolean {
    const to = new Map<string, string>();
    for (const l of links) {
      for (const [f, t] of l.direction === 'both'
        ? [
            [l.a, l.b],
            [l.b, l.a],
          ]
        : [[l.a, l.b]]) {
        if (to.has(f) && to.get(f) !== t) return true;
        to.set(f, t);
      }
    }
    return false;
  }

  /** Interface -> the interface its frames are forwarded to, for every direction of a link set. */
  static forwards(links: Iterable<ModelLink>): Map<string, string> {
    const to = new Map<string, string>();
    for (const l of links) {
      to.set(l.a, l.b);
      if (l.direction === 'both') to.set(l.b, l.a);
    }
    return to;
  }

  /**
   * A backend cut off by a link (FAILED_PRECONDITION, backend-behind-link): one of `rules`' backends on an
   * interface that `links` forward from, where that direction is not one already in force (`inForce`).
   */
  static cutOff(rules: Iterable<NormRule>, links: Iterable<ModelLink>, inForce: Iterable<ModelLink> = []): boolean {
    const to = Model.forwards(links);
    const was = Model.forwards(inForce);
    for (const r of rules) {
      for (const b of r.backends) if (to.has(b.interface) && was.get(b.interface) !== to.get(b.interface)) return true;
    }
    return false;
  }

  /** The forwarding directions of a link set, as one comparable string. */
  static directions(links: ModelLink[]): string {
    const d = links.flatMap((l) => (l.direction === 'both' ? [`${l.a}>${l.b}`, `${l.b}>${l.a}`] : [`${l.a}>${l.b}`]));
    return d.sort().join(',');
  }

  get ruleEntries() {
    return [...this.rules.values()].reduce((n, r) => n + r.rule.ingressInterfaces.length, 0);
  }
  get prefixEntries() {
    return [...this.rules.values()].reduce((n, r) => n + r.rule.sourcePrefixes.length, 0);
  }
  get linkEntries() {
    return [...this.links.values()].reduce((n, l) => n + (l.direction === 'both' ? 2 : 1), 0);
  }
}

/** What a call must end with. */
interface Expect {
  code: Status;
  /** INVALID_ARGUMENT: exactly these fields in BadRequest. */
  fields?: string[];
  /** NOT_FOUND: the message starts with this field. */
  field?: string;
  /** Applied to the model when the call succeeds; returns whether the desired state changed. */
  apply?: (res: unknown) => boolean;
}

/** fc.assert, failing with the assertion that failed first (the reporter does not show causes). */
async function assertProperty<T>(p: fc.IAsyncProperty<T>, params: fc.Parameters<T>): Promise<void> {
  try {
    await fc.assert(p, params);
  } catch (e) {
    const cause = (e as { cause?: Error }).cause;
    throw new Error(`${cause?.message ?? ''}\n${(e as Error).message.slice(0, 4000)}`, { cause });
  }
}

/** The daemon's receive limit (grpc-js's default and xdpctld's --max-message-bytes default). */
const MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

/** The encoded size of a request, computed only when it may be near the limit. */
function sizeOf(encode: () => Uint8Array, req: unknown): (() => number) | undefined {
  const text = JSON.stringify(req, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
  return text.length > MAX_MESSAGE_BYTES / 2 ? () => encode().length : undefined;
}

// ---- the test --------------------------------------------------------------------------------

describe('hostile input against a real daemon', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  let daemon: Daemon;
  let channel: Channel;
  let rules: ReturnType<typeof createClient<typeof RuleServiceDefinition>>;
  let links: ReturnType<typeof createClient<typeof LinkServiceDefinition>>;
  let counters: ReturnType<typeof createClient<typeof CounterServiceDefinition>>;
  let env: Env;
  const model = new Model();
  const stats = {
    requests: 0,
    byCode: {} as Record<string, number>,
    byKind: {} as Record<string, number>,
    ms: {} as Record<string, number>,
  };
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown) => unhandled.push(e);

  // Kernel writes made by this process (the daemon is in it): map updates/deletes and XDP attach/detach.
  let writes = 0;
  const WRITERS = [
    'bpf_map_update_elem',
    'bpf_map_delete_elem',
    'bpf_map_update_batch',
    'bpf_map_delete_batch',
    'bpf_xdp_attach',
    'bpf_xdp_detach',
  ] as const;
  const originals = new Map<string, unknown>();

  let full: () => MapSnapshot;
  let small: () => MapSnapshot;
  let smallRef: MapSnapshot;
  /** Full snapshot opening the current window of rejected requests (undefined: no window). */
  let windowRef: MapSnapshot | undefined;
  let windowLen = 0;
  let fullChecks = 0;

  before(async () => {
    process.on('unhandledRejection', onUnhandled);
    const roles = ['i0', 'i1', 'i2', 'i3', 'i4', 'i5'];
    for (const [n, r] of roles.entries()) {
      const h = topo.addHost(r, `198.18.${n}.1/24`);
      // Nothing may arrive on our side by itself (router solicitations would count in global_stats).
      topo.exec(r, 'sysctl', ['-qw', 'net.ipv6.conf.all.disable_ipv6=1']);
      void h;
    }
    env = {
      ifaces: roles.map((r) => topo.host(r).hostIf),
      missing: ['q0', 'q1', 'q2'].map((s) => `nx${id}${s}`),
      names: ['web', 'dns', 'r-1', 'r-2', 'game-7', 'x9'],
    };
    daemon = await Daemon.start({
      ...DEFAULTS,
      // The Unix socket: identity by SO_PEERCRED (loopback TCP looks the peer up in the socket table per call).
      listen: ['127.0.0.1:0', `unix:/tmp/xdpctl-test-${id}.sock`],
      pinRoot,
      mode: 'generic',
      fixVethPeers: false,
      cleanupOnExit: true,
      stateDir: undefined,
      capacity: capacityForRules(16),
      // No background reconciler: this test counts the kernel writes of each request, and a repair
      // (e.g. a neighbour its probe resolved) would count too. The reconciler has its own tests.
      resyncMs: 0,
    });
    channel = createChannel(`unix:///tmp/xdpctl-test-${id}.sock`);
    rules = createClient(RuleServiceDefinition, channel);
    links = createClient(LinkServiceDefinition, channel);
    counters = createClient(CounterServiceDefinition, channel);
    const maps = daemon.datapath.maps;
    full = mapSnapshotter(maps);
    // The maps small enough to hash after every request (the big arrays go in full snapshots).
    const { ifFlags: _f, rulePorts: _p, ruleRing: _r, ...rest } = maps;
    small = mapSnapshotter(rest as typeof maps);
    smallRef = small();
    for (const w of WRITERS) {
      const f = lib[w] as (...a: unknown[]) => unknown;
      originals.set(w, f);
      (lib as Record<string, unknown>)[w] = (...a: unknown[]) => {
        writes++;
        return f(...a);
      };
    }
  });

  after(async () => {
    for (const [w, f] of originals) (lib as Record<string, unknown>)[w] = f;
    process.off('unhandledRejection', onUnhandled);
    channel?.close();
    await daemon?.stop();
    topo.destroy();
    XdpDatapath.unpinAll(pinRoot);
    rmSync(pinRoot, { recursive: true, force: true });
  });

  /** Run one call, check its status against `want`, the kernel and the model. */
  async function check(
    kind: string,
    want: Expect,
    call: (o: { onTrailer: (m: Metadata) => void; signal: AbortSignal }) => Promise<unknown>,
    size?: () => number,
  ) {
    stats.requests++;
    if (size && size() > MAX_MESSAGE_BYTES) want = { code: Status.RESOURCE_EXHAUSTED };
    if (process.env.HP_PROGRESS && stats.requests % 250 === 0) {
      const ms = Object.fromEntries(Object.entries(stats.ms).map(([k, v]) => [k, Math.round(v / stats.byKind[k])]));
      process.stderr.write(`${stats.requests} ${JSON.stringify(stats.byCode)} ms/call ${JSON.stringify(ms)}\n`);
    }
    stats.byKind[kind] = (stats.byKind[kind] ?? 0) + 1;
    const mayChange = want.code === Status.OK && want.apply !== undefined;
    if (mayChange && windowRef) closeWindow();
    if (!mayChange && !windowRef && stats.requests % 40 === 0) {
      windowRef = full();
      windowLen = 0;
    }
    const t0 = performance.now();
    const w0 = writes;
    let trailer: Metadata | undefined;
    let res: unknown;
    let code = Status.OK;
    let message = '';
    try {
      // A call that never ends (trailers too big to arrive, a wedged connection) fails here as CANCELLED.
      res = await call({ onTrailer: (m) => (trailer = m), signal: AbortSignal.timeout(10_000) });
    } catch (e) {
      if (!(e instanceof ClientError)) throw e;
      code = e.code;
      message = e.details;
    }
    stats.byCode[Status[code]] = (stats.byCode[Status[code]] ?? 0) + 1;
    const ctx = `${kind}: got ${Status[code]} "${message.slice(0, 300)}", want ${Status[want.code]} ${want.fields ?? want.field ?? ''}`;
    assert.equal(code, want.code, ctx);
    assert.ok(message.length <= 1200, `${kind}: message bounded (${message.length} chars)`);
    if (code === Status.INVALID_ARGUMENT) {
      const d = decodeStatusDetails(trailer)?.details.find((x) => x.typeUrl.endsWith('google.rpc.BadRequest'));
      assert.ok(d, `${ctx}: BadRequest details`);
      const fields = [...new Set(BadRequest.decode(d.value).fieldViolations.map((v) => v.field))].sort();
      assert.deepEqual(fields, [...new Set(want.fields)].sort(), ctx);
    }
    if (code === Status.NOT_FOUND && want.field) assert.ok(message.startsWith(`${want.field}: `), ctx);
    stats.ms[kind] = (stats.ms[kind] ?? 0) + performance.now() - t0;
    const changed = code === Status.OK && want.apply ? want.apply(res) : false;
    if (!changed) {
      assert.equal(writes, w0, `${ctx}: no kernel write`);
      const now = small();
      assert.deepEqual(changedMaps(smallRef, now), [], `${ctx}: maps unchanged`);
      if (windowRef && ++windowLen >= 150) closeWindow();
    } else {
      assert.ok(writes > w0, `${ctx}: the change reached the kernel`);
      smallRef = small();
      await checkModel(ctx);
    }
  }

  function closeWindow() {
    const now = full();
    fullChecks++;
    assert.deepEqual(changedMaps(windowRef!, now), [], `${windowLen} rejected requests left every map byte-identical`);
    windowRef = undefined;
  }

  async function checkModel(ctx: string) {
    const got = (await rules.listRules({ pageSize: 1000, pageToken: '' })).rules;
    assert.deepEqual(
      got.map((r) => ({ rule: norm(r), generation: Number(r.generation) })),
      [...model.rules.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([, r]) => r),
      `${ctx}: ListRules is the model`,
    );
    const gotLinks = (await links.listLinks({})).links.map((l) => ({ a: l.a, b: l.b, direction: dirOf(l.direction) }));
    assert.deepEqual(
      gotLinks.sort((x, y) => (linkKey(x) < linkKey(y) ? -1 : 1)),
      [...model.links.values()].sort((x, y) => (linkKey(x) < linkKey(y) ? -1 : 1)),
      `${ctx}: ListLinks is the model`,
    );
    const count = (m: string) => Number(smallRef[m].split(':')[0]);
    assert.equal(count('rule_match'), model.ruleEntries, `${ctx}: one match entry per rule ingress`);
    assert.equal(count('src_allow'), model.prefixEntries, `${ctx}: one source entry per prefix`);
    assert.equal(count('xc_links'), model.linkEntries, `${ctx}: one devmap entry per link direction`);
  }

  // ---- expectations from the model ----

  function expectRuleChange(r: Rule, broken: Broken, create: boolean, expectedGeneration = 0): Expect {
    if (broken.fields.length) return { code: Status.INVALID_ARGUMENT, fields: broken.fields };
    const n = norm(r);
    const cur = model.rules.get(n.name);
    if (create && cur) return { code: Status.ALREADY_EXISTS };
    if (!create && !cur) return { code: Status.NOT_FOUND };
    if (!create && expectedGeneration !== 0 && expectedGeneration !== cur!.generation) return { code: Status.ABORTED };
    if (!create && same(cur!.rule, n)) return { code: Status.OK, apply: () => false };
    const others = [...model.rules.values()].filter((x) => x.rule.name !== n.name).map((x) => x.rule);
    if (Model.conflicts([...others, n])) return { code: Status.FAILED_PRECONDITION };
    if (broken.unknown) return { code: Status.NOT_FOUND, field: broken.unknown };
    if (Model.cutOff([n], model.links.values())) return { code: Status.FAILED_PRECONDITION };
    return {
      code: Status.OK,
      apply: (res) => {
        const generation = (cur?.generation ?? 0) + 1;
        const got = (res as { rule: Rule }).rule;
        assert.deepEqual(norm(got), n, 'the response is the rule as asked');
        assert.equal(got.generation, BigInt(generation));
        model.rules.set(n.name, { rule: n, generation });
        return true;
      },
    };
  }

  const reqRule = (kind: 'create' | 'update') =>
    fc
      .tuple(validRule(envLazy()), breakRule(envLazy(), 'rule'), fc.nat(3), fc.boolean())
      .map(([r, brk, g, omit]) => ({ r, broken: brk(r), g, omit, kind }));

  // fast-check arbitraries are built once the topology exists.
  const envLazy = () => env;

  async function runRules(t: TestContext, runs: number) {
    await assertProperty(
      fc.asyncProperty(
        fc.oneof(
          { weight: 4, arbitrary: reqRule('create') },
          { weight: 3, arbitrary: reqRule('update') },
          {
            weight: 2,
            arbitrary: fc
              .tuple(fc.constantFrom(...env.names, ...BAD_NAMES.slice(0, 11)), fc.nat(3))
              .map(([name, g]) => ({
                kind: 'delete' as const,
                name: name as string,
                g,
              })),
          },
          {
            weight: 2,
            arbitrary: fc
              .tuple(
                fc.uniqueArray(fc.constantFrom(...env.names), { maxLength: 4 }),
                fc.boolean(),
                fc.nat(),
                fc.boolean(),
              )
              .chain(([names, validateOnly, pick, dupName]) =>
                fc.tuple(
                  fc.tuple(...names.map((n) => validRule(env, n))),
                  fc.constant(validateOnly),
                  fc.constant(pick),
                  fc.constant(dupName),
                  names.length
                    ? breakRule(env, `rules[${pick % names.length}]`)
                    : fc.constant((): Broken => ({ fields: [] })),
                ),
              )
              .map(([rs, validateOnly, pick, dupName, brk]) => ({
                kind: 'apply' as const,
                rs,
                validateOnly,
                pick,
                dupName,
                brk,
              })),
          },
        ),
        async (req) => {
          if (req.kind === 'create' || req.kind === 'update') {
            const { r, broken, g, omit } = req;
            if (req.kind === 'create') {
              if (omit && g === 0) {
                return check('CreateRule(no rule)', { code: Status.INVALID_ARGUMENT, fields: ['rule'] }, (o) =>
                  rules.createRule({}, o),
                );
              }
              return check(
                'CreateRule',
                expectRuleChange(r, broken, true),
                (o) => rules.createRule({ rule: r }, o),
                sizeOf(() => CreateRuleRequest.encode({ rule: r }).finish(), r),
              );
            }
            const cur = model.rules.get(r.name)?.generation ?? 1;
            const eg = [0, cur, cur + 1, Math.max(cur - 1, 1) === cur ? cur + 2 : cur - 1][g];
            return check(
              'UpdateRule',
              expectRuleChange(r, broken, false, eg),
              (o) => rules.updateRule({ rule: r, expectedGeneration: BigInt(eg) }, o),
              sizeOf(() => UpdateRuleRequest.encode({ rule: r, expectedGeneration: BigInt(eg) }).finish(), r),
            );
          }
          if (req.kind === 'delete') {
            const name = typeof req.name === 'string' ? req.name : '';
            const cur = model.rules.get(name);
            const eg = [0, cur?.generation ?? 1, (cur?.generation ?? 1) + 1, 0][req.g];
            const valid = env.names.includes(name);
            const want: Expect = !valid
              ? { code: Status.INVALID_ARGUMENT, fields: ['name'] }
              : !cur
                ? { code: Status.NOT_FOUND }
                : eg !== 0 && eg !== cur.generation
                  ? { code: Status.ABORTED }
                  : { code: Status.OK, apply: () => model.rules.delete(name) };
            return check('DeleteRule', want, (o) => rules.deleteRule({ name, expectedGeneration: BigInt(eg) }, o));
          }
          // ApplyRules: the whole set.
          const { rs, validateOnly, pick, dupName, brk } = req as Extract<typeof req, { kind: 'apply' }>;
          const broken: Broken = rs.length ? brk(rs[pick % rs.length]) : { fields: [] };
          if (dupName && rs.length >= 2 && !broken.fields.some((f) => f.endsWith('.name'))) {
            rs[rs.length - 1].name = rs[0].name;
            broken.fields.push(`rules[${rs.length - 1}].name`);
          }
          let want: Expect;
          const next = rs.map(norm);
          if (broken.fields.length) want = { code: Status.INVALID_ARGUMENT, fields: broken.fields };
          else if (Model.clashes(next).length) want = { code: Status.INVALID_ARGUMENT, fields: Model.clashes(next) };
          else if (broken.unknown) want = { code: Status.NOT_FOUND, field: broken.unknown };
          else if (Model.cutOff(next, model.links.values())) want = { code: Status.FAILED_PRECONDITION };
          else {
            want = {
              code: Status.OK,
              apply: () => {
                if (validateOnly) return false;
                const before = JSON.stringify([...model.rules.entries()].sort());
                const nextModel = new Map<string, { rule: NormRule; generation: number }>();
                for (const n of next) {
                  const cur = model.rules.get(n.name);
                  nextModel.set(n.name, {
                    rule: n,
                    generation: !cur ? 1 : same(cur.rule, n) ? cur.generation : cur.generation + 1,
                  });
                }
                model.rules = nextModel;
                return JSON.stringify([...model.rules.entries()].sort()) !== before;
              },
            };
          }
          return check(
            validateOnly ? 'ApplyRules(validate_only)' : 'ApplyRules',
            want,
            (o) => rules.applyRules({ rules: rs, validateOnly }, o),
            sizeOf(() => ApplyRulesRequest.encode({ rules: rs, validateOnly }).finish(), rs),
          );
        },
      ),
      { numRuns: runs, endOnFailure: true },
    );
    t.diagnostic(`rules: ${runs} requests`);
  }

  const rulesNow = () => [...model.rules.values()].map((x) => x.rule);

  async function runLinks(t: TestContext, runs: number) {
    await assertProperty(
      fc.asyncProperty(
        fc.oneof(
          {
            weight: 4,
            arbitrary: fc
              .tuple(
                validLink(env),
                breakLink(env, 'link', false),
                fc.nat(9).map((n) => n === 0),
              )
              .map(([l, brk, omit]) => ({
                kind: 'connect' as const,
                l,
                broken: brk(l),
                omit,
              })),
          },
          {
            weight: 2,
            arbitrary: fc
              .tuple(
                fc.constantFrom(...env.ifaces, ...env.missing, 'a/b', ''),
                fc.constantFrom(...env.ifaces, 'x'.repeat(1 << 20)),
              )
              .map(([a, b]) => ({ kind: 'disconnect' as const, a, b })),
          },
          {
            weight: 3,
            arbitrary: fc
              .tuple(
                fc.shuffledSubarray(env.ifaces, { maxLength: 6 }),
                fc.array(fc.nat(2), { minLength: 3, maxLength: 3 }),
                fc.boolean(),
                fc.nat(),
              )
              .chain(([ifs, dirs, validateOnly, pick]) => {
                const ls: Link[] = [];
                for (let i = 0; i + 1 < ifs.length; i += 2)
                  ls.push({ a: ifs[i], b: ifs[i + 1], direction: dirs[i / 2] });
                return fc.tuple(
                  fc.constant(ls),
                  fc.constant(validateOnly),
                  fc.constant(pick),
                  ls.length
                    ? breakLink(env, `links[${pick % ls.length}]`, true)
                    : fc.constant((): Broken => ({ fields: [] })),
                );
              })
              .map(([ls, validateOnly, pick, brk]) => ({ kind: 'apply' as const, ls, validateOnly, pick, brk })),
          },
        ),
        async (req) => {
          if (req.kind === 'connect') {
            const { l, broken, omit } = req;
            if (omit) {
              return check('Connect(no link)', { code: Status.INVALID_ARGUMENT, fields: ['link'] }, (o) =>
                links.connect({}, o),
              );
            }
            const m: ModelLink = { a: l.a, b: l.b, direction: dirOf(l.direction) };
            let want: Expect;
            // An unknown interface is NOT_FOUND naming link.a or link.b, whatever the other end's state.
            if (broken.fields.length) want = { code: Status.INVALID_ARGUMENT, fields: broken.fields };
            else if (broken.unknown) want = { code: Status.NOT_FOUND, field: broken.unknown };
            else if (model.links.has(linkKey(m))) want = { code: Status.ALREADY_EXISTS };
            else if (Model.linkConflicts([...model.links.values(), m])) want = { code: Status.FAILED_PRECONDITION };
            else if (Model.cutOff(rulesNow(), [m])) want = { code: Status.FAILED_PRECONDITION };
            else want = { code: Status.OK, apply: () => (model.links.set(linkKey(m), m), true) };
            return check('Connect', want, (o) => links.connect({ link: l }, o));
          }
          if (req.kind === 'disconnect') {
            const { a, b } = req;
            const fields = [
              ...(env.ifaces.includes(a) || env.missing.includes(a) ? [] : ['a']),
              ...(env.ifaces.includes(b) ? [] : ['b']),
            ];
            const k = linkKey({ a, b });
            const want: Expect = fields.length
              ? { code: Status.INVALID_ARGUMENT, fields }
              : !model.links.has(k)
                ? { code: Status.NOT_FOUND }
                : { code: Status.OK, apply: () => model.links.delete(k) };
            return check('Disconnect', want, (o) => links.disconnect({ a, b }, o));
          }
          const { ls, validateOnly, pick, brk } = req;
          const broken: Broken = ls.length ? brk(ls[pick % ls.length]) : { fields: [] };
          const next = ls.map((l) => ({ a: l.a, b: l.b, direction: dirOf(l.direction) }));
          const want: Expect = broken.fields.length
            ? { code: Status.INVALID_ARGUMENT, fields: broken.fields }
            : broken.unknown
              ? { code: Status.NOT_FOUND, field: broken.unknown }
              : Model.cutOff(rulesNow(), next, model.links.values())
                ? { code: Status.FAILED_PRECONDITION }
                : {
                    code: Status.OK,
                    apply: () => {
                      if (validateOnly) return false;
                      // The kernel changes when the forwarding directions do (b<->a for a<->b changes only names).
                      const before = Model.directions([...model.links.values()]);
                      model.links = new Map(next.map((l) => [linkKey(l), l]));
                      return Model.directions(next) !== before;
                    },
                  };
          return check(validateOnly ? 'ApplyLinks(validate_only)' : 'ApplyLinks', want, (o) =>
            links.applyLinks({ links: ls, validateOnly }, o),
          );
        },
      ),
      { numRuns: runs, endOnFailure: true },
    );
    t.diagnostic(`links: ${runs} requests`);
  }

  async function runCounters(t: TestContext, runs: number) {
    const kinds = fc.array(fc.oneof(fc.constantFrom(1, 2, 3, 4), fc.constantFrom(0, 5, ...BAD_ENUMS.slice(2))), {
      maxLength: 3,
    });
    await assertProperty(
      fc.asyncProperty(kinds, fc.nat(INTERVALS.length - 1), fc.boolean(), async (ks, iv, watch) => {
        const bad = ks.flatMap((k, i) => (k >= 1 && k <= 4 ? [] : [`filter.kinds[${i}]`]));
        const filter = { kinds: ks as CounterKind[], rules: [], interfaces: [] };
        if (!watch) {
          const want = bad.length ? { code: Status.INVALID_ARGUMENT, fields: bad } : { code: Status.OK };
          return check('GetCounters', want, (o) => counters.getCounters({ filter }, o));
        }
        const [interval, ok] = INTERVALS[iv];
        const fields = [...bad, ...(ok ? [] : ['interval'])];
        const want = fields.length ? { code: Status.INVALID_ARGUMENT, fields } : { code: Status.OK };
        return check('WatchCounters', want, async (o) => {
          const ac = new AbortController();
          try {
            const signal = AbortSignal.any([ac.signal, o.signal]);
            for await (const m of counters.watchCounters({ filter, interval }, { ...o, signal })) {
              assert.ok(m.counters?.time, 'a first snapshot');
              break;
            }
          } finally {
            ac.abort();
          }
        });
      }),
      { numRuns: runs, endOnFailure: true },
    );
    t.diagnostic(`counters: ${runs} requests`);
  }

  it('a match key moving between rules in one ApplyRules stays published (regression)', async () => {
    // Seen by the property test: "dns" takes the port "web" leaves; "web" was processed
    // second and removed the entry "dns" had just written, so "dns" was active but got no traffic.
    const [i0, i1] = env.ifaces;
    const r = (name: string, port: number): Rule => ({
      name,
      match: { protocol: 0, port, destination: '', sourcePrefixes: [] },
      ingressInterfaces: [i0],
      backends: [{ ip: '198.18.1.9', mac: '02:00:00:00:00:09', interface: i1 }],
      udpChecksum: 0,
      labels: {},
      generation: 0n,
    });
    await rules.createRule({ rule: r('web', 7100) });
    await rules.applyRules({ rules: [r('dns', 7100), r('web', 7101)], validateOnly: false });
    const ports = [...daemon.datapath.maps.ruleMatch.keys()].map((k) => k.dport).sort();
    assert.deepEqual(ports, [7100, 7101], 'both rules published');
    await rules.applyRules({ rules: [], validateOnly: false });
    assert.equal([...daemon.datapath.maps.ruleMatch.keys()].length, 0);
    smallRef = small();
  });

  it('malformed, truncated and oversized protobuf bytes: precise codes, still serving, maps unchanged', async (t) => {
    const raw = new RawClient(`unix:///tmp/xdpctl-test-${id}.sock`, credentials.createInsecure());
    t.after(() => raw.close());
    const identity = (b: Buffer) => b;
    const send = (path: string, bytes: Uint8Array) =>
      new Promise<{ code: Status; details: string }>((resolve) =>
        raw.makeUnaryRequest(
          path,
          identity,
          identity,
          Buffer.from(bytes),
          new GrpcMetadata(),
          { deadline: Date.now() + 10_000 },
          (err, _v) =>
            resolve(err ? { code: err.code as Status, details: err.details } : { code: Status.OK, details: '' }),
        ),
      );
    // Requests that are never accepted (unknown names and interfaces), to mutate into malformed bytes.
    const [i0] = env.ifaces;
    const rule: Rule = {
      name: 'nope-x',
      match: { protocol: 1, port: 7999, destination: '', sourcePrefixes: ['10.0.0.0/8'] },
      ingressInterfaces: [env.missing[0]],
      backends: [{ ip: '198.18.0.9', mac: '02:00:00:00:00:09', interface: i0, weight: 3 }],
      udpChecksum: 1,
      labels: { a: 'b' },
      generation: 0n,
    };
    const link = { a: env.missing[0], b: i0, direction: 1 };
    type Codec = { decode(b: Uint8Array): unknown };
    const methods: [string, Codec, Uint8Array, boolean][] = [
      ['/xdpctl.v1.RuleService/CreateRule', CreateRuleRequest, CreateRuleRequest.encode({ rule }).finish(), true],
      [
        '/xdpctl.v1.RuleService/UpdateRule',
        UpdateRuleRequest,
        UpdateRuleRequest.encode({ rule, expectedGeneration: 3n }).finish(),
        true,
      ],
      [
        '/xdpctl.v1.RuleService/DeleteRule',
        DeleteRuleRequest,
        DeleteRuleRequest.encode({ name: 'nope-x', expectedGeneration: 1n }).finish(),
        true,
      ],
      ['/xdpctl.v1.RuleService/GetRule', GetRuleRequest, GetRuleRequest.encode({ name: 'nope-x' }).finish(), false],
      [
        '/xdpctl.v1.RuleService/ApplyRules',
        ApplyRulesRequest,
        ApplyRulesRequest.encode({ rules: [rule, rule], validateOnly: false }).finish(),
        true,
      ],
      ['/xdpctl.v1.LinkService/Connect', ConnectRequest, ConnectRequest.encode({ link }).finish(), true],
      [
        '/xdpctl.v1.LinkService/Disconnect',
        DisconnectRequest,
        DisconnectRequest.encode({ a: env.missing[1], b: i0 }).finish(),
        true,
      ],
      [
        '/xdpctl.v1.LinkService/ApplyLinks',
        ApplyLinksRequest,
        ApplyLinksRequest.encode({ links: [link], validateOnly: false }).finish(),
        true,
      ],
    ];
    const mutate = fc.oneof(
      // random bytes
      fc.uint8Array({ maxLength: 300 }).map((b) => () => b),
      // a valid encoding cut short (truncated lengths and varints)
      fc.nat().map((n) => (base: Uint8Array) => base.subarray(0, n % Math.max(base.length, 1))),
      // one byte changed (wrong wire types, lengths, tags)
      fc.tuple(fc.nat(), fc.nat(255)).map(([n, v]) => (base: Uint8Array) => {
        const b = Uint8Array.from(base);
        if (b.length) b[n % b.length] = v;
        return b;
      }),
      // a field of the wrong wire type or an unknown field appended
      appendedField,
      // varints that never end
      fc.integer({ min: 1, max: 12 }).map((n) => () => Uint8Array.from([0x08, ...Array<number>(n).fill(0xff)])),
    );
    const codes: Record<string, number> = {};
    let sent = 0;
    let skipped = 0;
    await assertProperty(
      fc.asyncProperty(fc.nat(methods.length - 1), mutate, async (m, f) => {
        const [path, codec, base, mutation] = methods[m];
        const bytes = f(base);
        let decoded: unknown;
        let decodes = true;
        try {
          decoded = codec.decode(bytes);
        } catch {
          decodes = false;
        }
        // An empty ApplyRules/ApplyLinks is a valid "remove everything": not hostile, skip it.
        const d = decoded as { rules?: unknown[]; links?: unknown[]; validateOnly?: boolean } | undefined;
        if (decodes && ((d?.rules && d.rules.length === 0) || (d?.links && d.links.length === 0)))
          return void skipped++;
        const w0 = writes;
        const r = await send(path, bytes);
        sent++;
        codes[Status[r.code]] = (codes[Status[r.code]] ?? 0) + 1;
        const ctx = `${path} ${Buffer.from(bytes).toString('hex').slice(0, 120)}: ${Status[r.code]} ${r.details.slice(0, 200)}`;
        if (!decodes) {
          assert.equal(r.code, Status.INTERNAL, ctx);
          assert.match(r.details, /deserializ/i, ctx);
        } else {
          assert.ok(
            ![Status.INTERNAL, Status.UNKNOWN, Status.CANCELLED, Status.DEADLINE_EXCEEDED].includes(r.code),
            ctx,
          );
          if (mutation) assert.notEqual(r.code, Status.OK, `${ctx}: a mutated request was accepted`);
        }
        assert.ok(r.details.length <= 1200, `${ctx}: message bounded`);
        assert.equal(writes, w0, `${ctx}: no kernel write`);
        assert.deepEqual(changedMaps(smallRef, small()), [], `${ctx}: maps unchanged`);
      }),
      { numRuns: Number(process.env.HP_PROTO ?? 1500), endOnFailure: true },
    );
    // Oversized: over the receive limit is RESOURCE_EXHAUSTED before any decoding.
    const before = full();
    const big = await send('/xdpctl.v1.RuleService/CreateRule', new Uint8Array(5 << 20).fill(0x0a));
    assert.equal(big.code, Status.RESOURCE_EXHAUSTED, big.details);
    // Under the limit but a 3 MB name: INVALID_ARGUMENT naming the field, not an echo.
    const name = CreateRuleRequest.encode({ rule: { ...rule, name: 'N'.repeat(3 << 20) } }).finish();
    const named = await send('/xdpctl.v1.RuleService/CreateRule', name);
    assert.equal(named.code, Status.INVALID_ARGUMENT, named.details);
    assert.match(named.details, /^rule\.name: /);
    assert.ok(named.details.length <= 1200, `bounded message (${named.details.length})`);
    // 1000 empty rules: 4000 violations, a trailer that once never arrived.
    const many = ApplyRulesRequest.encode({
      rules: Array.from({ length: 1000 }, () => ({ ...rule, name: '' })),
      validateOnly: false,
    }).finish();
    const manyRes = await send('/xdpctl.v1.RuleService/ApplyRules', many);
    assert.equal(manyRes.code, Status.INVALID_ARGUMENT, manyRes.details);
    assert.deepEqual(changedMaps(before, full()), [], 'maps byte-identical after all of it');
    assert.equal(
      (await rules.listRules({ pageSize: 0, pageToken: '' })).rules.length,
      model.rules.size,
      'still serving',
    );
    t.diagnostic(
      `raw protobuf requests: ${sent + 3} (${skipped} empty Apply* decodes skipped); by code ${JSON.stringify(codes)}`,
    );
    stats.requests += sent + 3;
  });

  it('answers 10 000+ generated requests precisely; rejected ones change nothing', async (t) => {
    const started = Date.now();
    await runRules(t, Number(process.env.HP_RULES ?? 5200));
    await runLinks(t, Number(process.env.HP_LINKS ?? 3600));
    await runCounters(t, Number(process.env.HP_COUNTERS ?? 1400));
    if (windowRef) closeWindow();
    // Everything still serving, nothing escaped.
    assert.equal((await daemon.controller.listRules()).length, model.rules.size);
    assert.deepEqual(unhandled, [], 'no unhandled rejection');
    t.diagnostic(
      `requests: ${stats.requests} in ${((Date.now() - started) / 1000).toFixed(1)} s; by code ${JSON.stringify(stats.byCode)}; ` +
        `by kind ${JSON.stringify(stats.byKind)}; full map snapshots compared: ${fullChecks}; kernel writes: ${writes}`,
    );
    assert.ok(stats.requests >= 10_000);
  });
  it('config files through Controller.applyConfig: a rejected file changes nothing, a good one is the state', async (t) => {
    const ifs = env.ifaces;
    const file = fc
      .record({
        rules: fc.uniqueArray(fc.integer({ min: 0, max: 5 }), { maxLength: 4 }),
        links: fc.shuffledSubarray([0, 1, 2, 3, 4, 5], { maxLength: 4 }),
        breaker: fc.oneof(
          { weight: 2, arbitrary: fc.constant('none') },
          fc.constantFrom(
            'unknown-iface',
            'port-0',
            'bad-name',
            'prefix-33',
            'mac-short',
            'conflict',
            'link-same',
            'link-unknown',
          ),
        ),
        pick: fc.nat(),
      })
      .map(({ rules: rs, links: ls, breaker, pick }) => {
        // Rule k: ingress ifs[k], port 7500 + k (no conflicts), backend on the next interface.
        const rules = rs.map((k) => ({
          name: `cfg-${k}`,
          port: 7500 + k,
          sources: ['10.0.0.0/8'],
          ingress: [ifs[k]],
          backends: [
            { ip: `198.18.7.${k + 1}`, mac: '02:00:00:00:00:07', interface: ifs[(k + 1) % ifs.length], weight: 5 },
          ],
        })) as Record<string, unknown>[];
        const links: { a: string; b: string }[] = [];
        for (let i = 0; i + 1 < ls.length; i += 2) links.push({ a: ifs[ls[i]], b: ifs[ls[i + 1]] });
        const r = rules[pick % Math.max(rules.length, 1)];
        const l = links[pick % Math.max(links.length, 1)];
        let broken = breaker !== 'none';
        if (breaker === 'unknown-iface' && r) r.ingress = [env.missing[0]];
        else if (breaker === 'port-0' && r) r.port = 0;
        else if (breaker === 'bad-name' && r) r.name = 'Bad_Name';
        else if (breaker === 'prefix-33' && r) r.sources = ['10.0.0.0/33'];
        else if (breaker === 'mac-short' && r) (r.backends as { mac: string }[])[0].mac = '02:00:00:00:07';
        else if (breaker === 'conflict' && r) rules.push({ ...r, name: 'cfg-twin' });
        else if (breaker === 'link-same' && l) {
          l.b = l.a; // a link of an interface to itself is refused (links[i].b: must differ from links[i].a)
        } else if (breaker === 'link-unknown' && l) l.b = env.missing[1];
        else broken = false;
        // A backend on an interface a link of the same file forwards from is cut off: refused (backend-behind-link).
        const linked = new Set(links.flatMap((x) => [x.a, x.b]));
        if (rules.some((x) => (x.backends as { interface: string }[]).some((b) => linked.has(b.interface))))
          broken = true;
        return { text: stringify({ rules, links: links.map((x) => ({ ...x, direction: 'both' })) }), broken };
      });
    const outcomes: Record<string, number> = {};
    let windowStart = full();
    await assertProperty(
      fc.asyncProperty(file, async ({ text, broken }) => {
        const cfg = parseConfig(text); // every breaker here is semantic: the file parses
        const before = JSON.stringify(daemon.controller.desiredState());
        const w0 = writes;
        let err: unknown;
        try {
          await daemon.controller.applyConfig(cfg);
        } catch (e) {
          err = e;
        }
        outcomes[err ? `rejected:${(err as CoreError).kind}` : 'applied'] =
          (outcomes[err ? `rejected:${(err as CoreError).kind}` : 'applied'] ?? 0) + 1;
        if (broken) {
          assert.ok(err instanceof CoreError, `a broken file was applied or failed oddly: ${err}\n${text}`);
          assert.equal(writes, w0, 'a rejected file wrote nothing');
          assert.equal(JSON.stringify(daemon.controller.desiredState()), before, 'the last good state is kept');
          assert.deepEqual(changedMaps(smallRef, small()), [], 'maps unchanged');
        } else {
          assert.equal(err, undefined, `a good file was rejected: ${err}\n${text}`);
          const state = daemon.controller.desiredState();
          assert.deepEqual(
            state.rules.map((r) => [r.name, r.port]).sort(),
            cfg.rules.map((r) => [r.name, r.port]).sort(),
          );
          assert.deepEqual(state.links.map((x) => linkKey(x)).sort(), cfg.links.map((x) => linkKey(x)).sort());
          smallRef = small();
          windowStart = full();
        }
      }),
      { numRuns: Number(process.env.HP_CONFIGS ?? 200), endOnFailure: true },
    );
    assert.deepEqual(changedMaps(windowStart, full()), [], 'every map byte-identical since the last good file');
    t.diagnostic(`config files applied through Controller.applyConfig: ${JSON.stringify(outcomes)}`);
  });
});
