/**
 * The YAML configuration file (xdpctld --config, xdpctl rules|links apply -f): links and
 * rules. Parsing is pure and strict: every problem is reported with its path
 * in the file, and nothing is applied unless the whole file is valid.
 *
 *   links:                     # the xdp-xconnect format, accepted as is:
 *     eth0: tap0               #   eth0 <-> tap0, both directions
 *   # or a list:  - {a: eth0, b: tap0, direction: a-to-b}
 *   rules:
 *     - name: web
 *       port: 7999
 *       destination: 10.0.0.1       # optional
 *       sources: [192.168.122.10]   # optional (prefixes)
 *       ingress: [eth0]
 *       udpChecksum: update         # or zero
 *       backends:
 *         - {ip: 172.17.0.2, mac: "02:42:ac:11:00:02", interface: veth25, weight: 1}
 *
 * A rule with a `match:` mapping is read in the API's form instead: rule.proto's Rule in the proto3 JSON
 * mapping, what `xdpctl -o yaml|json rules list` prints (`match: {port, destination, sourcePrefixes}`,
 * `ingressInterfaces`, `udpChecksum: UDP_CHECKSUM_MODE_ZERO`; output-only fields ignored); a link may spell
 * its direction `LINK_DIRECTION_A_TO_B` and carry the `status` that `links list` prints. This is the one
 * parser of such files: the daemon's --config and the CLI's `apply -f` both call it, so they accept and
 * refuse the same files in the same words.
 */
import { yaml } from './yaml-lazy.js';

// Shared by the daemon (--config) and the CLI (rules|links apply -f): no server imports.

export interface FieldViolation {
  field: string;
  description: string;
}

export interface LinkSpec {
  a: string;
  b: string;
  direction: 'both' | 'a-to-b';
}

export interface RuleSpec {
  name: string;
  protocol: 'udp';
  port: number;
  destination: string;
  sourcePrefixes: string[];
  ingressInterfaces: string[];
  backends: { ip: string; mac: string; interface: string; weight: number }[];
  udpChecksum: 'update' | 'zero';
  labels: Record<string, string>;
}

export interface ConfigFile {
  links: LinkSpec[];
  rules: RuleSpec[];
  /**
   * The sections the file has (`links:` and/or `rules:` with a value). A section the file lacks is an empty
   * list above; the daemon's config-file mode does not take that for "remove every one" while some run.
   */
  sections: { links: boolean; rules: boolean };
}

const MESSAGE_PROBLEMS = 20;

/**
 * A key as it appears in a problem's field path: as written when it is plain (no blank, control,
 * format or quote character), JSON-quoted otherwise (`"\\r"`, `" x"`, `""`), so that a field path is
 * printable and unambiguous; keys longer than 64 characters are cut, with their length.
 */
const shortKey = (k: string): string => {
  const cut = k.length <= 64 ? k : k.slice(0, 64);
  const shown = /^[^\s\p{C}"]+$/u.test(cut)
    ? cut
    : JSON.stringify(cut).replace(
        /[\p{C}\p{Zl}\p{Zp}]/gu,
        (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
      );
  return k.length <= 64 ? shown : `${shown}…(${k.length} chars)`;
};

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    readonly problems: FieldViolation[],
    readonly syntax = false,
  ) {
    // The message lists the first problems (a broken file can have thousands); `problems` has them all.
    const shown = problems
      .slice(0, MESSAGE_PROBLEMS)
      .map((p) => (p.field ? `${p.field}: ${p.description}` : p.description));
    if (problems.length > MESSAGE_PROBLEMS) shown.push(`and ${problems.length - MESSAGE_PROBLEMS} more`);
    super(shown.join('; '));
  }
}

