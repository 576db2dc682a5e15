/**
 * Property tests of the YAML config parser (parseConfig, used by xdpctld
 * --config and xdpctl apply -f) with generated files: valid ones, subtly
 * invalid ones (one or more breakers, each knowing the path it broke),
 * duplicate keys, random text and bytes, deep nesting, alias bombs and huge
 * files. parseConfig must return the expected config or throw its own
 * ConfigError naming exactly the broken paths; nothing else may escape.
 * (Applying rejected files to a real datapath is in
 * test/integration/hostile-input.test.ts.)
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import fc from 'fast-check';
import { stringify } from 'yaml';

import { ConfigError, parseConfig, type ConfigFile } from '../../src/shared/config-file.js';

const counts: Record<string, number> = {};
const count = (k: string) => (counts[k] = (counts[k] ?? 0) + 1);

/** A problem's field: a YAML location, '' for the file as a whole, or a path in the file (bounded). */
const PATH = /^(line \d+, column \d+|(links|rules)([.[].*)?|\S.*|)$/s;

function assertConfigError(e: unknown): asserts e is ConfigError {
  if (!(e instanceof ConfigError)) {
    throw new assert.AssertionError({ message: `not a ConfigError: ${(e as Error)?.stack ?? String(e)}` });
  }
  assert.ok(e.problems.length > 0, 'a ConfigError lists its problems');
  for (const p of e.problems) {
    assert.ok(p.description.length > 0, 'every problem says what is wrong');
    assert.match(p.field, PATH, `problem field "${p.field.slice(0, 80)}" is a path`);
    assert.ok(p.field.length <= 256, `problem field is bounded (${p.field.length})`);
    if (p.field === '') assert.match(p.description, /file|mapping|read/, 'a root problem says so');
  }
  assert.ok(e.message.length < 64 * 1024, `the message is bounded (${e.message.length})`);
}

/** parseConfig, classifying the outcome; anything but a ConfigError fails. */
function parse(text: string): ConfigFile | ConfigError {
  try {
    return parseConfig(text);
  } catch (e) {
    assertConfigError(e);
    return e;
  }
}

// ---- valid files ------------------------------------------------------------------------

const ifname = fc.stringMatching(/^[a-z][a-z0-9]{0,6}$/);
const ipv4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((b) => b.join('.'));
const mac = fc
  .uint8Array({ minLength: 6, maxLength: 6 })
  .map((b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(':'));
const backend = fc.record(
  { ip: ipv4, mac, interface: ifname, weight: fc.nat(1000) },
  { requiredKeys: ['ip', 'interface'] },
);
const rule = fc.record(
  {
    name: fc.stringMatching(/^[a-z][a-z0-9-]{0,20}[a-z0-9]$/),
    port: fc.integer({ min: 1, max: 65535 }),
    protocol: fc.constant('udp'),
    destination: ipv4,
    sources: fc.oneof(
      ipv4,
      fc.array(
        ipv4.map((a) => `${a}/32`),
        { maxLength: 3 },
      ),
    ),
    ingress: fc.oneof(ifname, fc.array(ifname, { maxLength: 3 })),
    udpChecksum: fc.constantFrom('update', 'zero'),
    labels: fc.dictionary(fc.stringMatching(/^[a-z]{1,8}$/), fc.string({ maxLength: 10 }), { maxKeys: 3 }),
    backends: fc.array(backend, { maxLength: 4 }),
  },
  { requiredKeys: ['name', 'port', 'backends'] },
);
const links = fc.oneof(
  fc.dictionary(ifname, ifname, { maxKeys: 4 }),
  fc.array(
    fc.record({ a: ifname, b: ifname, direction: fc.constantFrom('both', 'a-to-b') }, { requiredKeys: ['a', 'b'] }),
    { maxLength: 4 },
  ),
);
type Doc = { links?: unknown; rules?: unknown[] };
const validDoc: fc.Arbitrary<Doc> = fc.record({ links, rules: fc.array(rule, { maxLength: 4 }) }, { requiredKeys: [] });

/** What parseConfig must return for a valid document. */
function expected(doc: Doc): ConfigFile {
  const list = (v: unknown) => (v === undefined ? [] : typeof v === 'string' ? [v] : (v as string[]));
  const l = doc.links;
  return {
    links: Array.isArray(l)
      ? l.map((x: { a: string; b: string; direction?: string }) => ({
          a: x.a,
          b: x.b,
          direction: (x.direction ?? 'both') as 'both',
        }))
      : Object.entries((l ?? {}) as Record<string, string>).map(([a, b]) => ({ a, b, direction: 'both' as const })),
    rules: (doc.rules ?? []).map((x) => {
      const r = x as Record<string, unknown>;
      return {
        name: r.name as string,
        protocol: 'udp' as const,
        port: r.port as number,
        destination: (r.destination as string | undefined) ?? '',
        sourcePrefixes: list(r.sources),
        ingressInterfaces: list(r.ingress),
        backends: (r.backends as Record<string, unknown>[]).map((b) => ({
          ip: b.ip as string,
          mac: (b.mac as string | undefined) ?? '',
          interface: b.interface as string,
          weight: (b.weight as number | undefined) ?? 1,
        })),
        udpChecksum: ((r.udpChecksum as string | undefined) ?? 'update') as 'update',
        labels: { ...((r.labels as Record<string, string> | undefined) ?? {}) },
      };
    }),
    sections: { links: doc.links !== undefined, rules: doc.rules !== undefined },
  };
}

// ---- breakers: each makes one part of a valid document invalid and names its path ----------

/** A value of the wrong type for a field that wants `want`. */
const wrongType = (want: 'string' | 'number' | 'list' | 'mapping' | 'strings') =>
  fc
    .oneof(
      fc.integer(),
      fc.boolean(),
      fc.constant(null),
      fc.string({ maxLength: 5 }),
      fc.array(fc.integer(), { minLength: 1, maxLength: 2 }),
      fc.dictionary(fc.stringMatching(/^[a-z]{1,4}$/), fc.integer(), { minKeys: 1, maxKeys: 2 }),
    )
    .filter((v) => {
      if (want === 'string') return typeof v !== 'string';
      if (want === 'number') return typeof v !== 'number';
      if (want === 'list') return !Array.isArray(v);
      if (want === 'mapping') return !(typeof v === 'object' && v !== null && !Array.isArray(v)) && v !== null;
      return typeof v !== 'string' && !(Array.isArray(v) && v.every((x) => typeof x === 'string')) && v !== null;
    });

type BreakerSpec = [string, fc.Arbitrary<unknown>, (doc: Doc, pick: number, v: unknown) => string[] | undefined];

const isMap = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
/** A rule of the document that is still a mapping (earlier breakers may have replaced it). */
const ruleAt = (doc: Doc, pick: number) => {
  const rs = doc.rules;
  if (!Array.isArray(rs) || rs.length === 0) return undefined;
  const i = pick % rs.length;
  return isMap(rs[i]) ? { i, r: rs[i] } : undefined;
};
const backendAt = (doc: Doc, pick: number) => {
  const at = ruleAt(doc, pick);
  const bs = at?.r.backends;
  if (!at || !Array.isArray(bs) || bs.length === 0) return undefined;
  const j = (pick >> 8) % bs.length;
  return isMap(bs[j]) ? { ...at, j, b: bs[j] } : undefined;
};

const BREAKERS: BreakerSpec[] = [
  [
    'port-type',
    wrongType('number'),
    (d, p, v) => ruleAt(d, p) && ((ruleAt(d, p)!.r.port = v), [`rules[${ruleAt(d, p)!.i}].port`]),
  ],
  [
    'port-missing',
    fc.constant(0),
    (d, p) => {
      const at = ruleAt(d, p);
      if (!at) return undefined;
      delete at.r.port;
      return [`rules[${at.i}].port`];
    },
  ],
  [
    'name-type',
    wrongType('string'),
    (d, p, v) => {
      const at = ruleAt(d, p);
      return at && ((at.r.name = v), [`rules[${at.i}].name`]);
    },
  ],
  [
    'protocol',
    fc.constantFrom('tcp', 'UDP', 'icmp', 17),
    (d, p, v) => {
      const at = ruleAt(d, p);
      return at && ((at.r.protocol = v), [`rules[${at.i}].protocol`]);
    },
  ],
  [
    'udpChecksum',
    fc.constantFrom('UPDATE', 'none', 1, true),
    (d, p, v) => {
      const at = ruleAt(d, p);
      return at && ((at.r.udpChecksum = v), [`rules[${at.i}].udpChecksum`]);
    },
  ],
  [
    'backends-type',
    wrongType('list'),
    (d, p, v) => {
      const at = ruleAt(d, p);
      return at && ((at.r.backends = v), [`rules[${at.i}].backends`]);
    },
  ],
  [
    'labels-type',
    fc.oneof(wrongType('mapping'), fc.constant({ k: 1 }), fc.constant({ k: ['x'] })),
    (d, p, v) => {
      const at = ruleAt(d, p);
      return at && ((at.r.labels = v), [`rules[${at.i}].labels`]);
    },
  ],
  [
    'sources-type',
    wrongType('strings'),
    (d, p, v) => {
      const at = ruleAt(d, p);
      return at && ((at.r.sources = v), [`rules[${at.i}].sources`]);
    },
  ],
  [
    'ingress-type',
    wrongType('strings'),
    (d, p, v) => {
      const at = ruleAt(d, p);
      return at && ((at.r.ingress = v), [`rules[${at.i}].ingress`]);
    },
  ],
  [
    'destination-type',
    wrongType('string'),
    (d, p, v) => {
      const at = ruleAt(d, p);
      return at && ((at.r.destination = v), [`rules[${at.i}].destination`]);
    },
  ],
  [
    'rule-unknown-key',
    fc.constantFrom('iface', 'backend', 'Port', 'weight', 'sourcePrefixes'),
    (d, p, k) => {
      const at = ruleAt(d, p);
      return at && ((at.r[k as string] = 1), [`rules[${at.i}].${k as string}`]);
    },
  ],
  [
    'rule-not-mapping',
    fc.oneof(fc.string({ maxLength: 4 }), fc.integer(), fc.array(fc.integer())),
    (d, p, v) => {
      const at = ruleAt(d, p);
      return at && ((d.rules![at.i] = v), [`rules[${at.i}]`]);
    },
  ],
  [
    'backend-unknown-key',
    fc.constantFrom('iface', 'dev', 'IP', 'port'),
    (d, p, k) => {
      const at = backendAt(d, p);
      return at && ((at.b[k as string] = 'x'), [`rules[${at.i}].backends[${at.j}].${k as string}`]);
    },
  ],
  [
    'backend-weight-type',
    fc.constantFrom('1', 'heavy', true, [1]),
    (d, p, v) => {
      const at = backendAt(d, p);
      return at && ((at.b.weight = v), [`rules[${at.i}].backends[${at.j}].weight`]);
    },
  ],
  [
    'backend-ip-type',
    fc.constantFrom(true, [1, 2], { a: 1 }),
    (d, p, v) => {
      const at = backendAt(d, p);
      return at && ((at.b.ip = v), [`rules[${at.i}].backends[${at.j}].ip`]);
    },
  ],
  [
    'backend-interface-missing',
    fc.constant(0),
    (d, p) => {
      const at = backendAt(d, p);
      if (!at) return undefined;
      delete at.b.interface;
      return [`rules[${at.i}].backends[${at.j}].interface`];
    },
  ],
  [
    'backend-not-mapping',
    fc.oneof(fc.string({ maxLength: 4 }), fc.integer()),
    (d, p, v) => {
      const at = backendAt(d, p);
      return at && (((at.r.backends as unknown[])[at.j] = v), [`rules[${at.i}].backends[${at.j}]`]);
    },
  ],
  [
    'rules-type',
    fc.oneof(fc.integer(), fc.string({ maxLength: 4 }), fc.constant({ a: 1 })),
    (d, _p, v) => {
      d.rules = v as unknown[];
      return ['rules'];
    },
  ],
  [
    'links-type',
    fc.oneof(fc.integer(), fc.string({ maxLength: 4 }), fc.boolean()),
    (d, _p, v) => {
      d.links = v;
      return ['links'];
    },
  ],
  [
    'links-value',
    fc.oneof(fc.integer(), fc.array(fc.string()), fc.constant({ b: 'x' })),
    (d, _p, v) => {
      d.links = { eth0: v };
      return ['links.eth0'];
    },
  ],
  [
    'link-direction',
    fc.constantFrom('BOTH', 'b-to-a', 2),
    (d, _p, v) => {
      d.links = [{ a: 'x1', b: 'x2', direction: v }];
      return ['links[0].direction'];
    },
  ],
  [
    'link-not-mapping',
    fc.oneof(fc.string({ maxLength: 4 }), fc.integer()),
    (d, _p, v) => {
      d.links = ['x', v].slice(1);
      return ['links[0]'];
    },
  ],
  [
    'link-a-missing',
    fc.constant(0),
    (d) => {
      d.links = [{ b: 'x2' }];
      return ['links[0].a'];
    },
  ],
  [
    'root-unknown-key',
    fc.constantFrom('rule', 'Links', 'backends', 'version'),
    (d, _p, k) => {
      (d as Record<string, unknown>)[k as string] = 1;
      return [k as string];
    },
  ],
];

const broken = fc
  .tuple(
    validDoc,
    fc.uniqueArray(fc.tuple(fc.nat(BREAKERS.length - 1), fc.nat(0xffff)), {
      minLength: 1,
      maxLength: 3,
      selector: ([b]) => b,
    }),
  )
  .chain(([doc, picks]) =>
    fc.tuple(fc.constant(doc), fc.constant(picks), fc.tuple(...picks.map(([b]) => BREAKERS[b][1]))),
  )
  .map(([doc, picks, values]) => {
    const d = structuredClone(doc);
    const fields = new Set<string>();
    const applied: string[] = [];
    for (const [k, p] of picks.entries()) {
      const [name, , apply] = BREAKERS[p[0]];
      const f = apply(d, p[1], values[k]);
      if (!f) continue;
      applied.push(name);
      // A breaker that replaced the links or the rules hides what earlier ones broke there.
      const section = name.startsWith('link') ? 'links' : name === 'rules-type' ? 'rules' : undefined;
      if (section) for (const old of [...fields]) if (old.startsWith(section)) fields.delete(old);
      // One that replaced a rule or a backend hides the earlier ones inside it.
      for (const g of f) {
        for (const old of [...fields])
          if (old === g || old.startsWith(`${g}.`) || old.startsWith(`${g}[`)) fields.delete(old);
        fields.add(g);
      }
    }
    return { doc: d, fields, applied };
  });

describe('config file parser, property-based (fast-check)', () => {
  it('parses every valid file to exactly what it says', () => {
    fc.assert(
      fc.property(validDoc, fc.constantFrom<'block' | 'flow'>('block', 'flow'), (doc, style) => {
        const text = stringify(doc, style === 'flow' ? { collectionStyle: 'flow' } : {});
        const got = parse(text);
        count('valid');
        assert.ok(!(got instanceof ConfigError), `valid file rejected: ${(got as Error).message}\n${text}`);
        assert.deepEqual(got, expected(doc));
      }),
      { numRuns: 2500 },
    );
  });

  it('rejects subtly invalid files naming exactly the broken paths', () => {
    fc.assert(
      fc.property(broken, ({ doc, fields, applied }) => {
        const text = stringify(doc);
        const got = parse(text);
        count('subtly-invalid');
        if (fields.size === 0) return; // no breaker applied (nothing to break in this document)
        assert.ok(got instanceof ConfigError, `accepted a broken file (${applied.join(', ')}):\n${text}`);
        count('subtly-invalid-rejected');
        assert.deepEqual(
          [...new Set(got.problems.map((p) => p.field))].sort(),
          [...fields].sort(),
          `${applied.join(', ')}:\n${text}\n${got.message}`,
        );
      }),
      { numRuns: 3500 },
    );
  });

  it('reports duplicate keys with their line and column', () => {
    fc.assert(
      fc.property(validDoc, fc.nat(), (doc, pick) => {
        const lines = stringify({ links: { eth0: 'tap0' }, ...doc }).split('\n');
        // Repeat one "key: value" line right after itself (same indentation: same mapping).
        const keyLines = lines.map((l, i) => [l, i] as const).filter(([l]) => /^\s*[A-Za-z_][\w-]*:\s\S/.test(l));
        const [line, at] = keyLines[pick % keyLines.length];
        lines.splice(at + 1, 0, line);
        const got = parse(lines.join('\n'));
        count('duplicate-keys');
        assert.ok(got instanceof ConfigError && got.syntax, `duplicate key accepted:\n${lines.join('\n')}`);
        assert.ok(
          got.problems.some(
            (p) => p.field === `line ${at + 2}, column ${line.search(/\S/) + 1}` && /unique/.test(p.description),
          ),
          `duplicate at line ${at + 2}: ${got.message}`,
        );
      }),
      { numRuns: 1000 },
    );
  });

  it('never throws anything but a ConfigError on random text and bytes', () => {
    const texts = fc.oneof(
      fc.string({ maxLength: 200 }),
      fc.string({ unit: 'binary', maxLength: 200 }),
      fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b).toString('utf8')),
      fc.stringMatching(/^[-:{}[\],&*!|>'"%@` #?\na-z0-9.]{0,120}$/),
      // Valid files with a random cut or a random character changed.
      fc.tuple(validDoc, fc.nat(), fc.string({ minLength: 1, maxLength: 3 })).map(([d, n, s]) => {
        const t = stringify(d);
        const at = n % (t.length + 1);
        return n % 2 ? t.slice(0, at) : t.slice(0, at) + s + t.slice(at + 1);
      }),
    );
    fc.assert(
      fc.property(texts, (text) => {
        parse(text);
        count('random');
      }),
      { numRuns: 2500 },
    );
  });

  it('survives deep nesting, alias bombs, wrong types everywhere and huge files', () => {
    const nested = fc
      .tuple(
        fc.integer({ min: 1, max: 20_000 }),
        fc.constantFrom('[', '{a: '),
        fc.constantFrom('rules', 'links', 'labels'),
      )
      .map(([depth, open, where]) => {
        const close = open === '[' ? ']' : '}';
        const inner = `${open.repeat(depth)}1${close.repeat(depth)}`;
        return where === 'labels'
          ? `rules:\n  - name: x\n    port: 1\n    backends: []\n    labels: ${inner}\n`
          : `${where}: ${inner}\n`;
      });
    const bomb = fc.integer({ min: 2, max: 12 }).map((levels) => {
      const out = ['a0: &a0 [x, x, x, x, x, x, x, x, x]'];
      for (let i = 1; i < levels; i++)
        out.push(
          `a${i}: &a${i} [${Array(9)
            .fill(`*a${i - 1}`)
            .join(', ')}]`,
        );
      return `${out.join('\n')}\nrules: *a${levels - 1}\n`;
    });
    const anyShape = fc.anything({ maxDepth: 4 }).map((v) => {
      try {
        return stringify({ rules: [v], links: v });
      } catch {
        return 'rules: []';
      }
    });
    const blockNested = fc
      .integer({ min: 1, max: 20_000 })
      .map((depth) =>
        depth % 2
          ? `rules:\n${'- '.repeat(depth)}x\n`
          : `rules:\n${Array.from({ length: Math.min(depth, 3000) }, (_, i) => `${' '.repeat(i)}- `).join('\n')}x\n`,
      );
    fc.assert(
      fc.property(fc.oneof(nested, blockNested, bomb, anyShape), (text) => {
        parse(text);
        count('nested-bomb-shapes');
      }),
      { numRuns: 600 },
    );
    // Huge: thousands of rules, and megabyte strings; parsed, and problems still bounded in the message.
    const many = stringify({
      rules: Array.from({ length: 5000 }, (_, i) => ({
        name: `r${i}`,
        port: 'x',
        backends: [{ ip: 1, interface: [] }],
      })),
    });
    const huge = parse(many);
    assert.ok(huge instanceof ConfigError && huge.problems.length === 10_000, 'every problem of a 5000-rule file');
    const long = parse(
      `rules:\n  - name: ${'n'.repeat(3 << 20)}\n    port: 1\n    backends: []\n    ? ${'k'.repeat(1 << 20)}\n    : 1\n`,
    );
    assert.ok(long instanceof ConfigError && long.problems.length === 1, 'a megabyte key is named, shortened');
    assert.match(long.problems[0].field, /^rules\[0\]\.k{64}…\(1048576 chars\)$/);
    count('huge');
    count('huge');
  });

  it('ran at least 10 000 files', (t) => {
    const total = Object.values(counts).reduce((a, b) => a + b, 0) - (counts['subtly-invalid-rejected'] ?? 0);
    t.diagnostic(`YAML files through parseConfig: ${total} (${JSON.stringify(counts)})`);
    assert.ok(total >= 10_000, `only ${total} files`);
  });
});
