/**
 * fast-check generators of xdpctl API requests for hostile-input tests. A
 * request starts valid (on the test's real interfaces) and then 0..3
 * "breakers" each make one part of it invalid and say which field they broke,
 * so the test knows exactly which fields the daemon must name. Breakers of
 * different groups never touch the same field or list, so they cannot mask or
 * add to each other. "Semantic" outcomes (exists, not found, conflicts, stale
 * generations) come from a model of the daemon's state in the test.
 */
import fc from 'fast-check';

import { Protocol, UdpChecksumMode, type Backend, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { LinkDirection, type Link } from '../../src/gen/xdpctl/v1/link.js';

/** Field paths a request broke, and an unknown (but well-formed) interface it names, if any. */
export interface Broken {
  fields: string[];
  /** Field of the first interface that does not exist (NOT_FOUND when nothing else is wrong). */
  unknown?: string;
}

export interface Env {
  /** Real interfaces (in the daemon's namespace). */
  ifaces: string[];
  /** Well-formed names of interfaces that do not exist. */
  missing: string[];
  /** The pool of rule names requests use (small: names collide on purpose). */
  names: string[];
}

const MEGA = 3 << 20;
/** Long values are built on use: a few megabyte requests, not thousands. */
const long = (n: number, c = 'x') => ({ long: n, c });
type Text = string | { long: number; c: string };
const text = (t: Text) => (typeof t === 'string' ? t : t.c.repeat(t.long));

export const BAD_NAMES: Text[] = [
  '',
  'UPPER',
  'a_b',
  '-a',
  'a-',
  'a b',
  'é',
  '名前',
  'a\u0000b',
  '😀',
  'a.b',
  long(64, 'a'),
  long(MEGA, 'n'),
];
export const BAD_IFNAMES: Text[] = [
  '',
  'a/b',
  'a:b',
  'a b',
  'tab\t',
  'nb\u00a0sp',
  '.',
  '..',
  'éééééééé', // 8 characters, 16 bytes
  long(16, 'i'),
  long(MEGA, 'i'),
];
/** A second, disjoint list, so that two broken names in one link never coincide. */
const BAD_IFNAMES_B: Text[] = ['b/c', 'b:c', 'b c', 'bbbbbbbbbbbbbbbb', 'b\tc', 'ûûûûûûûû'];
export const BAD_IPS: Text[] = [
  '10.0.0.256',
  'abc',
  '::1',
  '2001:db8::1',
  '1.2.3',
  '10.0.0.1/32',
  ' 10.0.0.1',
  '010.0.0.1',
  long(100_000, '9'),
  // Well formed, but no unicast host (RFC 1812 5.3.7): the datapath never redirects to or from them.
  '0.0.0.0',
  '127.0.0.1',
  '224.0.0.251',
  '239.255.255.250',
  '255.255.255.255',
  '240.0.0.1',
];
export const BAD_PREFIXES: Text[] = [
  '10.0.0.0/33',
  '10.0.0.1/24',
  '192.168.1.1/16',
  '10.0.0.0/-1',
  '10.0.0.0/',
  '::/0',
  'abc',
  '10.0.0.0/8/8',
  '300.0.0.0/8',
  '10.0.0.0/ 8',
  '10.0.0.0/1000',
];
export const BAD_MACS: Text[] = [
  '02:42:ac:11:00',
  '02:42:ac:11:00:02:03',
  'zz:42:ac:11:00:02',
  '0242ac110002',
  '02:42:ac:11:00:2',
  '02.42.ac.11.00.02',
  // Well formed, but no backend's own address: broadcast, group (multicast: I/G bit set), all zero.
  'ff:ff:ff:ff:ff:ff',
  'FF-FF-FF-FF-FF-FF',
  '01:00:5e:00:00:fb',
  '33:33:00:00:00:01',
  '03:00:00:00:00:01',
  '00:00:00:00:00:00',
  long(MEGA, 'f'),
];
// (A negative port or weight is the same uint32 on the wire as 2^32 - 1; the client refuses to encode it.)
export const BAD_PORTS = [0, 65536, 70000, 4294967295];
export const BAD_WEIGHTS = [1001, 5000, 65536, 4294967295];
export const BAD_ENUMS = [3, 7, 99, -1, 2147483647];

const VALID_PREFIXES = ['10.0.0.0/8', '192.168.1.0/24', '172.16.5.4/32', '0.0.0.0/0', '198.51.100.0/25'];
export const PORTS = [7000, 7001, 7002];
export const DESTINATIONS = ['', '10.9.0.1'];

/** A unicast MAC (I/G bit clear, not all zero): what a backend needs. */
const mac = fc
  .uint8Array({ minLength: 6, maxLength: 6 })
  .map((b) => b.map((x, i) => (i === 0 ? x & 0xfe : i === 5 && b.every((y, j) => j === 5 || y === 0) ? x | 1 : x)))
  .map((b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(':'));

/** A valid backend on one of the real interfaces (distinct IPs are chosen by the rule). */
function backend(env: Env, ip: string): fc.Arbitrary<Backend> {
  return fc.record({
    ip: fc.constant(ip),
    mac: fc.oneof({ weight: 19, arbitrary: mac }, { weight: 1, arbitrary: fc.constant('') }),
    interface: fc.constantFrom(...env.ifaces),
    weight: fc.option(fc.nat(1000), { nil: undefined }),
  });
}

/** A valid rule with a name from the pool. */
export function validRule(env: Env, name?: string): fc.Arbitrary<Rule> {
  return fc
    .record({
      name: name === undefined ? fc.constantFrom(...env.names) : fc.constant(name),
      port: fc.constantFrom(...PORTS),
      destination: fc.constantFrom(...DESTINATIONS),
      protocol: fc.constantFrom(Protocol.PROTOCOL_UDP, Protocol.PROTOCOL_UNSPECIFIED),
      sourcePrefixes: fc.subarray(VALID_PREFIXES, { maxLength: 2 }),
      ingressInterfaces: fc.shuffledSubarray(env.ifaces, { minLength: 1, maxLength: 2 }),
      ips: fc.uniqueArray(fc.integer({ min: 1, max: 250 }), { minLength: 1, maxLength: 3 }),
      udpChecksum: fc.constantFrom(
        UdpChecksumMode.UDP_CHECKSUM_MODE_UNSPECIFIED,
        UdpChecksumMode.UDP_CHECKSUM_MODE_UPDATE,
        UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
      ),
      labels: fc.dictionary(fc.stringMatching(/^[a-z]{1,6}$/), fc.string({ maxLength: 8 }), { maxKeys: 2 }),
    })
    .chain((r) => fc.tuple(fc.constant(r), fc.tuple(...r.ips.map((i) => backend(env, `198.18.${i % 5}.${i}`)))))
    .map(([r, backends]) => ({
      name: r.name,
      match: { protocol: r.protocol, port: r.port, destination: r.destination, sourcePrefixes: r.sourcePrefixes },
      ingressInterfaces: r.ingressInterfaces,
      backends,
      udpChecksum: r.udpChecksum,
      labels: { ...r.labels },
      generation: 0n,
    }));
}

type RuleBreaker = (r: Rule, p: string, pick: number) => string[] | undefined;
const at = <T>(list: T[], pick: number) => list[pick % list.length];

/** One breaker per group; each returns the fields it broke (relative to the rule's path p). */
const RULE_BREAKERS: Record<string, RuleBreaker[]> = {
  name: [(r, p, k) => ((r.name = text(at(BAD_NAMES, k))), [`${p}.name`])],
  protocol: [(r, p, k) => ((r.match!.protocol = at(BAD_ENUMS, k)), [`${p}.match.protocol`])],
  port: [(r, p, k) => ((r.match!.port = at(BAD_PORTS, k)), [`${p}.match.port`])],
  destination: [(r, p, k) => ((r.match!.destination = text(at(BAD_IPS, k))), [`${p}.match.destination`])],
  prefixes: [
    (r, p) => (
      (r.match!.sourcePrefixes = Array.from({ length: 257 }, (_, i) => `10.${i >> 8}.${i & 255}.0/24`)),
      [`${p}.match.source_prefixes`]
    ),
    (r, p, k) => {
      const s = r.match!.sourcePrefixes;
      const i = k % (s.length + 1);
      s.splice(i, i < s.length ? 1 : 0, text(at(BAD_PREFIXES, k >> 4)));
      return [`${p}.match.source_prefixes[${i}]`];
    },
    (r, p, k) => {
      const s = r.match!.sourcePrefixes;
      if (s.length === 0) return undefined;
      s.push(at(s, k));
      return [`${p}.match.source_prefixes[${s.length - 1}]`];
    },
  ],
  ingress: [
    (r, p) => ((r.ingressInterfaces = []), [`${p}.ingress_interfaces`]),
    (r, p) => ((r.ingressInterfaces = Array.from({ length: 65 }, (_, i) => `nx${i}`)), [`${p}.ingress_interfaces`]),
    (r, p, k) => {
      const i = k % r.ingressInterfaces.length;
      r.ingressInterfaces[i] = text(at(BAD_IFNAMES, k >> 4));
      return [`${p}.ingress_interfaces[${i}]`];
    },
    (r, p, k) => {
      r.ingressInterfaces.push(at(r.ingressInterfaces, k));
      return [`${p}.ingress_interfaces[${r.ingressInterfaces.length - 1}]`];
    },
  ],
  backends: [
    (r, p) => (
      (r.backends = Array.from({ length: 65 }, (_, i) => ({
        ip: `198.19.0.${i}`,
        mac: '02:00:00:00:00:01',
        interface: r.backends[0].interface,
      }))),
      [`${p}.backends`]
    ),
    (r, p, k) => {
      r.backends.push({ ...at(r.backends, k), weight: 7 }); // same ip@interface: listed twice
      return [`${p}.backends[${r.backends.length - 1}]`];
    },
    (r, p, k) => {
      const i = k % r.backends.length;
      r.backends[i].ip = at(['', ...BAD_IPS.map(text)], k >> 4);
      return [`${p}.backends[${i}].ip`];
    },
    (r, p, k) => {
      const i = k % r.backends.length;
      r.backends[i].mac = text(at(BAD_MACS, k >> 4));
      return [`${p}.backends[${i}].mac`];
    },
    (r, p, k) => {
      const i = k % r.backends.length;
      r.backends[i].interface = text(at(BAD_IFNAMES, k >> 4));
      return [`${p}.backends[${i}].interface`];
    },
    (r, p, k) => {
      const i = k % r.backends.length;
      r.backends[i].weight = at(BAD_WEIGHTS, k >> 4);
      return [`${p}.backends[${i}].weight`];
    },
    (r, p, k) => {
      // Two fields of one backend at once.
      const i = k % r.backends.length;
      r.backends[i].mac = text(at(BAD_MACS, k >> 4));
      r.backends[i].weight = at(BAD_WEIGHTS, k >> 8);
      return [`${p}.backends[${i}].mac`, `${p}.backends[${i}].weight`];
    },
  ],
  udpChecksum: [(r, p, k) => ((r.udpChecksum = at(BAD_ENUMS, k)), [`${p}.udp_checksum`])],
  labels: [
    (r, p) => ((r.labels = Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, 'v']))), [`${p}.labels`]),
    // A bad entry is named by its key, JSON-quoted, a long one cut at 64 characters.
    (r, p) => ((r.labels = { ...r.labels, '': 'v' }), [`${p}.labels[""]`]),
    (r, p) => ((r.labels = { ...r.labels, ['k'.repeat(257)]: 'v' }), [`${p}.labels["${'k'.repeat(64)}…(257 chars)"]`]),
    (r, p) => ((r.labels = { ...r.labels, 'Bad Key': 'v'.repeat(257) }), [`${p}.labels["Bad Key"]`]),
  ],
};
const GROUPS = Object.keys(RULE_BREAKERS);

