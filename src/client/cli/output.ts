/**
 * What the CLI prints: borderless tables and key/value lines for people, JSON or YAML (the generated
 * toJSON forms) for scripts, and the formatting of rules, links, interfaces and counters.
 */
import Table from 'cli-table3';
import YAML from 'yaml';

import { jsonControls, visible } from '../../shared/visible.js';

import { ChangeAction, changeActionToJSON } from '../../gen/xdpctl/v1/common.js';
import { CounterStartKind, GetCountersResponse, type Counters, type Rates } from '../../gen/xdpctl/v1/counters.js';
import {
  effectiveXdpModeToJSON,
  XdpMode,
  xdpModeToJSON,
  type ManagedInterface,
} from '../../gen/xdpctl/v1/interface.js';
import { LinkDirection, type Link, type LinkChange } from '../../gen/xdpctl/v1/link.js';
import {
  ruleStateToJSON,
  udpChecksumModeToJSON,
  type Backend,
  type Rule,
  type RuleChange,
} from '../../gen/xdpctl/v1/rule.js';

export type OutputFormat = 'table' | 'json' | 'yaml';

export const NO_BORDER = {
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

/** Control characters made visible (src/shared/visible.ts): the daemon escapes its own output the same way. */
export { visible };

/** A table cell; 64-bit counters stay bigints and print exactly. */
export type Cell = string | number | bigint;

/** A borderless table (kubectl style) for people. */
export function renderTable(head: string[], rows: Cell[][]): string {
  const t = new Table({
    head,
    chars: NO_BORDER,
    style: { head: [], border: [], 'padding-left': 0, 'padding-right': 0 },
  });
  t.push(...rows.map((r) => r.map((c) => visible(String(c)))));
  return t
    .toString()
    .split('\n')
    .map((l) => l.trimEnd())
    .join('\n');
}

/** Key/value lines ("name:   web"). */
export function renderFields(fields: [string, Cell][]): string {
  const w = Math.max(...fields.map(([k]) => k.length)) + 2;
  return fields.map(([k, v]) => `${`${k}:`.padEnd(w)}${visible(String(v))}`).join('\n');
}

/** One or more lines on stdout, their control characters but newline and tab made {@link visible}. */
export function print(text: string): void {
  const t = visible(text, true);
  process.stdout.write(t.endsWith('\n') ? t : `${t}\n`);
}

/** JSON or YAML of a response (already converted with its generated toJSON). */
export function printData(format: OutputFormat, data: unknown): void {
  process.stdout.write(`${dataText(format, data)}\n`);
}

/**
 * JSON or YAML text of `data` with no raw control character: JSON.stringify escapes C0 (`\u001b`) but not DEL and
 * C1, written here as `\u007f` ... `\u009f` (still the same JSON); YAML double-quotes and escapes every one.
 */
export function dataText(format: OutputFormat, data: unknown, indent = 2): string {
  const c1 = /[\x7f-\x9f]/g;
  const hex = (c: string, n: number) => c.charCodeAt(0).toString(16).padStart(n, '0');
  if (format === 'json') return jsonControls(JSON.stringify(data ?? {}, null, indent));
  // The yaml library escapes C0 but writes DEL and C1 raw: where there are some, every string is double-quoted,
  // where `\xNN` is the same character.
  const text = c1.test(JSON.stringify(data ?? {}))
    ? YAML.stringify(data ?? {}, { defaultStringType: 'QUOTE_DOUBLE', defaultKeyType: 'PLAIN' }).replace(
        c1,
        (c) => `\\x${hex(c, 2)}`,
      )
    : YAML.stringify(data ?? {});
  return text.replace(/\n$/, '');
}

/**
 * A list response as JSON/YAML with its list always present: proto3 JSON
 * leaves an empty repeated field out, so an empty list would print `{}`;
 * scripts get `{"rules": []}` / `rules: []` instead, like a full one.
 */
export function printList(format: OutputFormat, key: string, data: unknown): void {
  const obj = { ...(data as Record<string, unknown>) };
  obj[key] ??= [];
  printData(format, obj);
}

/**
 * A table for people. An empty list prints no lone header on stdout, so `| wc -l` counts rows; a list
 * command passes `none` ("no rules"), said on stderr (as kubectl's "No resources found"), so that a
 * person sees the daemon answered with nothing rather than nothing at all.
 */
export function printTable(head: string[], rows: Cell[][], none?: string): void {
  if (rows.length) print(renderTable(head, rows));
  else if (none) process.stderr.write(`${none}\n`);
}

export const strip = (name: string, prefix: string) => (name.startsWith(prefix) ? name.slice(prefix.length) : name);
export const ruleState = (r: Rule) => strip(ruleStateToJSON(r.status?.state ?? 0), 'RULE_STATE_');
export const action = (a: ChangeAction) => strip(changeActionToJSON(a), 'CHANGE_ACTION_').toLowerCase();
export const direction = (d: LinkDirection) =>
  d === LinkDirection.LINK_DIRECTION_A_TO_B ? 'a-to-b' : d === LinkDirection.LINK_DIRECTION_BOTH ? 'both' : '-';
export const yesNo = (b: boolean | undefined) => (b ? 'yes' : 'no');
export const orDash = (s: string | number | undefined) => (s === undefined || s === '' || s === 0 ? '-' : String(s));
export const backendText = (b: Backend) => `${b.ip}@${b.interface}*${b.weight ?? 1}`;

export function ruleRow(r: Rule): Cell[] {
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

export const RULE_HEAD = ['NAME', 'PORT', 'DESTINATION', 'SOURCES', 'INGRESS', 'BACKENDS', 'STATE', 'GEN'];

/** Two parts of one sample as one (WatchCounters sends a large sample in parts, global with the first). */
/** The counters of a GetCounters answer as JSON, lists always present. */
export function countersToJson(c: Counters | undefined): unknown {
  const json = c
    ? (GetCountersResponse.toJSON({ counters: c, nextPageToken: '' }) as { counters?: Record<string, unknown> })
        .counters
    : {};
  return { rules: [], backends: [], ...json };
}

export function ruleDetails(r: Rule, counters?: Counters): string {
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
      ['redirect errors', `${rc.redirectErrorPackets} packets (dropped by the kernel after the redirect)`],
      ['filtered', `${rc.filteredPackets} packets (source not allowed)`],
      ['no backend', `${rc.noBackendPackets} packets`],
      ['counting since', countingSince(rc)],
    );
  } else {
    fields.push(['counters', 'none (the rule has no counters in the datapath)']);
  }
  // Backend counters come in the rule's backend order (Counters.backends).
  const bc = counters?.backends.filter((x) => x.rule === r.name) ?? [];
  const backends = renderTable(
    ['BACKEND', 'IP', 'MAC', 'INTERFACE', 'WEIGHT', 'ACTIVE', 'PACKETS', 'BYTES', 'REDIRECT ERRORS', 'MESSAGE'],
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
        c ? String(c.redirectErrorPackets) : '-',
        s?.message || '',
      ];
    }),
  );
  return `${renderFields(fields)}\n\n${r.backends.length ? backends : 'no backends'}`;
}

