#!/usr/bin/env node
/**
 * xdpctl: the command-line client of xdpctld. A thin layer over the gRPC API
 * (src/client/index.ts): it parses its own flags, sends requests and prints
 * the answers; every rule about what is valid belongs to the server.
 *
 * Exit codes follow the gRPC status of the failed call (see EXIT_CODES).
 */
import { readFileSync, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import Table from 'cli-table3';
import { Argument, Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { ClientError, createClientFactory, Status, type Metadata } from 'nice-grpc';
import { deadlineMiddleware } from 'nice-grpc-client-middleware-deadline';
import { HealthCheckDefinition } from './health.js';
import YAML from 'yaml';

import { BadRequest, PreconditionFailure } from '../gen/google/rpc/error_details.js';
import { Status as RpcStatus } from '../gen/google/rpc/status.js';
import { ChangeAction, changeActionToJSON } from '../gen/xdpctl/v1/common.js';
import {
  CounterKind,
  GetCountersResponse,
  WatchCountersResponse,
  type Counters,
  type Rates,
} from '../gen/xdpctl/v1/counters.js';
import { GetStatusResponse } from '../gen/xdpctl/v1/daemon.js';
import {
  effectiveXdpModeToJSON,
  GetInterfaceResponse,
  ListInterfacesResponse,
  xdpModeToJSON,
  type ManagedInterface,
} from '../gen/xdpctl/v1/interface.js';
import {
  ApplyLinksResponse,
  ConnectResponse,
  DisconnectResponse,
  LinkDirection,
  Link,
  ListLinksResponse,
} from '../gen/xdpctl/v1/link.js';
import {
  ApplyRulesResponse,
  CreateRuleResponse,
  DeleteRuleResponse,
  GetRuleResponse,
  ListRulesResponse,
  Protocol,
  ruleStateToJSON,
  UdpChecksumMode,
  udpChecksumModeToJSON,
  Rule,
  UpdateRuleResponse,
  type Backend,
} from '../gen/xdpctl/v1/rule.js';
import { ConfigError, parseConfig, type ConfigFile } from '../shared/config-file.js';
import {
  createXdpctlClient,
  DEFAULT_SERVER,
  getAllCounters,
  listAllRules,
  watchCounterSamples,
  type XdpctlClient,
} from './index.js';
import { diagnoseTls } from './tls-diagnose.js';

// ---------------------------------------------------------------------------
// Exit codes

export const EXIT = {
  OK: 0,
  LOCAL: 1,
  USAGE: 2,
  INVALID: 3,
  NOT_FOUND: 4,
  EXISTS: 5,
  PRECONDITION: 6,
  ABORTED: 7,
  EXHAUSTED: 8,
  DENIED: 9,
  UNAVAILABLE: 10,
  DEADLINE: 11,
  OTHER: 12,
} as const;

const EXIT_BY_STATUS: Partial<Record<Status, number>> = {
  [Status.INVALID_ARGUMENT]: EXIT.INVALID,
  [Status.NOT_FOUND]: EXIT.NOT_FOUND,
  [Status.ALREADY_EXISTS]: EXIT.EXISTS,
  [Status.FAILED_PRECONDITION]: EXIT.PRECONDITION,
  [Status.ABORTED]: EXIT.ABORTED,
  [Status.RESOURCE_EXHAUSTED]: EXIT.EXHAUSTED,
  [Status.PERMISSION_DENIED]: EXIT.DENIED,
  [Status.UNAUTHENTICATED]: EXIT.DENIED,
  [Status.UNAVAILABLE]: EXIT.UNAVAILABLE,
  [Status.DEADLINE_EXCEEDED]: EXIT.DEADLINE,
};

const EXIT_HELP = `
Exit codes:
  0   success
  1   local error (file unreadable, ...)
  2   usage error (bad flags or arguments)
  3   invalid argument (the server rejected a field; config file errors)
  4   not found (rule, link or interface)
  5   already exists
  6   failed precondition (conflict; the daemon runs with --config)
  7   aborted: the rule changed since you read it (--generation)
  8   resource exhausted (a datapath table is full)
  9   permission denied or unauthenticated
  10  unavailable (xdpctld unreachable or shutting down)
  11  deadline exceeded (--timeout)
  12  any other error

Environment:
  XDPCTL_SERVER   default for --server (else ${DEFAULT_SERVER})`;

/** An error with its own exit code and a one-line message. */
export class CliError extends Error {
  override readonly name = 'CliError';
  constructor(
    message: string,
    readonly exitCode: number = EXIT.LOCAL,
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------------------
// Flag parsers (usage errors are InvalidArgumentError: commander names the flag)

/** "500ms", "1s", "1.5s", "2m", "1h" -> milliseconds. */
export function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(text.trim());
  if (!m) throw new InvalidArgumentError('expected a duration such as 500ms, 1s or 2m.');
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
  return Math.round(Number(m[1]) * unit);
}

function parseUint(text: string, max = 0xffff_ffff): number {
  if (!/^\d+$/.test(text) || Number(text) > max) throw new InvalidArgumentError('expected a non-negative integer.');
  return Number(text);
}

/** A uint64 (a generation), exact: a bigint, as the generated types carry 64-bit integers. */
function parseUint64(text: string): bigint {
  if (!/^\d+$/.test(text) || BigInt(text) > 0xffff_ffff_ffff_ffffn) {
    throw new InvalidArgumentError('expected a non-negative integer below 2^64.');
  }
  return BigInt(text);
}

function parsePositive(text: string): number {
  const n = parseUint(text);
  if (n === 0) throw new InvalidArgumentError('expected a positive integer.');
  return n;
}

/** Repeatable, comma-separated list ("--ingress a --ingress b,c"). */
function collectList(value: string, previous: string[] | undefined): string[] {
  return [
    ...(previous ?? []),
    ...value
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s !== ''),
  ];
}

/** IP,MAC,IFACE[,WEIGHT]; MAC may be empty (resolved by the daemon). */
function collectBackend(value: string, previous: Backend[] | undefined): Backend[] {
  const parts = value.split(',').map((s) => s.trim());
  if (parts.length !== 3 && parts.length !== 4) {
    throw new InvalidArgumentError(
      `expected IP,MAC,IFACE[,WEIGHT] (${parts.length} parts given; leave MAC empty to resolve it: IP,,IFACE).`,
    );
  }
  const [ip, mac, iface, weight] = parts;
  const b: Backend = { ip, mac, interface: iface };
  if (weight !== undefined) {
    if (!/^\d+$/.test(weight) || Number(weight) > 0xffff_ffff) {
      throw new InvalidArgumentError(`the weight "${weight}" is not a non-negative integer.`);
    }
    b.weight = Number(weight);
  }
  return [...(previous ?? []), b];
}

function collectLabel(value: string, previous: Record<string, string> | undefined): Record<string, string> {
  const i = value.indexOf('=');
  if (i <= 0) throw new InvalidArgumentError('expected key=value.');
  return { ...(previous ?? {}), [value.slice(0, i)]: value.slice(i + 1) };
}

// ---------------------------------------------------------------------------
// Output

type OutputFormat = 'table' | 'json' | 'yaml';

interface GlobalOptions {
  server: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  output: OutputFormat;
  timeout: number;
  debug?: boolean;
}

const NO_BORDER = {
  top: '',
  'top-mid': '',
  'top-left': '',
  'top-right': '',
  bottom: '',
  'bottom-mid': '',
  'bottom-left': '',
  'bottom-right': '',
  left: '',
  'left-mid': '',
  mid: '',
  'mid-mid': '',
  right: '',
  'right-mid': '',
  middle: '   ',
};

/** A table cell; 64-bit counters stay bigints and print exactly. */
type Cell = string | number | bigint;

/** A borderless table (kubectl style) for people. */
export function renderTable(head: string[], rows: Cell[][]): string {
  const t = new Table({
    head,
    chars: NO_BORDER,
    style: { head: [], border: [], 'padding-left': 0, 'padding-right': 0 },
  });
  t.push(...rows.map((r) => r.map(String)));
  return t
    .toString()
    .split('\n')
    .map((l) => l.trimEnd())
    .join('\n');
}

/** Key/value lines ("name:   web"). */
function renderFields(fields: [string, Cell][]): string {
  const w = Math.max(...fields.map(([k]) => k.length)) + 2;
  return fields.map(([k, v]) => `${`${k}:`.padEnd(w)}${v}`).join('\n');
}

function print(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

/** JSON or YAML of a response (already converted with its generated toJSON). */
function printData(format: OutputFormat, data: unknown): void {
  if (format === 'yaml') print(YAML.stringify(data ?? {}));
  else print(JSON.stringify(data ?? {}, null, 2));
}

/**
 * A list response as JSON/YAML with its list always present: proto3 JSON
 * leaves an empty repeated field out, so an empty list would print `{}`;
 * scripts get `{"rules": []}` / `rules: []` instead, like a full one.
 */
function printList(format: OutputFormat, key: string, data: unknown): void {
  const obj = { ...(data as Record<string, unknown>) };
  obj[key] ??= [];
  printData(format, obj);
}

/** A table for people; an empty list prints nothing (not a lone header), so `| wc -l` counts rows. */
function printTable(head: string[], rows: Cell[][]): void {
  if (rows.length) print(renderTable(head, rows));
}

const strip = (name: string, prefix: string) => (name.startsWith(prefix) ? name.slice(prefix.length) : name);
const ruleState = (r: Rule) => strip(ruleStateToJSON(r.status?.state ?? 0), 'RULE_STATE_');
const action = (a: ChangeAction) => strip(changeActionToJSON(a), 'CHANGE_ACTION_').toLowerCase();
const direction = (d: LinkDirection) =>
  d === LinkDirection.LINK_DIRECTION_A_TO_B ? 'a-to-b' : d === LinkDirection.LINK_DIRECTION_BOTH ? 'both' : '-';
const yesNo = (b: boolean | undefined) => (b ? 'yes' : 'no');
const orDash = (s: string | number | undefined) => (s === undefined || s === '' || s === 0 ? '-' : String(s));
const backendText = (b: Backend) => `${b.ip}@${b.interface}*${b.weight ?? 1}`;

function ruleRow(r: Rule): Cell[] {
  return [
    r.name,
    r.match?.port ?? 0,
    r.match?.destination || '*',
    r.match?.sourcePrefixes.length ? r.match.sourcePrefixes.join(',') : '*',
    r.ingressInterfaces.join(','),
    r.backends.length ? r.backends.map(backendText).join(', ') : '-',
    ruleState(r),
    r.generation,
  ];
}

const RULE_HEAD = ['NAME', 'PORT', 'DESTINATION', 'SOURCES', 'INGRESS', 'BACKENDS', 'STATE', 'GEN'];

/** Two parts of one sample as one (WatchCounters sends a large sample in parts, global with the first). */
/** The counters of a GetCounters answer as JSON, lists always present. */
function countersToJson(c: Counters | undefined): unknown {
  const json = c
    ? (GetCountersResponse.toJSON({ counters: c, nextPageToken: '' }) as { counters?: Record<string, unknown> })
        .counters
    : {};
  return { rules: [], backends: [], ...json };
}

function ruleDetails(r: Rule, counters?: Counters): string {
  const fields: [string, Cell][] = [
    ['name', r.name],
    ['port', `${r.match?.port ?? 0}/udp`],
    ['destination', r.match?.destination || '* (any)'],
    ['sources', r.match?.sourcePrefixes.length ? r.match.sourcePrefixes.join(', ') : '* (any)'],
    ['ingress', r.ingressInterfaces.join(', ')],
    ['udp checksum', strip(udpChecksumModeToJSON(r.udpChecksum), 'UDP_CHECKSUM_MODE_').toLowerCase()],
    [
      'labels',
      Object.entries(r.labels)
        .map(([k, v]) => `${k}=${v}`)
        .join(', ') || '-',
    ],
    ['generation', r.generation],
    ['state', ruleState(r) + (r.status?.message ? ` (${r.status.message})` : '')],
    ['created', r.createTime?.toISOString() ?? '-'],
    ['updated', r.updateTime?.toISOString() ?? '-'],
  ];
  for (const w of r.status?.warnings ?? []) fields.push(['warning', w]);
  const rc = counters?.rules.find((x) => x.rule === r.name);
  if (rc) {
    fields.push(
      ['matched', `${rc.matchedPackets} packets, ${bytes(rc.matchedBytes)}`],
      ['redirected', `${rc.redirectedPackets} packets, ${bytes(rc.redirectedBytes)}`],
      ['filtered', `${rc.filteredPackets} packets (source not allowed)`],
      ['no backend', `${rc.noBackendPackets} packets`],
    );
  } else {
    fields.push(['counters', 'none (the rule has no counters in the datapath)']);
  }
  // Backend counters come in the rule's backend order (Counters.backends).
  const bc = counters?.backends.filter((x) => x.rule === r.name) ?? [];
  const backends = renderTable(
    ['BACKEND', 'IP', 'MAC', 'INTERFACE', 'WEIGHT', 'ACTIVE', 'PACKETS', 'BYTES', 'MESSAGE'],
    r.backends.map((b, i) => {
      const s = r.status?.backendStatus[i];
      const c = bc[i]?.ip === b.ip && bc[i]?.interface === b.interface ? bc[i] : undefined;
      return [
        i,
        b.ip,
        s?.mac || b.mac || '-',
        b.interface,
        b.weight ?? 1,
        yesNo(s?.active),
        c ? String(c.packets) : '-',
        c ? bytes(c.bytes) : '-',
        s?.message || '',
      ];
    }),
  );
  return `${renderFields(fields)}\n\n${r.backends.length ? backends : 'no backends'}`;
}

function linkName(l: { a: string; b: string; direction?: LinkDirection }): string {
  return `${l.a} ${l.direction === LinkDirection.LINK_DIRECTION_A_TO_B ? '->' : '<->'} ${l.b}`;
}

function interfaceRow(i: ManagedInterface): Cell[] {
  return [
    i.name,
    i.present ? i.ifindex : '-',
    strip(xdpModeToJSON(i.requestedMode), 'XDP_MODE_'),
    strip(effectiveXdpModeToJSON(i.effectiveMode), 'EFFECTIVE_XDP_MODE_'),
    orDash(i.programId),
    i.usedBy.join(',') || '-',
    i.warnings.join('; '),
  ];
}

const INTERFACE_HEAD = ['NAME', 'IFINDEX', 'REQUESTED', 'EFFECTIVE', 'PROGRAM', 'USED BY', 'WARNINGS'];

function si(n: number, unit = ''): string {
  const steps = ['', 'k', 'M', 'G', 'T'];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < steps.length - 1) {
    n /= 1000;
    i++;
  }
  const v = i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 2 : 1);
  return unit ? `${v} ${steps[i]}${unit}` : `${v}${steps[i]}`;
}

/** A byte count for people: exact below 1 KiB, else scaled to one decimal (KiB ... EiB). */
function bytes(count: bigint | number): string {
  if (BigInt(count) < 1024n) return `${count} B`;
  const steps = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  let n = Number(count);
  let i = 0;
  while (n >= 1024 && i < steps.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(1)} ${steps[i]}`;
}

const pps = (r: Rates | undefined) => (r ? si(r.pps) : '-');
const bps = (r: Rates | undefined) => (r ? si(r.bps, 'b/s') : '-');

function countersText(c: Counters, header: string): string {
  const parts = [header];
  if (c.rules.length) {
    parts.push(
      renderTable(
        ['RULE', 'PACKETS', 'BYTES', 'PPS', 'BPS', 'REDIRECTED', 'FILTERED', 'NO BACKEND', 'REDIRECT ERRORS'],
        c.rules.map((r) => [
          r.rule,
          r.matchedPackets,
          bytes(r.matchedBytes),
          pps(r.matchedRates),
          bps(r.matchedRates),
          r.redirectedPackets,
          r.filteredPackets,
          r.noBackendPackets,
          r.redirectErrorPackets,
        ]),
      ),
    );
  }
  if (c.backends.length) {
    parts.push(
      renderTable(
        ['RULE', 'BACKEND', 'PACKETS', 'BYTES', 'PPS', 'BPS', 'REDIRECT ERRORS'],
        c.backends.map((b) => [
          b.rule,
          `${b.ip}@${b.interface}`,
          b.packets,
          bytes(b.bytes),
          pps(b.rates),
          bps(b.rates),
          b.redirectErrorPackets,
        ]),
      ),
    );
  }
  if (c.links.length) {
    parts.push(
      renderTable(
        ['FROM', 'TO', 'PACKETS', 'BYTES', 'PPS', 'BPS', 'REDIRECT ERRORS'],
        c.links.map((l) => [
          l.fromInterface,
          l.toInterface,
          l.packets,
          bytes(l.bytes),
          pps(l.rates),
          bps(l.rates),
          l.redirectErrorPackets,
        ]),
      ),
    );
  }
  if (c.global) {
    const kv = (m: Record<string, bigint>) =>
      Object.entries(m)
        .map(([k, v]) => `${k}=${v}`)
        .join(' ') || '-';
    parts.push(`verdicts: ${kv(c.global.verdicts)}\nerrors:   ${kv(c.global.errors)}`);
  }
  if (parts.length === 1) parts.push('(no counters match)');
  return parts.join('\n\n');
}

function formatDuration(seconds: number): string {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const parts = [d && `${d}d`, h && `${h}h`, m && `${m}m`, `${s % 60}s`].filter(Boolean);
  return parts.join('');
}

// ---------------------------------------------------------------------------
// Calls and errors

/** One CLI invocation's connection and call options. */
class Session {
  readonly client: XdpctlClient;
  /** Trailer of the last call (for google.rpc.Status details). */
  trailer: Metadata | undefined;

  constructor(readonly opts: GlobalOptions) {
    const tls = loadTls(opts);
    this.client = createXdpctlClient({ address: opts.server, tls });
  }

  /** Options for a unary call: the --timeout deadline and the trailer. */
  call(): { deadline: Date; onTrailer: (md: Metadata) => void } {
    return { deadline: new Date(Date.now() + this.opts.timeout), onTrailer: (md) => (this.trailer = md) };
  }

  health() {
    return createClientFactory().use(deadlineMiddleware).create(HealthCheckDefinition, this.client.channel);
  }

  close(): void {
    this.client.close();
  }
}

function readLocal(file: string, what: string): Buffer {
  try {
    return file === '-' ? readFileSync(0) : readFileSync(file);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new CliError(`cannot read ${what} ${file}: ${err.code ?? err.message}`, EXIT.LOCAL);
  }
}

function loadTls(o: GlobalOptions): { ca?: Buffer; cert?: Buffer; key?: Buffer } | undefined {
  if (!o.tlsCa && !o.tlsCert && !o.tlsKey) return undefined;
  if (!o.tlsCert !== !o.tlsKey) throw new CliError('--tls-cert and --tls-key go together', EXIT.USAGE);
  return {
    ca: o.tlsCa ? readLocal(o.tlsCa, '--tls-ca') : undefined,
    cert: o.tlsCert ? readLocal(o.tlsCert, '--tls-cert') : undefined,
    key: o.tlsKey ? readLocal(o.tlsKey, '--tls-key') : undefined,
  };
}

/** Field violations from the grpc-status-details-bin trailer ("field: description"). */
export function detailLines(trailer: Metadata | undefined): { bad: string[]; precondition: string[] } {
  const out = { bad: [] as string[], precondition: [] as string[] };
  const raw = trailer?.get('grpc-status-details-bin');
  if (!(raw instanceof Uint8Array)) return out;
  try {
    for (const d of RpcStatus.decode(raw).details) {
      if (d.typeUrl.endsWith('/google.rpc.BadRequest')) {
        for (const v of BadRequest.decode(d.value).fieldViolations) {
          out.bad.push(v.field ? `${v.field}: ${v.description}` : v.description);
        }
      } else if (d.typeUrl.endsWith('/google.rpc.PreconditionFailure')) {
        for (const v of PreconditionFailure.decode(d.value).violations) {
          out.precondition.push(v.subject ? `${v.subject}: ${v.description}` : v.description);
        }
      }
    }
  } catch {
    /* undecodable details: the message alone will do */
  }
  return out;
}

/** A gRPC failure as one line and an exit code. */
export function describeClientError(
  e: ClientError,
  server: string,
  trailer: Metadata | undefined,
  timeoutMs?: number,
): { message: string; exitCode: number } {
  const exitCode = EXIT_BY_STATUS[e.code] ?? EXIT.OTHER;
  const details = e.details.replace(/\s*\n\s*/g, ' ').trim();
  switch (e.code) {
    case Status.INVALID_ARGUMENT: {
      const { bad } = detailLines(trailer);
      return { message: bad.length ? bad.join('; ') : details, exitCode };
    }
    case Status.FAILED_PRECONDITION: {
      const { precondition } = detailLines(trailer);
      const extra = precondition.filter((p) => !details.includes(p.replace(/^[^:]*: /, '')));
      return { message: [details, ...extra].join('; '), exitCode };
    }
    case Status.ABORTED:
      return {
        message: /changed since you read it/.test(details)
          ? `${details} (read it again and retry)`
          : `${details}: changed since you read it (read it again and retry)`,
        exitCode,
      };
    case Status.UNAVAILABLE: {
      if (/SSL routines|certificate|handshake/i.test(details)) {
        const why = /alert certificate required/.test(details)
          ? 'the server requires a client certificate (--tls-cert, --tls-key)'
          : /certificate verify failed|self[- ]signed|unable to get (local )?issuer/i.test(details)
            ? 'the server certificate is not trusted (--tls-ca)'
            : /wrong version number|packet length too long|http request/i.test(details)
              ? 'the server does not speak TLS on this port (drop --tls-*)'
              : (/error:[0-9A-F]+:SSL routines:[^:]*:([^:]+)/.exec(details)?.[1] ?? 'handshake failed');
        return { message: `TLS with xdpctld at ${server} failed: ${why}`, exitCode };
      }
      const m = /\b(ECONNREFUSED|ENOENT|EACCES|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT|ENOTFOUND|EAI_AGAIN)\b/.exec(details);
      if (m || /No connection established|Failed to connect|Name resolution failed/i.test(details)) {
        const reason =
          {
            ECONNREFUSED: 'connection refused',
            ENOENT: 'no such socket',
            EACCES: 'permission denied',
            EHOSTUNREACH: 'host unreachable',
            ENETUNREACH: 'network unreachable',
            ETIMEDOUT: 'connection timed out',
            ENOTFOUND: 'unknown host',
            EAI_AGAIN: 'name resolution failed',
          }[m?.[1] ?? ''] ?? (/Name resolution failed/i.test(details) ? 'name resolution failed' : details);
        return {
          message: `cannot reach xdpctld at ${server} (${reason}); is it running? (--server, XDPCTL_SERVER)`,
          exitCode,
        };
      }
      return { message: `xdpctld at ${server} is unavailable: ${details}`, exitCode };
    }
    case Status.DEADLINE_EXCEEDED:
      return {
        message: `no answer from xdpctld at ${server} within ${timeoutMs === undefined ? 'the deadline' : `${timeoutMs}ms`} (--timeout)`,
        exitCode,
      };
    case Status.UNAUTHENTICATED:
    case Status.PERMISSION_DENIED:
      return { message: `${Status[e.code].toLowerCase().replace(/_/g, ' ')}: ${details}`, exitCode };
    default:
      // Codes with their own exit code speak for themselves; others say which they are.
      return { message: exitCode === EXIT.OTHER ? `${details || 'failed'} (${Status[e.code]})` : details, exitCode };
  }
}

function isAbort(e: unknown): boolean {
  return e instanceof Error && e.name === 'AbortError';
}

// ---------------------------------------------------------------------------
// Requests built from flags and files

interface RuleFlags {
  port?: number;
  ingress?: string[];
  dest?: string;
  source?: string[];
  backend?: Backend[];
  udpChecksum?: 'update' | 'zero';
  label?: Record<string, string>;
  generation?: number;
}

const CHECKSUM = { update: UdpChecksumMode.UDP_CHECKSUM_MODE_UPDATE, zero: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO };

function ruleFromFlags(name: string, f: RuleFlags): Rule {
  return {
    name,
    match: {
      protocol: Protocol.PROTOCOL_UDP,
      port: f.port ?? 0,
      destination: f.dest ?? '',
      sourcePrefixes: f.source ?? [],
    },
    ingressInterfaces: f.ingress ?? [],
    backends: f.backend ?? [],
    udpChecksum: f.udpChecksum ? CHECKSUM[f.udpChecksum] : UdpChecksumMode.UDP_CHECKSUM_MODE_UNSPECIFIED,
    labels: f.label ?? {},
    generation: 0n,
  };
}

/** The current rule with the given flags replacing its fields (output-only fields dropped). */
function ruleWithFlags(cur: Rule, f: RuleFlags): Rule {
  return {
    name: cur.name,
    match: {
      protocol: cur.match?.protocol ?? Protocol.PROTOCOL_UDP,
      port: f.port ?? cur.match?.port ?? 0,
      destination: f.dest ?? cur.match?.destination ?? '',
      sourcePrefixes: f.source ?? cur.match?.sourcePrefixes ?? [],
    },
    ingressInterfaces: f.ingress ?? cur.ingressInterfaces,
    backends: f.backend ?? cur.backends,
    udpChecksum: f.udpChecksum ? CHECKSUM[f.udpChecksum] : cur.udpChecksum,
    labels: f.label ?? cur.labels,
    generation: 0n,
  };
}

function ruleFromSpec(r: ConfigFile['rules'][number]): Rule {
  return {
    name: r.name,
    match: {
      protocol: Protocol.PROTOCOL_UDP,
      port: r.port,
      destination: r.destination,
      sourcePrefixes: r.sourcePrefixes,
    },
    ingressInterfaces: r.ingressInterfaces,
    backends: r.backends.map((b) => ({ ip: b.ip, mac: b.mac, interface: b.interface, weight: b.weight })),
    udpChecksum: CHECKSUM[r.udpChecksum],
    labels: r.labels,
    generation: 0n,
  };
}

function linkFromSpec(l: ConfigFile['links'][number]): Link {
  return {
    a: l.a,
    b: l.b,
    direction: l.direction === 'a-to-b' ? LinkDirection.LINK_DIRECTION_A_TO_B : LinkDirection.LINK_DIRECTION_BOTH,
  };
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Whether a file's `section` is in the API's JSON form (what `rules list` /
 * `links list` print with -o yaml or -o json), rather than the config-file
 * form: a rule with `match:`, a link whose direction is an enum name.
 */
function apiForm(root: unknown, section: 'rules' | 'links'): unknown[] | undefined {
  if (!isObj(root) || !Array.isArray(root[section])) return undefined;
  const list = root[section] as unknown[];
  const api =
    section === 'rules'
      ? list.some((r) => isObj(r) && 'match' in r)
      : list.some((l) => isObj(l) && ('status' in l || String(l.direction ?? '').startsWith('LINK_DIRECTION_')));
  return api ? list : undefined;
}

/** A rule as the API prints it, output-only fields (generation, status, times) dropped. */
function ruleFromApi(json: unknown): Rule {
  const { name, match, ingressInterfaces, backends, udpChecksum, labels } = Rule.fromJSON(json);
  return { name, match, ingressInterfaces, backends, udpChecksum, labels, generation: 0n };
}

/** A link as the API prints it, status dropped. */
function linkFromApi(json: unknown): Link {
  const { a, b, direction } = Link.fromJSON(json);
  return { a, b, direction };
}

/**
 * The rules of a file for rules apply: the config-file form (xdpctld
 * --config) or the API form that `rules list -o yaml|json` prints, so that
 * list -> edit -> apply round-trips. Validation is the server's.
 */
function loadRules(file: string): Rule[] {
  const text = readLocal(file, 'file').toString('utf8');
  const api = apiForm(parseLoose(text), 'rules');
  return api ? api.map(ruleFromApi) : loadConfig(file, 'rules', text).rules.map(ruleFromSpec);
}

/** The links of a file for links apply (config-file form or what `links list -o yaml|json` prints). */
function loadLinks(file: string): Link[] {
  const text = readLocal(file, 'file').toString('utf8');
  const api = apiForm(parseLoose(text), 'links');
  return api ? api.map(linkFromApi) : loadConfig(file, 'links', text).links.map(linkFromSpec);
}

/** YAML (JSON is YAML) without throwing: the strict parser reports problems. */
function parseLoose(text: string): unknown {
  try {
    return YAML.parse(text, { maxAliasCount: 100 });
  } catch {
    return undefined;
  }
}

/** Read and parse a config file; `section` must be present (an empty list deletes everything). */
function loadConfig(
  file: string,
  section: 'rules' | 'links',
  text = readLocal(file, 'file').toString('utf8'),
): ConfigFile {
  let cfg: ConfigFile;
  try {
    cfg = parseConfig(text);
  } catch (e) {
    if (e instanceof ConfigError) throw new CliError(`${file}: ${e.message}`, EXIT.INVALID);
    throw e;
  }
  const root: unknown = YAML.parse(text);
  if (typeof root !== 'object' || root === null || !(section in root)) {
    throw new CliError(
      `${file} has no "${section}:" section; nothing to apply (write "${section}: []" to delete every ${section.slice(0, -1)})`,
      EXIT.INVALID,
    );
  }
  return cfg;
}

function summary(actions: ChangeAction[], applied: boolean): string {
  const n = (a: ChangeAction) => actions.filter((x) => x === a).length;
  const [c, u, d, same] = [
    n(ChangeAction.CHANGE_ACTION_CREATE),
    n(ChangeAction.CHANGE_ACTION_UPDATE),
    n(ChangeAction.CHANGE_ACTION_DELETE),
    n(ChangeAction.CHANGE_ACTION_UNCHANGED),
  ];
  return applied
    ? `applied: ${c} created, ${u} updated, ${d} deleted, ${same} unchanged`
    : `dry run, nothing applied: ${c} to create, ${u} to update, ${d} to delete, ${same} unchanged`;
}

// ---------------------------------------------------------------------------
// The command tree

type Action = (s: Session, o: GlobalOptions, args: string[], flags: Record<string, unknown>) => Promise<void>;

/** Wrap an action: open a session with the global options, always close it. */
function run(fn: Action) {
  return async (...params: unknown[]): Promise<void> => {
    const cmd = params[params.length - 1] as Command;
    const flags = params[params.length - 2] as Record<string, unknown>;
    const args = params.slice(0, -2).map((a) => a as string);
    const o = cmd.optsWithGlobals<GlobalOptions>();
    const s = new Session(o);
    current = s;
    try {
      await fn(s, o, args, flags);
    } finally {
      s.close();
    }
  };
}

/** The session of the running command (for error details). */
let current: Session | undefined;

function examples(lines: string): string {
  return `\nExamples:\n${lines
    .trim()
    .split('\n')
    .map((l) => `  ${l.trim()}`)
    .join('\n')}\n`;
}

function ruleOptions(cmd: Command, update: boolean): Command {
  const port = new Option('--port <port>', 'UDP destination port (1-65535)').argParser((v) => parseUint(v));
  const ingress = new Option(
    '--ingress <iface>',
    'ingress interface; repeat or comma-separate for several' + (update ? ' (replaces the list)' : ''),
  ).argParser(collectList);
  if (update) cmd.addOption(port).addOption(ingress);
  else {
    port.description += ' (required)';
    ingress.description += ' (required)';
    cmd.addOption(port.makeOptionMandatory()).addOption(ingress.makeOptionMandatory());
  }
  return cmd
    .option('--dest <ip>', 'destination address to match (empty: any)')
    .addOption(
      new Option(
        '--source <prefix>',
        'source prefix to accept (CIDR or address); repeatable' + (update ? ' (replaces the list; "" for any)' : ''),
      ).argParser(collectList),
    )
    .addOption(
      new Option(
        '--backend <ip,mac,iface[,weight]>',
        'backend; repeatable; MAC may be empty (IP,,IFACE) to resolve it from the neighbour table' +
          (update ? ' (replaces the whole list)' : ''),
      ).argParser(collectBackend),
    )
    .addOption(new Option('--udp-checksum <mode>', 'UDP checksum handling').choices(['update', 'zero']))
    .addOption(
      new Option('--label <key=value>', 'label; repeatable' + (update ? ' (replaces all labels)' : '')).argParser(
        collectLabel,
      ),
    );
}

export function buildProgram(version = '0.0.0'): Command {
  const program = new Command('xdpctl');
  program
    .description('Command-line client of xdpctld, the XDP datapath control plane.')
    .version(version, '-V, --version', 'print the client version')
    .addOption(
      new Option('--server <addr>', 'xdpctld address: host:port or unix:/path')
        .env('XDPCTL_SERVER')
        .default(DEFAULT_SERVER),
    )
    .option('--tls-ca <file>', 'PEM CA certificate to trust (enables TLS)')
    .option('--tls-cert <file>', 'PEM client certificate (mutual TLS, with --tls-key)')
    .option('--tls-key <file>', 'PEM client key (mutual TLS, with --tls-cert)')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['table', 'json', 'yaml']).default('table'))
    .addOption(
      new Option('--timeout <duration>', 'deadline of each call (500ms, 10s, 2m)')
        .argParser(parseDuration)
        .default(10_000, '10s'),
    )
    .option('--debug', 'print stack traces on errors')
    .showSuggestionAfterError(true)
    .configureHelp({ showGlobalOptions: true })
    .exitOverride()
    .configureOutput({
      outputError: (str, write) => write(`xdpctl: ${oneLine(str.replace(/^error: /, ''))}\n`),
    })
    .addHelpText(
      'after',
      `${examples(`
        xdpctl rules add web --port 7999 --source 192.168.122.10 --backend 172.17.0.2,02:42:ac:11:00:02,veth25 --ingress eth0
        xdpctl rules list
        xdpctl -o json rules get web
        xdpctl links connect eth0 tap0
        xdpctl --server unix:/run/xdpctl/xdpctl.sock status
        xdpctl watch rules`)}${EXIT_HELP}`,
    );

  // --- rules
  const rules = program.command('rules').description('manage UDP redirect rules');
  rules
    .command('list')
    .alias('ls')
    .description('list the rules')
    .addHelpText('after', examples('xdpctl rules list\nxdpctl -o yaml rules list'))
    .action(
      run(async (s, o) => {
        const all = await listAllRules(s.client.rules, s.call());
        if (o.output !== 'table') {
          return printList(o.output, 'rules', ListRulesResponse.toJSON({ rules: all, nextPageToken: '' }));
        }
        printTable(RULE_HEAD, all.map(ruleRow));
      }),
    );

  rules
    .command('get')
    .description("show one rule with its status and counters (the rule's and each backend's)")
    .argument('<name>', 'rule name')
    .addHelpText('after', examples('xdpctl rules get web\nxdpctl -o json rules get web'))
    .action(
      run(async (s, o, [name]) => {
        const res = await s.client.rules.getRule({ name }, s.call());
        const counters = await getAllCounters(
          s.client.counters,
          { kinds: [CounterKind.COUNTER_KIND_RULES, CounterKind.COUNTER_KIND_BACKENDS], rules: [name] },
          s.call(),
        );
        if (o.output !== 'table') {
          return printData(o.output, {
            ...(GetRuleResponse.toJSON(res) as object),
            counters: countersToJson(counters),
          });
        }
        print(ruleDetails(res.rule!, counters));
      }),
    );

  ruleOptions(
    rules
      .command('add')
      .alias('create')
      .description('create a rule')
      .argument('<name>', 'rule name (a lowercase DNS label)'),
    false,
  )
    .addHelpText(
      'after',
      examples(`
        xdpctl rules add web --port 7999 --source 192.168.122.10 --backend 172.17.0.2,02:42:ac:11:00:02,veth25 --ingress eth0
        xdpctl rules add dns --port 53 --ingress eth0,eth1 --backend 10.0.0.2,,veth1 --backend 10.0.0.3,,veth2,3
        xdpctl rules add syslog --port 514 --dest 192.0.2.1 --ingress eth0 --backend 10.0.0.9,,veth9 --udp-checksum zero --label owner=ops`),
    )
    .action(
      run(async (s, o, [name], f) => {
        const res = await s.client.rules.createRule({ rule: ruleFromFlags(name, f as RuleFlags) }, s.call());
        if (o.output !== 'table') return printData(o.output, CreateRuleResponse.toJSON(res));
        print(`rule ${res.rule!.name} created (generation ${res.rule!.generation})${stateNote(res.rule!)}`);
      }),
    );

  ruleOptions(
    rules
      .command('update')
      .description('change a rule: the given flags replace the current values, the others are kept')
      .argument('<name>', 'rule name'),
    true,
  )
    .option(
      '--generation <n>',
      'update only if the rule is still at this generation (default: the one read)',
      parseUint64,
    )
    .addHelpText(
      'after',
      examples(`
        xdpctl rules update web --backend 172.17.0.2,,veth25 --backend 172.17.0.3,,veth26
        xdpctl rules update web --port 8000 --generation 3
        xdpctl rules update web --source ""        # accept any source`),
    )
    .action(
      run(async (s, o, [name], flags) => {
        const f = flags as RuleFlags;
        const { generation, ...changes } = f;
        if (!Object.values(changes).some((v) => v !== undefined)) {
          throw new CliError(
            'rules update: nothing to change (give --port, --ingress, --dest, --source, --backend, --udp-checksum or --label)',
            EXIT.USAGE,
          );
        }
        const cur = (await s.client.rules.getRule({ name }, s.call())).rule!;
        const res = await s.client.rules.updateRule(
          { rule: ruleWithFlags(cur, f), expectedGeneration: generation ?? cur.generation },
          s.call(),
        );
        if (o.output !== 'table') return printData(o.output, UpdateRuleResponse.toJSON(res));
        const r = res.rule!;
        const verb = r.generation === cur.generation ? 'unchanged' : 'updated';
        print(`rule ${r.name} ${verb} (generation ${r.generation})${stateNote(r)}`);
      }),
    );

  rules
    .command('delete')
    .alias('rm')
    .description('delete a rule')
    .argument('<name>', 'rule name')
    .option('--generation <n>', 'delete only if the rule is still at this generation', parseUint64)
    .addHelpText('after', examples('xdpctl rules delete web\nxdpctl rules delete web --generation 4'))
    .action(
      run(async (s, o, [name], f) => {
        const res = await s.client.rules.deleteRule(
          { name, expectedGeneration: (f.generation as bigint | undefined) ?? 0n },
          s.call(),
        );
        if (o.output !== 'table') return printData(o.output, DeleteRuleResponse.toJSON(res));
        print(`rule ${name} deleted`);
      }),
    );

  rules
    .command('apply')
    .description(
      'declaratively set every rule from the "rules:" section of a config file (the format of xdpctld --config); ' +
        'rules not in the file are deleted',
    )
    .requiredOption('-f, --file <file>', 'YAML config file ("-" for stdin)')
    .option('--dry-run', 'validate and show the changes without applying them')
    .addHelpText(
      'after',
      `${examples(
        'xdpctl rules apply -f xdpctl.yaml --dry-run\nxdpctl rules apply -f xdpctl.yaml\n' +
          'xdpctl -o yaml rules list > rules.yaml   # edit, then: xdpctl rules apply -f rules.yaml',
      )}
The output of "rules list -o yaml" (or -o json) is accepted as is: output-only
fields (generation, status, times) are ignored.
File format (only "rules:" is used; "rules: []" deletes every rule):
  rules:
    - name: web
      port: 7999
      sources: [192.168.122.10]
      ingress: [eth0]
      backends:
        - {ip: 172.17.0.2, mac: "02:42:ac:11:00:02", interface: veth25, weight: 1}
`,
    )
    .action(
      run(async (s, o, _args, f) => {
        const res = await s.client.rules.applyRules(
          { rules: loadRules(f.file as string), validateOnly: Boolean(f.dryRun) },
          s.call(),
        );
        if (o.output !== 'table') return printList(o.output, 'changes', ApplyRulesResponse.toJSON(res));
        printTable(
          ['NAME', 'ACTION'],
          res.changes.map((c) => [c.name, action(c.action)]),
        );
        print(
          summary(
            res.changes.map((c) => c.action),
            res.applied,
          ),
        );
      }),
    );

  // --- links
  const links = program.command('links').description('manage cross-connects between interfaces');
  links
    .command('list')
    .alias('ls')
    .description('list the links')
    .addHelpText('after', examples('xdpctl links list\nxdpctl -o json links list'))
    .action(
      run(async (s, o) => {
        const res = await s.client.links.listLinks({}, s.call());
        if (o.output !== 'table') return printList(o.output, 'links', ListLinksResponse.toJSON(res));
        printTable(
          ['A', 'B', 'DIRECTION', 'A→B', 'B→A', 'WARNINGS'],
          res.links.map((l) => [
            l.a,
            l.b,
            direction(l.direction),
            yesNo(l.status?.aToBActive),
            l.direction === LinkDirection.LINK_DIRECTION_A_TO_B ? '-' : yesNo(l.status?.bToAActive),
            l.status?.warnings.join('; ') ?? '',
          ]),
        );
      }),
    );

  links
    .command('connect')
    .description('wire two interfaces together (both directions unless --one-way)')
    .argument('<a>', 'first interface')
    .argument('<b>', 'second interface')
    .option('--one-way', 'forward only frames arriving on A (out of B)')
    .addHelpText('after', examples('xdpctl links connect eth0 tap0\nxdpctl links connect eth1 tap1 --one-way'))
    .action(
      run(async (s, o, [a, b], f) => {
        const dir = f.oneWay ? LinkDirection.LINK_DIRECTION_A_TO_B : LinkDirection.LINK_DIRECTION_BOTH;
        const res = await s.client.links.connect({ link: { a, b, direction: dir } }, s.call());
        if (o.output !== 'table') return printData(o.output, ConnectResponse.toJSON(res));
        const warn = res.link?.status?.warnings.length ? ` (warning: ${res.link.status.warnings.join('; ')})` : '';
        print(`link ${linkName(res.link ?? { a, b, direction: dir })} connected${warn}`);
      }),
    );

  links
    .command('disconnect')
    .description('remove the link between two interfaces (in either order)')
    .argument('<a>', 'one interface')
    .argument('<b>', 'the other interface')
    .addHelpText('after', examples('xdpctl links disconnect eth0 tap0'))
    .action(
      run(async (s, o, [a, b]) => {
        const res = await s.client.links.disconnect({ a, b }, s.call());
        if (o.output !== 'table') return printData(o.output, DisconnectResponse.toJSON(res));
        print(`link ${a} ${b} disconnected`);
      }),
    );

  links
    .command('apply')
    .description(
      'declaratively set every link from the "links:" section of a config file (the xdp-xconnect format is ' +
        'accepted); links not in the file are removed',
    )
    .requiredOption('-f, --file <file>', 'YAML config file ("-" for stdin)')
    .option('--dry-run', 'validate and show the changes without applying them')
    .addHelpText(
      'after',
      `${examples('xdpctl links apply -f xconnect.yaml --dry-run\nxdpctl links apply -f xconnect.yaml')}
The output of "links list -o yaml" (or -o json) is accepted as is (status ignored).
File format (only "links:" is used; "links: []" removes every link):
  links:
    eth0: tap0                        # both directions
  # or a list:
  #  - {a: eth1, b: tap1, direction: a-to-b}
`,
    )
    .action(
      run(async (s, o, _args, f) => {
        const res = await s.client.links.applyLinks(
          { links: loadLinks(f.file as string), validateOnly: Boolean(f.dryRun) },
          s.call(),
        );
        if (o.output !== 'table') return printList(o.output, 'changes', ApplyLinksResponse.toJSON(res));
        printTable(
          ['A', 'B', 'ACTION'],
          res.changes.map((c) => [c.a, c.b, action(c.action)]),
        );
        print(
          summary(
            res.changes.map((c) => c.action),
            res.applied,
          ),
        );
      }),
    );

  // --- interfaces
  const interfaces = program.command('interfaces').alias('if').description('show the interfaces xdpctld manages');
  interfaces
    .command('list')
    .alias('ls')
    .description('list the managed interfaces and their XDP program')
    .addHelpText('after', examples('xdpctl interfaces list'))
    .action(
      run(async (s, o) => {
        const res = await s.client.interfaces.listInterfaces({}, s.call());
        if (o.output !== 'table') return printList(o.output, 'interfaces', ListInterfacesResponse.toJSON(res));
        printTable(INTERFACE_HEAD, res.interfaces.map(interfaceRow));
      }),
    );
  interfaces
    .command('get')
    .description('show one managed interface')
    .argument('<name>', 'interface name')
    .addHelpText('after', examples('xdpctl interfaces get eth0'))
    .action(
      run(async (s, o, [name]) => {
        const res = await s.client.interfaces.getInterface({ name }, s.call());
        if (o.output !== 'table') return printData(o.output, GetInterfaceResponse.toJSON(res));
        print(renderTable(INTERFACE_HEAD, [interfaceRow(res.interface!)]));
      }),
    );

  // --- watch
  program
    .command('watch')
    .description(
      'stream the datapath counters: a live table on a terminal; one JSON object per line (NDJSON) when stdout ' +
        'is not a terminal or with -o json',
    )
    .addArgument(new Argument('[kind]', 'which counters (default: all)').choices(['rules', 'links', 'backends']))
    .addOption(
      new Option('--interval <duration>', 'time between samples (100ms to 60s)')
        .argParser(parseDuration)
        .default(1000, '1s'),
    )
    .addOption(new Option('--rule <name>', 'only these rules; repeatable').argParser(collectList))
    .addOption(
      new Option('--interface <iface>', 'only links from or to these interfaces; repeatable').argParser(collectList),
    )
    .option('--count <n>', 'stop after N samples', parsePositive)
    .addHelpText(
      'after',
      examples(`
        xdpctl watch
        xdpctl watch rules --interval 500ms
        xdpctl watch backends --rule web
        xdpctl watch rules --count 5 -o json | jq .counters.rules`),
    )
    .action(
      run(async (s, o, [kind], f) => {
        const kinds =
          {
            rules: [CounterKind.COUNTER_KIND_RULES],
            backends: [CounterKind.COUNTER_KIND_BACKENDS],
            links: [CounterKind.COUNTER_KIND_LINKS],
          }[kind as 'rules'] ?? [];
        const interval = f.interval as number;
        const count = f.count as number | undefined;
        const live = o.output === 'table' && process.stdout.isTTY === true;
        const ac = new AbortController();
        const stop = () => ac.abort();
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
        let n = 0;
        try {
          const stream = watchCounterSamples(
            s.client.counters,
            {
              filter: { kinds, rules: (f.rule as string[]) ?? [], interfaces: (f.interface as string[]) ?? [] },
              interval: { seconds: BigInt(Math.floor(interval / 1000)), nanos: (interval % 1000) * 1_000_000 },
            },
            { signal: ac.signal, onTrailer: (md: Metadata) => (s.trailer = md) },
          );
          // A sample too large for one message comes in parts (continued): each is printed whole.
          for await (const sample of stream) {
            const msg: WatchCountersResponse = { counters: sample, continued: false, changesOnly: false };
            if (live) {
              const when = msg.counters?.time?.toLocaleTimeString() ?? '';
              const head = `xdpctl watch ${kind ?? 'all'}: ${o.server}, every ${interval}ms, ${when} (Ctrl-C to stop)`;
              process.stdout.write(`\x1b[H\x1b[2J${countersText(msg.counters!, head)}\n`);
            } else if (o.output === 'yaml') {
              print(`---\n${YAML.stringify(WatchCountersResponse.toJSON(msg))}`);
            } else {
              print(JSON.stringify(WatchCountersResponse.toJSON(msg)));
            }
            if (count !== undefined && ++n >= count) break;
          }
        } catch (e) {
          if (!(isAbort(e) && ac.signal.aborted)) throw e;
        } finally {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
        }
      }),
    );

  // --- status
  program
    .command('status')
    .description("the daemon's version, health and datapath summary")
    .addHelpText('after', examples('xdpctl status\nxdpctl --server unix:/run/xdpctl/xdpctl.sock -o json status'))
    .action(
      run(async (s, o) => {
        const res = await s.client.daemon.getStatus({}, s.call());
        const health = s.health();
        const check = async (service: string): Promise<string> => {
          try {
            const h = await health.check({ service }, s.call());
            return HEALTH[h.status] ?? String(h.status);
          } catch (e) {
            if (e instanceof ClientError && e.code === Status.NOT_FOUND) return 'SERVICE_UNKNOWN';
            throw e;
          }
        };
        const healthBy = { '': await check(''), 'xdpctl.datapath': await check('xdpctl.datapath') };
        if (o.output !== 'table') {
          return printData(o.output, { ...(GetStatusResponse.toJSON(res) as object), health: healthBy });
        }
        const d = res.datapath;
        print(
          renderFields([
            ['server', o.server],
            ['version', res.version],
            ['serving', yesNo(res.serving)],
            ['health', healthBy['']],
            ['datapath health', healthBy['xdpctl.datapath']],
            ['program id', orDash(d?.programId)],
            ['pin path', orDash(d?.pinPath)],
            ['rules', d?.ruleCount ?? 0],
            ['links', d?.linkCount ?? 0],
            ['interfaces', d?.interfaceCount ?? 0],
            ['uptime', res.uptime ? formatDuration(Number(res.uptime.seconds)) : '-'],
          ]),
        );
      }),
    );

  // --- health (for probes: exit 0 only when SERVING)
  program
    .command('health')
    .description('gRPC health check; exits 0 when SERVING, 10 otherwise (for liveness/readiness probes)')
    .option('--service <name>', 'health service: "" (the daemon) or xdpctl.datapath (its interfaces)', '')
    .addHelpText(
      'after',
      examples('xdpctl --server unix:/run/xdpctl/xdpctl.sock health\nxdpctl health --service xdpctl.datapath'),
    )
    .action(
      run(async (s, o, _args, flags) => {
        const service = String(flags.service ?? '');
        let status: string;
        try {
          const h = await s.health().check({ service }, s.call());
          status = HEALTH[h.status] ?? String(h.status);
        } catch (e) {
          if (!(e instanceof ClientError) || e.code !== Status.NOT_FOUND) throw e;
          status = 'SERVICE_UNKNOWN';
        }
        if (o.output !== 'table') printData(o.output, { service, status });
        else print(status);
        if (status !== 'SERVING') {
          throw new CliError(`health of ${service === '' ? 'xdpctld' : `"${service}"`} is ${status}`, EXIT.UNAVAILABLE);
        }
      }),
    );

  // --- completion
  program
    .command('completion')
    .description('print a shell completion script')
    .addArgument(new Argument('<shell>', 'shell').choices(['bash', 'zsh']))
    .addHelpText(
      'after',
      examples(`
        source <(xdpctl completion bash)                 # bash, this shell
        xdpctl completion bash > /etc/bash_completion.d/xdpctl
        source <(xdpctl completion zsh)                  # zsh (after compinit)`),
    )
    .action((shell: string) => {
      print(shell === 'zsh' ? zshCompletion(program) : bashCompletion(program));
    });

  return program;
}