/** Break 0..3 groups of a valid rule (at path p); or name an unknown interface instead. */
export function breakRule(env: Env, p: string): fc.Arbitrary<(r: Rule) => Broken> {
  const breakers = fc.uniqueArray(fc.tuple(fc.constantFrom(...GROUPS), fc.nat(), fc.nat()), {
    maxLength: 3,
    selector: ([g]) => g,
  });
  return fc
    .oneof(
      { weight: 6, arbitrary: breakers },
      { weight: 1, arbitrary: fc.constant('unknown' as const) },
      { weight: 3, arbitrary: fc.constant([] as [string, number, number][]) },
    )
    .chain((b) =>
      fc
        .tuple(fc.constant(b), fc.nat(), fc.constantFrom(...env.missing))
        .map(([b, pick, missing]) => (r: Rule): Broken => {
          if (b === 'unknown') {
            const slots = r.ingressInterfaces.length + r.backends.length;
            const i = pick % slots;
            if (i < r.ingressInterfaces.length) {
              r.ingressInterfaces[i] = missing;
              return { fields: [], unknown: `${p}.ingress_interfaces[${i}]` };
            }
            const j = i - r.ingressInterfaces.length;
            r.backends[j].interface = missing;
            // An earlier unknown ingress would be reported first, but there is none.
            return { fields: [], unknown: `${p}.backends[${j}].interface` };
          }
          const fields: string[] = [];
          for (const [g, variant, k] of b) {
            const f = at(RULE_BREAKERS[g], variant)(r, p, k);
            if (f) fields.push(...f);
          }
          return { fields };
        }),
    );
}

