/**
 * The YAML configuration file (xdpctld --config, xdpctl apply -f): links and
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
 */
import { parseDocument } from 'yaml';

// Shared by the daemon (--config) and the CLI (apply -f): no server imports.

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
}

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    readonly problems: FieldViolation[],
    readonly syntax = false,
  ) {
    super(problems.map((p) => (p.field ? `${p.field}: ${p.description}` : p.description)).join('; '));
  }
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

/** Parse and check a config file's text. Throws ConfigError listing every problem. */
export function parseConfig(text: string): ConfigFile {
  const doc = parseDocument(text, { prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length) {
    throw new ConfigError(
      doc.errors.map((e) => ({ field: `line ${e.linePos?.[0].line ?? '?'}`, description: e.message.split('\n')[0] })),
      true,
    );
  }
  const root: unknown = doc.toJS() ?? {};
  const problems: FieldViolation[] = [];
  const out: ConfigFile = { links: [], rules: [] };
  if (!isObj(root))
    throw new ConfigError([{ field: '', description: 'the file must be a mapping with links and/or rules' }]);
  for (const k of Object.keys(root)) {
    if (k !== 'links' && k !== 'rules') problems.push({ field: k, description: 'unknown key (expected links, rules)' });
  }
  const str = (v: unknown, field: string, optional = false): string => {
    if (v === undefined && optional) return '';
    if (typeof v === 'string') return v;
    if (typeof v === 'number' && field.endsWith('ip')) return String(v);
    problems.push({ field, description: optional ? 'must be a string' : 'is required (a string)' });
    return '';
  };
  const strList = (v: unknown, field: string): string[] => {
    if (v === undefined) return [];
    if (typeof v === 'string') return [v];
    if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v as string[];
    problems.push({ field, description: 'must be a string or a list of strings' });
    return [];
  };

  const links = root.links;
  if (isObj(links)) {
    for (const [a, b] of Object.entries(links)) {
      if (typeof b !== 'string') problems.push({ field: `links.${a}`, description: 'must name the peer interface' });
      else out.links.push({ a, b, direction: 'both' });
    }
  } else if (Array.isArray(links)) {
    links.forEach((l, i) => {
      const f = `links[${i}]`;
      if (!isObj(l)) return void problems.push({ field: f, description: 'must be a mapping {a, b, direction}' });
      const direction = l.direction ?? 'both';
      if (direction !== 'both' && direction !== 'a-to-b') {
        problems.push({ field: `${f}.direction`, description: 'must be both or a-to-b' });
      }
      out.links.push({ a: str(l.a, `${f}.a`), b: str(l.b, `${f}.b`), direction: direction as LinkSpec['direction'] });
    });
  } else if (links !== undefined && links !== null) {
    problems.push({ field: 'links', description: 'must be a mapping (eth0: tap0) or a list' });
  }

  const rules = root.rules;
  if (Array.isArray(rules)) {
    rules.forEach((r, i) => {
      const f = `rules[${i}]`;
      if (!isObj(r)) return void problems.push({ field: f, description: 'must be a mapping' });
      for (const k of Object.keys(r))
        if (!RULE_KEYS.has(k)) problems.push({ field: `${f}.${k}`, description: 'unknown key' });
      const port = r.port;
      if (typeof port !== 'number') problems.push({ field: `${f}.port`, description: 'is required (a number)' });
      const protocol = r.protocol ?? 'udp';
      if (protocol !== 'udp') problems.push({ field: `${f}.protocol`, description: 'must be udp' });
      const udpChecksum = r.udpChecksum ?? 'update';
      if (udpChecksum !== 'update' && udpChecksum !== 'zero') {
        problems.push({ field: `${f}.udpChecksum`, description: 'must be update or zero' });
      }
      const backends = Array.isArray(r.backends) ? r.backends : [];
      if (!Array.isArray(r.backends)) problems.push({ field: `${f}.backends`, description: 'is required (a list)' });
      const labels = r.labels ?? {};
      if (!isObj(labels) || !Object.values(labels).every((v) => typeof v === 'string')) {
        problems.push({ field: `${f}.labels`, description: 'must map strings to strings' });
      }
      out.rules.push({
        name: str(r.name, `${f}.name`),
        protocol: 'udp',
        port: typeof port === 'number' ? port : 0,
        destination: str(r.destination, `${f}.destination`, true),
        sourcePrefixes: strList(r.sources, `${f}.sources`),
        ingressInterfaces: strList(r.ingress, `${f}.ingress`),
        backends: backends.map((b: unknown, j: number) => {
          const bf = `${f}.backends[${j}]`;
          if (!isObj(b)) {
            problems.push({ field: bf, description: 'must be a mapping {ip, mac, interface, weight}' });
            return { ip: '', mac: '', interface: '', weight: 1 };
          }
          for (const k of Object.keys(b))
            if (!BACKEND_KEYS.has(k)) problems.push({ field: `${bf}.${k}`, description: 'unknown key' });
          const weight = b.weight ?? 1;
          if (typeof weight !== 'number') problems.push({ field: `${bf}.weight`, description: 'must be a number' });
          return {
            ip: str(b.ip, `${bf}.ip`),
            mac: str(b.mac, `${bf}.mac`, true),
            interface: str(b.interface, `${bf}.interface`),
            weight: typeof weight === 'number' ? weight : 1,
          };
        }),
        udpChecksum: udpChecksum as RuleSpec['udpChecksum'],
        labels: isObj(labels) ? (labels as Record<string, string>) : {},
      });
    });
  } else if (rules !== undefined && rules !== null) {
    problems.push({ field: 'rules', description: 'must be a list' });
  }
  if (problems.length) throw new ConfigError(problems);
  return out;
}