const HEALTH: Record<number, string> = { 0: 'UNKNOWN', 1: 'SERVING', 2: 'NOT_SERVING', 3: 'SERVICE_UNKNOWN' };

function stateNote(r: Rule): string {
  const state = ruleState(r);
  if (state === 'ACTIVE') return '';
  return `, state ${state}${r.status?.message ? `: ${r.status.message}` : ''}`;
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ').trim();
}

// ---------------------------------------------------------------------------
// Shell completion, generated from the command tree

interface CompletionModel {
  /** Command path ("", "rules", "rules add") -> words offered there. */
  words: Map<string, string[]>;
  /** Options that take a value (their next word is not a command). */
  valueOptions: string[];
  /** Option -> fixed choices. */
  choices: Map<string, string[]>;
  /** Options whose value is a file. */
  files: string[];
}

function completionModel(program: Command): CompletionModel {
  const m: CompletionModel = { words: new Map(), valueOptions: [], choices: new Map(), files: [] };
  const globals = program.options;
  const visit = (cmd: Command, path: string[]) => {
    const opts = path.length ? [...cmd.options, ...globals] : [...cmd.options];
    const words = [
      ...cmd.commands.map((c) => c.name()),
      ...cmd.registeredArguments.flatMap((a) => a.argChoices ?? []),
      ...opts.flatMap((o) => [o.long, o.short].filter((x): x is string => Boolean(x))),
      '--help',
    ];
    m.words.set(path.join(' '), [...new Set(words)]);
    for (const o of cmd.options) {
      const names = [o.long, o.short].filter((x): x is string => Boolean(x));
      if (o.required || o.optional) m.valueOptions.push(...names);
      if (o.argChoices) for (const n of names) m.choices.set(n, o.argChoices);
      if (/<file>/.test(o.flags)) m.files.push(...names);
    }
    for (const c of cmd.commands) visit(c, [...path, c.name()]);
  };
  visit(program, []);
  m.valueOptions = [...new Set(m.valueOptions)];
  m.files = [...new Set(m.files)];
  return m;
}

