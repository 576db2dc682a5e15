/**
 * Flag parsers (usage errors are InvalidArgumentError: commander names the flag) and help texts.
 */
import { InvalidArgumentError } from 'commander';

import type { Backend } from '../../gen/xdpctl/v1/rule.js';

/** "500ms", "1s", "1.5s", "2m", "1h" -> milliseconds. */
export function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(text.trim());
  if (!m) throw new InvalidArgumentError('expected a duration such as 500ms, 1s or 2m.');
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
  return Math.round(Number(m[1]) * unit);
}

/** The longest --timeout: what gRPC's grpc-timeout header can carry (8 digits of hours, ~11,400 years). */
export const MAX_TIMEOUT_MS = 99_999_999 * 3_600_000;

/** --timeout: a duration (parseDuration) no longer than {@link MAX_TIMEOUT_MS}; a longer one is refused, never cut. */
export function parseTimeout(text: string): number {
  const ms = parseDuration(text);
  if (!(ms <= MAX_TIMEOUT_MS)) {
    throw new InvalidArgumentError('at most 99999999h, the longest deadline a gRPC call can carry.');
  }
  return ms;
}

export function parseUint(text: string, max = 0xffff_ffff): number {
  if (!/^\d+$/.test(text) || Number(text) > max) throw new InvalidArgumentError('expected a non-negative integer.');
  return Number(text);
}

/** A uint64 (a generation), exact: a bigint, as the generated types carry 64-bit integers. */
export function parseUint64(text: string): bigint {
  if (!/^\d+$/.test(text) || BigInt(text) > 0xffff_ffff_ffff_ffffn) {
    throw new InvalidArgumentError('expected a non-negative integer below 2^64.');
  }
  return BigInt(text);
}

export function parsePositive(text: string): number {
  const n = parseUint(text);
  if (n === 0) throw new InvalidArgumentError('expected a positive integer.');
  return n;
}

/** Repeatable, comma-separated list ("--ingress a --ingress b,c"). */
export function collectList(value: string, previous: string[] | undefined): string[] {
  return [
    ...(previous ?? []),
    ...value
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s !== ''),
  ];
}

/** IP,MAC,IFACE[,WEIGHT]; MAC may be empty (resolved by the daemon). */
export function collectBackend(value: string, previous: Backend[] | undefined): Backend[] {
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

export function collectLabel(value: string, previous: Record<string, string> | undefined): Record<string, string> {
  const i = value.indexOf('=');
  if (i <= 0) throw new InvalidArgumentError('expected key=value.');
  return { ...(previous ?? {}), [value.slice(0, i)]: value.slice(i + 1) };
}

export function examples(lines: string): string {
  return `\nExamples:\n${lines
    .trim()
    .split('\n')
    .map((l) => `  ${l.trim()}`)
    .join('\n')}\n`;
}