/** A MAC in the one form the daemon stores and echoes (lower case, colons); other text unchanged. */
function canonicalMac(text: string): string {
  return /^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$/i.test(text) ? text.toLowerCase().replace(/-/g, ':') : text;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

const RULE_KEYS = new Set([
  'name',
  'port',
  'protocol',
  'destination',
  'sources',
  'ingress',
  'backends',
  'udpChecksum',
  'labels',
]);
const BACKEND_KEYS = new Set(['ip', 'mac', 'interface', 'weight']);

/** Deeper than any config file needs; far below what exhausts the parser's stack. */
const MAX_DEPTH = 64;

/**
 * Where the nesting of a file first exceeds MAX_DEPTH, if it does. The YAML
 * parser recurses once per level, and a file thousands of levels deep
 * exhausts the stack, where V8 may abort the whole process (a fatal
 * "RegExpCompiler allocation failed") instead of throwing: so depth is
 * checked first, by a scan that over-estimates it (flow brackets, even
 * quoted ones; indentation levels; "- " and "? " indicators opening a line).
 */
function tooDeep(text: string): { line: number; col: number } | undefined {
  let flow = 0;
  const indents: number[] = [];
  let line = 1;
  for (let i = 0; i < text.length;) {
    const end = text.indexOf('\n', i) < 0 ? text.length : text.indexOf('\n', i);
    let col = i;
    while (col < end && (text[col] === ' ' || text[col] === '\t')) col++;
    if (col < end && text[col] !== '#') {
      const indent = col - i;
      while (indents.length && indents[indents.length - 1] >= indent) indents.pop();
      indents.push(indent);
      let compact = 0;
      while (col + 1 < end && (text[col] === '-' || text[col] === '?') && text[col + 1] === ' ') {
        compact++;
        col += 2;
        while (col < end && text[col] === ' ') col++;
      }
      for (let j = col; j < end; j++) {
        const c = text[j];
        if (c === '[' || c === '{') flow++;
        else if ((c === ']' || c === '}') && flow > 0) flow--;
        if (flow + indents.length + compact > MAX_DEPTH) return { line, col: j - i + 1 };
      }
      if (indents.length + compact > MAX_DEPTH) return { line, col: col - i + 1 };
    }
    i = end + 1;
    line++;
  }
  return undefined;
}

/**
 * Whether a file's text holds no configuration at all: empty, only blanks,
 * comments, document markers or a bare null. xdpctld keeps the last good
 * configuration for such a file (an editor may leave one for a moment, and
 * xdp-xconnect kept its configuration too); `links: {}` removes every link.
 */
export function isEmptyConfig(text: string): boolean {
  if (tooDeep(text)) return false;
  const doc = yaml().parseDocument(text);
  if (doc.errors.length) return false;
  const c = doc.contents;
  return c === null || (yaml().isScalar(c) && (c.value === null || c.value === ''));
}

/** Parse and check a config file's text. Throws ConfigError listing every problem. */
export function parseConfig(text: string): ConfigFile {
  const deep = tooDeep(text);
  if (deep) {
    throw new ConfigError(
      [{ field: `line ${deep.line}, column ${deep.col}`, description: `nested deeper than ${MAX_DEPTH} levels` }],
      true,
    );
  }
  const { LineCounter, parseDocument } = yaml();
  const lines = new LineCounter();
  const doc = parseDocument(text, { prettyErrors: false, uniqueKeys: true, lineCounter: lines });
  if (doc.errors.length) {
    throw new ConfigError(
      doc.errors.map((e) => {
        const at = lines.linePos(e.pos[0]);
        return { field: `line ${at.line}, column ${at.col}`, description: e.message.split('\n')[0] };
      }),
      true,
    );
  }
  let root: unknown;
  try {
    // Aliases that expand without bound (a "billion laughs" file) and nesting
    // deeper than the stack are refused here, as problems of the file.
    root = doc.toJS() ?? {};
  } catch (e) {
    throw new ConfigError([{ field: '', description: `cannot read the file: ${(e as Error).message}` }]);
  }
  const problems: FieldViolation[] = [];
  const ctx = reader(problems);
  const out: ConfigFile = { links: [], rules: [], sections: { links: false, rules: false } };
  if (!isObj(root))
    throw new ConfigError([{ field: '', description: 'the file must be a mapping with links and/or rules' }]);
  for (const k of Object.keys(root)) {
    if (k !== 'links' && k !== 'rules')
      problems.push({ field: shortKey(k), description: 'unknown key (expected links, rules)' });
  }

  // A key with no value (`links:` alone) is what a writer that does not replace the file atomically
  // leaves between two writes: not an instruction to remove everything (`links: {}` and `rules: []` are).
  for (const k of ['links', 'rules'] as const) {
    if (k in root && root[k] === null) {
      problems.push({
        field: k,
        description: `has no value (a file still being written?); \`${k}: ${k === 'links' ? '{}' : '[]'}\` removes every ${k === 'links' ? 'link' : 'rule'}`,
      });
    }
  }
  const links = root.links;
  if (isObj(links)) {
    for (const [a, b] of Object.entries(links)) {
      if (typeof b !== 'string')
        problems.push({ field: `links.${shortKey(a)}`, description: 'must name the peer interface' });
      else out.links.push({ a, b, direction: 'both' });
    }
  } else if (Array.isArray(links)) {
    links.forEach((l, i) => {
      const f = `links[${i}]`;
      if (!isObj(l)) return void problems.push({ field: f, description: 'must be a mapping {a, b, direction}' });
      ctx.unknownKeys(l, LINK_KEYS, f);
      const direction = LINK_DIRECTIONS[String(l.direction ?? 'both')];
      if (!direction || (typeof l.direction !== 'string' && l.direction !== undefined)) {
        problems.push({ field: `${f}.direction`, description: 'must be both or a-to-b' });
      }
      out.links.push({ a: ctx.str(l.a, `${f}.a`), b: ctx.str(l.b, `${f}.b`), direction: direction ?? 'both' });
    });
  } else if (links !== undefined && links !== null) {
    problems.push({ field: 'links', description: 'must be a mapping (eth0: tap0) or a list' });
  }

  const rules = root.rules;
  if (Array.isArray(rules)) {
    rules.forEach((r, i) => {
      const f = `rules[${i}]`;
      if (!isObj(r)) return void problems.push({ field: f, description: 'must be a mapping' });
      out.rules.push('match' in r ? apiRule(r, f, ctx) : fileRule(r, f, ctx));
    });
  } else if (rules !== undefined && rules !== null) {
    problems.push({ field: 'rules', description: 'must be a list' });
  }
  if (problems.length) throw new ConfigError(problems);
  out.sections = { links: root.links != null, rules: root.rules != null };
  return out;
}

/**
 * A link's direction as the file may spell it: the file's `both` / `a-to-b`, or the enum names that
 * `links list -o yaml|json` prints (an unset direction means both, as link.proto documents).
 */
const LINK_DIRECTIONS: Record<string, LinkSpec['direction'] | undefined> = {
  both: 'both',
  'a-to-b': 'a-to-b',
  LINK_DIRECTION_UNSPECIFIED: 'both',
  LINK_DIRECTION_BOTH: 'both',
  LINK_DIRECTION_A_TO_B: 'a-to-b',
};
/** A link in a list; `status` is output only (what `links list` prints), ignored. */
const LINK_KEYS = new Set(['a', 'b', 'direction', 'status']);

/** The readers of one parse, adding every problem to `problems`. */
function reader(problems: FieldViolation[]) {
  return {
    problems,
    str(v: unknown, field: string, optional = false): string {
      if (v === undefined && optional) return '';
      if (typeof v === 'string') return v;
      if (typeof v === 'number' && field.endsWith('ip')) return String(v);
      problems.push({ field, description: optional ? 'must be a string' : 'is required (a string)' });
      return '';
    },
    strList(v: unknown, field: string, single = true): string[] {
      if (v === undefined) return [];
      if (single && typeof v === 'string') return [v];
      if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v as string[];
      problems.push({
        field,
        description: single ? 'must be a string or a list of strings' : 'must be a list of strings',
      });
      return [];
    },
    unknownKeys(o: Obj, known: Set<string>, f: string): void {
      for (const k of Object.keys(o))
        if (!known.has(k)) problems.push({ field: `${f}.${shortKey(k)}`, description: 'unknown key' });
    },
    labels(v: unknown, field: string): Record<string, string> {
      const labels = v ?? {};
      if (!isObj(labels) || !Object.values(labels).every((x) => typeof x === 'string')) {
        problems.push({ field, description: 'must map strings to strings' });
        return {};
      }
      return labels as Record<string, string>;
    },
    backends(v: unknown, f: string): RuleSpec['backends'] {
      if (!Array.isArray(v)) {
        problems.push({ field: `${f}.backends`, description: 'is required (a list)' });
        return [];
      }
      return v.map((b: unknown, j: number) => {
        const bf = `${f}.backends[${j}]`;
        if (!isObj(b)) {
          problems.push({ field: bf, description: 'must be a mapping {ip, mac, interface, weight}' });
          return { ip: '', mac: '', interface: '', weight: 1 };
        }
        this.unknownKeys(b, BACKEND_KEYS, bf);
        const weight = b.weight ?? 1;
        if (typeof weight !== 'number') problems.push({ field: `${bf}.weight`, description: 'must be a number' });
        return {
          ip: this.str(b.ip, `${bf}.ip`),
          mac: canonicalMac(this.str(b.mac, `${bf}.mac`, true)),
          interface: this.str(b.interface, `${bf}.interface`),
          weight: typeof weight === 'number' ? weight : 1,
        };
      });
    },
  };
}
type Reader = ReturnType<typeof reader>;

/** A rule in the file's own form (`port:`, `sources:`, `ingress:`). */
function fileRule(r: Obj, f: string, ctx: Reader): RuleSpec {
  const { problems } = ctx;
  ctx.unknownKeys(r, RULE_KEYS, f);
  const port = r.port;
  if (typeof port !== 'number') problems.push({ field: `${f}.port`, description: 'is required (a number)' });
  const protocol = r.protocol ?? 'udp';
  if (protocol !== 'udp') problems.push({ field: `${f}.protocol`, description: 'must be udp' });
  const udpChecksum = r.udpChecksum ?? 'update';
  if (udpChecksum !== 'update' && udpChecksum !== 'zero') {
    problems.push({ field: `${f}.udpChecksum`, description: 'must be update or zero' });
  }
  return {
    name: ctx.str(r.name, `${f}.name`),
    protocol: 'udp',
    port: typeof port === 'number' ? port : 0,
    destination: ctx.str(r.destination, `${f}.destination`, true),
    sourcePrefixes: ctx.strList(r.sources, `${f}.sources`),
    ingressInterfaces: ctx.strList(r.ingress, `${f}.ingress`),
    backends: ctx.backends(r.backends, f),
    udpChecksum: udpChecksum === 'zero' ? 'zero' : 'update',
    labels: ctx.labels(r.labels, `${f}.labels`),
  };
}

/**
 * The keys of a rule in the API's form (rule.proto's Rule in the proto3 JSON mapping, what `rules list
 * -o yaml|json` prints): lowerCamelCase or the proto's own names, as proto3 JSON parsers accept both.
 * Output-only fields (generation, status, times) are accepted and ignored, so list -> edit -> apply
 * round-trips.
 */
const API_RULE_KEYS: Record<string, string> = {
  name: 'name',
  match: 'match',
  ingressInterfaces: 'ingressInterfaces',
  ingress_interfaces: 'ingressInterfaces',
  backends: 'backends',
  udpChecksum: 'udpChecksum',
  udp_checksum: 'udpChecksum',
  labels: 'labels',
};
const API_OUTPUT_ONLY = new Set(['generation', 'status', 'createTime', 'create_time', 'updateTime', 'update_time']);
const API_MATCH_KEYS: Record<string, string> = {
  protocol: 'protocol',
  port: 'port',
  destination: 'destination',
  sourcePrefixes: 'sourcePrefixes',
  source_prefixes: 'sourcePrefixes',
};
/** rule.proto's enum values by name and number (proto3 JSON takes either). */
const PROTOCOLS: Record<string, true> = { PROTOCOL_UNSPECIFIED: true, PROTOCOL_UDP: true, '0': true, '1': true };
const CHECKSUMS: Record<string, RuleSpec['udpChecksum']> = {
  UDP_CHECKSUM_MODE_UNSPECIFIED: 'update',
  UDP_CHECKSUM_MODE_UPDATE: 'update',
  UDP_CHECKSUM_MODE_ZERO: 'zero',
  '0': 'update',
  '1': 'update',
  '2': 'zero',
};

/** Rename a mapping's keys by `names` (field path `f`); unknown keys and a key given twice are problems. */
function canonical(o: Obj, names: Record<string, string>, f: string, ctx: Reader, ignore = new Set<string>()): Obj {
  const out: Obj = {};
  for (const [k, v] of Object.entries(o)) {
    const name = names[k];
    if (name === undefined) {
      if (!ignore.has(k)) ctx.problems.push({ field: `${f}.${shortKey(k)}`, description: 'unknown key' });
      continue;
    }
    if (name in out) ctx.problems.push({ field: `${f}.${shortKey(k)}`, description: `given twice (as ${name} too)` });
    out[name] = v;
  }
  return out;
}

/** A rule in the API's form (a `match:` mapping): what `rules list -o yaml|json` prints. */
function apiRule(raw: Obj, f: string, ctx: Reader): RuleSpec {
  const { problems } = ctx;
  const r = canonical(raw, API_RULE_KEYS, f, ctx, API_OUTPUT_ONLY);
  let m: Obj = {};
  if (isObj(r.match)) m = canonical(r.match, API_MATCH_KEYS, `${f}.match`, ctx);
  else problems.push({ field: `${f}.match`, description: 'must be a mapping {port, destination, sourcePrefixes}' });
  // proto3 JSON writes a uint32 as a number and also accepts it as a decimal string.
  const port = typeof m.port === 'string' && /^\d{1,10}$/.test(m.port) ? Number(m.port) : m.port;
  if (typeof port !== 'number') problems.push({ field: `${f}.match.port`, description: 'is required (a number)' });
  if (m.protocol !== undefined && !PROTOCOLS[String(m.protocol)]) {
    problems.push({ field: `${f}.match.protocol`, description: 'must be PROTOCOL_UDP' });
  }
  const udpChecksum = r.udpChecksum === undefined ? 'update' : CHECKSUMS[String(r.udpChecksum)];
  if (udpChecksum === undefined) {
    problems.push({
      field: `${f}.udpChecksum`,
      description: 'must be UDP_CHECKSUM_MODE_UPDATE or UDP_CHECKSUM_MODE_ZERO',
    });
  }
  return {
    name: ctx.str(r.name, `${f}.name`),
    protocol: 'udp',
    port: typeof port === 'number' ? port : 0,
    destination: ctx.str(m.destination, `${f}.match.destination`, true),
    sourcePrefixes: ctx.strList(m.sourcePrefixes, `${f}.match.sourcePrefixes`, false),
    ingressInterfaces: ctx.strList(r.ingressInterfaces, `${f}.ingressInterfaces`, false),
    backends: ctx.backends(r.backends, f),
    udpChecksum: udpChecksum ?? 'update',
    labels: ctx.labels(r.labels, `${f}.labels`),
  };
}