export function bashCompletion(program: Command): string {
  const m = completionModel(program);
  const paths = [...m.words.keys()].filter((p) => p !== '');
  const choiceCases = [...m.choices].map(
    ([o, c]) => `    ${o}) COMPREPLY=($(compgen -W "${c.join(' ')}" -- "$cur")); return;;`,
  );
  return `# bash completion for xdpctl (generated by: xdpctl completion bash)
_xdpctl() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" prev="\${COMP_WORDS[COMP_CWORD-1]}"
  local cmdpath="" w i skip=0
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    if ((skip)); then skip=0; continue; fi
    case "$w" in
      ${m.valueOptions.join('|')}) skip=1; continue;;
      -*) continue;;
    esac
    case "\${cmdpath:+$cmdpath }$w" in
      ${paths.map((p) => `"${p}"`).join('|')}) cmdpath="\${cmdpath:+$cmdpath }$w";;
    esac
  done
  case "$prev" in
${choiceCases.join('\n')}
    ${m.files.join('|')}) COMPREPLY=($(compgen -f -- "$cur")); return;;
    ${m.valueOptions.join('|')}) return;;
  esac
  local words=""
  case "$cmdpath" in
${[...m.words].map(([p, w]) => `    "${p}") words="${w.join(' ')}";;`).join('\n')}
  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -F _xdpctl xdpctl
`;
}