export function linkName(l: { a: string; b: string; direction?: LinkDirection }): string {
  return `${l.a} ${l.direction === LinkDirection.LINK_DIRECTION_A_TO_B ? '->' : '<->'} ${l.b}`;
}

export function interfaceRow(i: ManagedInterface, wide = false): Cell[] {
  return [
    i.name,
    i.present ? i.ifindex : '-',
    // UNSPECIFIED: no program is requested on it (used only as an egress).
    i.requestedMode === XdpMode.XDP_MODE_UNSPECIFIED ? '-' : strip(xdpModeToJSON(i.requestedMode), 'XDP_MODE_'),
    strip(effectiveXdpModeToJSON(i.effectiveMode), 'EFFECTIVE_XDP_MODE_'),
    orDash(i.programId),
    usedByCell(i, wide),
    i.warnings.join('; '),
  ];
}

/** Rules of one state and reason that `xdpctl status` lists each in its own warning line; more make one line. */
export const WARNING_RULE_LINES = 5;

/** The daemon's last warning line when it listed only its first problems ("N more problem(s) not listed here …"). */
const NOT_LISTED = /^\d+ more problem\(s\) not listed here/;

/** A rule's line among GetStatus `datapath.warnings` (daemon.proto: "rule NAME is STATE: why"). */
const RULE_WARNING = /^rule ([a-z0-9](?:[-a-z0-9]*[a-z0-9])?) is (ACTIVE|DEGRADED|INACTIVE): ([\s\S]*)$/;