/** A valid link between two distinct real interfaces. */
export function validLink(env: Env): fc.Arbitrary<Link> {
  return fc
    .record({
      a: fc.constantFrom(...env.ifaces),
      b: fc.constantFrom(...env.ifaces),
      direction: fc.constantFrom(
        LinkDirection.LINK_DIRECTION_UNSPECIFIED,
        LinkDirection.LINK_DIRECTION_BOTH,
        LinkDirection.LINK_DIRECTION_A_TO_B,
      ),
    })
    .filter((l) => l.a !== l.b);
}

// A link of an interface to itself is refused; the valid links above never have one (filter).
const LINK_GROUPS = ['a', 'b', 'direction'] as const;

/** Break a link (at path p). `_applying`: ApplyLinks (kept for callers). */
export function breakLink(env: Env, p: string, _applying: boolean): fc.Arbitrary<(l: Link) => Broken> {
  return fc
    .oneof(
      { weight: 6, arbitrary: fc.subarray([...LINK_GROUPS], { minLength: 1, maxLength: 3 }) },
      { weight: 1, arbitrary: fc.constant('unknown' as const) },
      { weight: 3, arbitrary: fc.constant([] as (typeof LINK_GROUPS)[number][]) },
    )
    .chain((g) => fc.tuple(fc.constant(g), fc.nat(), fc.constantFrom(...env.missing), fc.nat()))
    .map(([g, k, missing, u]) => (l: Link): Broken => {
      if (g === 'unknown') {
        // NOT_FOUND names the end: link.a / links[2].b.
        if (u % 2) l.a = missing;
        else l.b = missing;
        return { fields: [], unknown: `${p}.${u % 2 ? 'a' : 'b'}` };
      }
      const fields: string[] = [];
      const groups = g;
      for (const x of groups) {
        if (x === 'a') {
          l.a = text(at(BAD_IFNAMES, k));
          fields.push(`${p}.a`);
        }
        if (x === 'b') {
          l.b = text(at(BAD_IFNAMES_B, k));
          fields.push(`${p}.b`);
        }
        if (x === 'direction') {
          l.direction = at(BAD_ENUMS, k);
          fields.push(`${p}.direction`);
        }
      }
      return { fields };
    });
}