export function zshCompletion(program: Command): string {
  const m = completionModel(program);
  const paths = [...m.words.keys()].filter((p) => p !== '');
  const choiceCases = [...m.choices].map(([o, c]) => `    ${o}) compadd -- ${c.join(' ')}; return;;`);
  return `#compdef xdpctl
# zsh completion for xdpctl (generated by: xdpctl completion zsh)
_xdpctl() {
  local cmdpath="" w i skip=0
  for ((i = 2; i < CURRENT; i++)); do
    w="\${words[i]}"
    if ((skip)); then skip=0; continue; fi
    case "$w" in
      ${m.valueOptions.join('|')}) skip=1; continue;;
      -*) continue;;
    esac
    case "\${cmdpath:+$cmdpath }$w" in
      ${paths.map((p) => `"${p}"`).join('|')}) cmdpath="\${cmdpath:+$cmdpath }$w";;
    esac
  done
  case "\${words[CURRENT-1]}" in
${choiceCases.join('\n')}
    ${m.files.join('|')}) _files; return;;
    ${m.valueOptions.join('|')}) return;;
  esac
  case "$cmdpath" in
${[...m.words].map(([p, w]) => `    "${p}") compadd -- ${w.join(' ')};;`).join('\n')}
  esac
}
if [[ "\${funcstack[1]}" == "_xdpctl" ]]; then
  _xdpctl "$@"
else
  compdef _xdpctl xdpctl
fi
`;
}