/**
 * GetStatus `datapath.warnings` as `xdpctl status` prints them: the rules not ACTIVE for one reason (one host event,
 * e.g. the egress 100 rules share is down: 100 lines alike) said together, as the daemon's log says their
 * transitions (rule-transitions.ts): up to {@link WARNING_RULE_LINES} each in its own line, more in one line at the
 * place of the first, naming how many and 5 of them ("100 rules are INACTIVE: a, b, c, d, e and 95 more (each:
 * why)"; "at least 100 …" when the daemon listed only its first problems); `wide`: every name. Every other line as it
 * is, in its place.
 */
export function groupWarnings(warnings: readonly string[], wide = false): string[] {
  const groups = new Map<string, { state: string; why: string; names: string[] }>();
  const parsed = warnings.map((w) => {
    const m = RULE_WARNING.exec(w);
    if (!m) return undefined;
    const key = `${m[2]}|${m[3]}`;
    const g = groups.get(key);
    if (g) g.names.push(m[1]);
    else groups.set(key, { state: m[2], why: m[3], names: [m[1]] });
    return key;
  });
  // The daemon lists its first problems only (controller.ts hostProblems): then a group's count is a lower bound.
  const cut = warnings.some((w) => NOT_LISTED.test(w)) ? 'at least ' : '';
  const out: string[] = [];
  const said = new Set<string>();
  warnings.forEach((w, i) => {
    const key = parsed[i];
    const g = key === undefined ? undefined : groups.get(key)!;
    if (!g || g.names.length <= WARNING_RULE_LINES) {
      out.push(w);
      return;
    }
    if (said.has(key!)) return;
    said.add(key!);
    const listed = wide ? g.names : g.names.slice(0, WARNING_RULE_LINES);
    const more = g.names.length - listed.length;
    out.push(
      `${cut}${g.names.length} rules are ${g.state}: ${listed.join(', ')}${more ? ` and ${more} more` : ''} (each: ${g.why})`,
    );
  });
  return out;
}

/** Names the USED BY cell lists before "and N more" (`--wide`: every name the daemon sent). */
export const USED_BY_LISTED = 3;

/**
 * What uses an interface, as the table shows it: the first {@link USED_BY_LISTED} names and "and N more" (an egress
 * of 3000 rules printed every name on one line); `wide`: every name the daemon sent. Then "+N more" when the daemon
 * left N out to keep the message within 1 MiB (used_by_omitted), so that a cut list never reads whole.
 */
export function usedByCell(i: Pick<ManagedInterface, 'usedBy' | 'usedByOmitted'>, wide = false): string {
  if (!wide && i.usedBy.length > USED_BY_LISTED) {
    const rest = i.usedBy.length - USED_BY_LISTED + i.usedByOmitted;
    return `${i.usedBy.slice(0, USED_BY_LISTED).join(',')} and ${rest} more`;
  }
  const more = i.usedByOmitted ? `+${i.usedByOmitted} more` : '';
  return [i.usedBy.join(','), more].filter(Boolean).join(' ') || '-';
}