/** Durations for WatchCounters.interval: [value, valid]. */
export const INTERVALS: [{ seconds: bigint; nanos: number } | undefined, boolean][] = [
  [undefined, true],
  [{ seconds: 0n, nanos: 100e6 }, true],
  [{ seconds: 0n, nanos: 250e6 }, true],
  [{ seconds: 60n, nanos: 0 }, true],
  [{ seconds: 0n, nanos: 0 }, false],
  [{ seconds: 0n, nanos: 50e6 }, false],
  [{ seconds: 61n, nanos: 0 }, false],
  [{ seconds: -1n, nanos: 0 }, false],
  [{ seconds: 0n, nanos: -200e6 }, false],
  [{ seconds: 1n, nanos: -500e6 }, false],
  [{ seconds: 0n, nanos: 2e9 }, false],
  [{ seconds: 100000n, nanos: 0 }, false],
];

/**
 * A mutation of a protobuf encoding: a field appended, numbered 1..2000, of any wire type (0..7: a field of the
 * wrong wire type or an unknown one), its tag followed by up to 12 bytes (its value, or one cut short).
 */
export const appendedField: fc.Arbitrary<(base: Uint8Array) => Uint8Array> = fc
  .tuple(fc.integer({ min: 1, max: 2000 }), fc.nat(7), fc.uint8Array({ maxLength: 12 }))
  .map(([field, wire, tail]) => (base: Uint8Array) => {
    const tag = [];
    for (let v = (field << 3) | wire; ; v >>>= 7) {
      if (v < 0x80) {
        tag.push(v);
        break;
      }
      tag.push((v & 0x7f) | 0x80);
    }
    return Uint8Array.from([...base, ...tag, ...tail]);
  });