// ---------------------------------------------------------------------------
// Main

function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    return pkg.version;
  } catch {
    return '0.0.0';
  }
}

/**
 * A reader that went away (`xdpctl watch | head -1`) is the normal end of a
 * pipeline, not an error: exit 0 at once, without a stack trace, as
 * coreutils do for their output.
 */
let epipeHandled = false;
function exitQuietlyOnEpipe(): void {
  if (epipeHandled) return;
  epipeHandled = true;
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE') process.exit(EXIT.OK);
      throw e;
    });
  }
}

/** Run the CLI; resolves to the exit code. Errors are printed as one line on stderr. */
export async function main(argv: string[] = process.argv): Promise<number> {
  exitQuietlyOnEpipe();
  const program = buildProgram(packageVersion());
  const debug = argv.includes('--debug');
  try {
    await program.parseAsync(argv);
    return EXIT.OK;
  } catch (e) {
    if (e instanceof CommanderError) {
      // Help and version requested: success. Anything else commander reports
      // (already printed as one line by outputError) is a usage error.
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return EXIT.OK;
      if (e.code === 'commander.help' && e.exitCode === 0) return EXIT.OK;
      if (debug && e.stack) process.stderr.write(`${e.stack}\n`);
      return EXIT.USAGE;
    }
    let message: string;
    let exitCode: number;
    if (e instanceof ClientError) {
      const server = current?.opts.server ?? DEFAULT_SERVER;
      ({ message, exitCode } = describeClientError(e, server, current?.trailer, current?.opts.timeout));
      // grpc-js says "Failed to connect" or "ECONNRESET" for a refused TLS handshake: ask TLS itself.
      if (e.code === Status.UNAVAILABLE && /cannot reach xdpctld/.test(message) && current) {
        const why = await diagnoseTls(server, loadTls(current.opts)).catch(() => undefined);
        if (why) message = why;
      }
    } else if (e instanceof CliError) {
      message = e.message;
      exitCode = e.exitCode;
    } else {
      message = e instanceof Error ? e.message : String(e);
      exitCode = EXIT.LOCAL;
    }
    process.stderr.write(`xdpctl: ${oneLine(message)}\n`);
    if (debug && e instanceof Error && e.stack) process.stderr.write(`${e.stack}\n`);
    return exitCode;
  }
}

function isMain(): boolean {
  if (!process.argv[1]) return false;
  try {
    return realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

/**
 * Exit once stdout and stderr have written everything: to a pipe they are
 * asynchronous, and process.exit() would cut a long output (a 5 MB
 * `-o json rules list` ended after 219 264 bytes).
 */
function exitAfterFlush(code: number): void {
  let pending = 2;
  const done = () => {
    if (--pending === 0) process.exit(code);
  };
  process.stdout.write('', done);
  process.stderr.write('', done);
}

if (isMain()) {
  // Errors are one line on stderr: no runtime deprecation notices in between (as `node --no-deprecation`;
  // grpc-js passes an IP address as the TLS server name, which Node 24 reports as DEP0123).
  process.noDeprecation = true;
  main().then(exitAfterFlush, (e: unknown) => {
    process.stderr.write(`xdpctl: ${e instanceof Error ? e.message : String(e)}\n`);
    exitAfterFlush(EXIT.LOCAL);
  });
}