export const INTERFACE_HEAD = ['NAME', 'IFINDEX', 'REQUESTED', 'EFFECTIVE', 'PROGRAM', 'USED BY', 'WARNINGS'];

export function si(n: number, unit = ''): string {
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
export function bytes(count: bigint | number): string {
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

export const pps = (r: Rates | undefined) => (r ? si(r.pps) : '-');
export const bps = (r: Rates | undefined) => (r ? si(r.bps, 'b/s') : '-');

/**
 * Since when a series' counts are, as far as the daemon knows (counters.proto CounterStartKind): counters it found
 * counting when it started (kept in the pinned maps across a restart) include packets from before, since a time it
 * cannot know: "since at most T", never "since T".
 */
export function countingSince(x: { startTime?: Date; startKind: CounterStartKind }): string {
  const t = x.startTime?.toISOString();
  if (!t) return '-';
  switch (x.startKind) {
    case CounterStartKind.COUNTER_START_KIND_ZEROED:
      return `${t} (from 0)`;
    case CounterStartKind.COUNTER_START_KIND_FOUND:
      return `at most ${t}: counted before this xdpctld started (kept in the pinned maps; ${t} is its first read)`;
    case CounterStartKind.COUNTER_START_KIND_LOWERED:
      return `${t}, on from the value another tool wrote then (not from 0)`;
    default:
      return `${t} (not known whether from 0)`;
  }
}

/** Under `xdpctl watch`'s tables when some counts were found counting: they include packets from before. */
export function foundNote(latest: Date): string {
  return (
    'counters found counting when this xdpctld started (kept in the pinned maps across a restart) include packets ' +
    `from before it: counting since at most ${latest.toISOString()}`
  );
}

/** A counter cell of `xdpctl watch`: marked when the entry's series restarted since the last sample that had it. */
const counted = (n: bigint, reset: boolean) => (reset ? `${n} (reset)` : String(n));

/** What "(reset)" means, under the tables of a sample that has one. */
export const RESET_NOTE =
  '(reset): counters that restarted since the last sample that had them (the object re-created, or its counters lowered ' +
  "by another tool): rates count from the new start; '-' where that interval's counts cannot be known";

export function countersText(c: Counters, header: string): string {
  const parts = [header];
  if (c.rules.length) {
    parts.push(
      renderTable(
        ['RULE', 'PACKETS', 'BYTES', 'PPS', 'BPS', 'REDIRECTED', 'FILTERED', 'NO BACKEND', 'REDIRECT ERRORS'],
        c.rules.map((r) => [
          r.rule,
          counted(r.matchedPackets, r.reset),
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
          counted(b.packets, b.reset),
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
          counted(l.packets, l.reset),
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
  const all = [...c.rules, ...c.backends, ...c.links];
  if (all.some((x) => x.reset)) parts.push(RESET_NOTE);
  const found = all.filter((x) => x.startKind === CounterStartKind.COUNTER_START_KIND_FOUND && x.startTime);
  if (found.length) parts.push(foundNote(new Date(Math.max(...found.map((x) => x.startTime!.getTime())))));
  return parts.join('\n\n');
}

export function formatDuration(seconds: number): string {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const parts = [d && `${d}d`, h && `${h}h`, m && `${m}m`, `${s % 60}s`].filter(Boolean);
  return parts.join('');
}

export function summary(actions: ChangeAction[], applied: boolean): string {
  const n = (a: ChangeAction) => actions.filter((x) => x === a).length;
  const [c, u, d, same] = [
    n(ChangeAction.CHANGE_ACTION_CREATE),
    n(ChangeAction.CHANGE_ACTION_UPDATE),
    n(ChangeAction.CHANGE_ACTION_DELETE),
    n(ChangeAction.CHANGE_ACTION_UNCHANGED),
  ];
  const fixed = n(ChangeAction.CHANGE_ACTION_REPAIRED);
  return applied
    ? `applied: ${c} created, ${u} updated, ${d} deleted, ${same} unchanged` +
        (fixed ? `, ${fixed} unchanged but rewritten in the kernel (it held them otherwise)` : '')
    : `dry run, nothing applied: ${c} to create, ${u} to update, ${d} to delete, ${same} unchanged`;
}

export const HEALTH: Record<number, string> = { 0: 'UNKNOWN', 1: 'SERVING', 2: 'NOT_SERVING', 3: 'SERVICE_UNKNOWN' };

export function stateNote(r: Rule): string {
  const state = ruleState(r);
  if (state === 'ACTIVE') return '';
  return `, state ${state}${r.status?.message ? `: ${r.status.message}` : ''}`;
}

/**
 * What a link's reply says against it, as `links connect` prints it after "connected": its warnings (an
 * ingress down, an egress MTU below the ingress's: each direction not forwarding is among them, with why),
 * else the directions not forwarding; '' when every direction forwards and nothing is said against it.
 */
export function linkNote(l: Link): string {
  const s = l.status;
  if (!s) return '';
  if (s.warnings.length) return ` (warning: ${s.warnings.join('; ')})`;
  const out: string[] = [];
  if (!s.aToBActive) out.push(`${l.a} -> ${l.b}`);
  if (l.direction !== LinkDirection.LINK_DIRECTION_A_TO_B && !s.bToAActive) out.push(`${l.b} -> ${l.a}`);
  return out.length ? ` (not forwarding ${out.join(', ')})` : '';
}

const DONE: Partial<Record<ChangeAction, string>> = {
  [ChangeAction.CHANGE_ACTION_CREATE]: 'created',
  [ChangeAction.CHANGE_ACTION_UPDATE]: 'updated',
};

/**
 * `rules apply`'s lines under its table: each rule it created or updated that is not ACTIVE, with its state
 * and why, as `rules add` / `rules update` print it (the reply's rules); none for a dry run. A reply that left its rules out (over
 * 2 MiB) is said to have done so.
 */
export function appliedRuleNotes(res: {
  changes: RuleChange[];
  rules: Rule[];
  rulesOmitted: boolean;
  applied: boolean;
}): string[] {
  const done = res.changes.filter((c) => DONE[c.action]);
  if (!res.applied || !done.length) return [];
  if (res.rulesOmitted) {
    return [
      `the reply left out the rules' states (over 2 MiB): "xdpctl rules list" shows the created and updated rules' states`,
    ];
  }
  const byName = new Map(res.rules.map((r) => [r.name, r]));
  const out: string[] = [];
  for (const c of done) {
    const r = byName.get(c.name);
    if (!r) out.push(`rule ${c.name} ${DONE[c.action]}: not in the reply's rules`);
    else if (stateNote(r)) out.push(`rule ${c.name} ${DONE[c.action]}${stateNote(r)}`);
  }
  return out;
}

/**
 * `links apply`'s lines under its table: each link it created or updated that has a direction not
 * forwarding or a warning, as `links connect` prints it ({@link linkNote}; the reply's links); none for a dry run. A reply that
 * left its links out (over 2 MiB) is said to have done so.
 */
export function appliedLinkNotes(res: {
  changes: LinkChange[];
  links: Link[];
  linksOmitted: boolean;
  applied: boolean;
}): string[] {
  const done = res.changes.filter((c) => DONE[c.action]);
  if (!res.applied || !done.length) return [];
  if (res.linksOmitted) {
    return [
      `the reply left out the links' states (over 2 MiB): "xdpctl links list" shows the created and updated links' states`,
    ];
  }
  const out: string[] = [];
  for (const c of done) {
    const l = res.links.find((x) => (x.a === c.a && x.b === c.b) || (x.a === c.b && x.b === c.a));
    if (!l) out.push(`link ${c.a} ${c.b} ${DONE[c.action]}: not in the reply's links`);
    else if (linkNote(l)) out.push(`link ${linkName(l)} ${DONE[c.action]}${linkNote(l)}`);
  }
  return out;
}
