/**
 * Validation of every field of rules and links, before anything touches the
 * kernel. Pure: returns the list of violations (empty when valid), each
 * naming the field path as the request spells it.
 */
import { martianIpv4, nonUnicastMac, parseIp, parseMac, parsePrefix, truncate } from '../net/addr.js';
import type { FieldViolation } from './errors.js';
import type { LinkSpec, RuleSpec } from './model.js';

export const LIMITS = {
  nameLength: 63,
  backendsPerRule: 64,
  ingressPerRule: 64,
  sourcePrefixesPerRule: 256,
  labels: 32,
  labelLength: 256,
  weightMax: 1000,
};

const NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
// Linux interface names: 1..15 bytes (IFNAMSIZ - 1, in UTF-8: "é" is two), no '/', ':', whitespace or NUL.
const IFNAME = /^[^/:\s\0]{1,15}$/;
const IFNAME_BYTES = 15;

export function validateName(name: string, field: string, out: FieldViolation[]): void {
  if (name === '') out.push({ field, description: 'is required' });
  else if (name.length > LIMITS.nameLength || !NAME.test(name)) {
    out.push({
      field,
      description: `must be 1-${LIMITS.nameLength} lowercase letters, digits or '-', starting and ending with a letter or digit`,
    });
  }
}

export function validateInterfaceName(name: string, field: string, out: FieldViolation[]): void {
  if (name === '') out.push({ field, description: 'is required' });
  else if (!IFNAME.test(name) || Buffer.byteLength(name) > IFNAME_BYTES || name === '.' || name === '..') {
    out.push({ field, description: 'is not a valid interface name (1-15 bytes, no "/", ":" or spaces)' });
  }
}

function check(fn: () => unknown, field: string, out: FieldViolation[]): boolean {
  try {
    fn();
    return true;
  } catch (e) {
    out.push({ field, description: (e as Error).message });
    return false;
  }
}

/** Validate a rule; `prefix` is the field path of the rule ("rule", "rules[3]"). */
export function validateRule(r: RuleSpec, prefix: string, out: FieldViolation[] = []): FieldViolation[] {
  validateName(r.name, `${prefix}.name`, out);
  if (r.protocol !== 'udp') out.push({ field: `${prefix}.match.protocol`, description: 'must be UDP' });
  if (!Number.isInteger(r.port) || r.port < 1 || r.port > 65535) {
    out.push({ field: `${prefix}.match.port`, description: 'must be between 1 and 65535' });
  }
  if (r.destination !== '') {
    if (check(() => parseIp(r.destination), `${prefix}.match.destination`, out)) {
      const ip = parseIp(r.destination);
      const martian = ip.family === 4 ? martianIpv4(ip.bytes) : undefined;
      if (ip.family !== 4) {
        out.push({ field: `${prefix}.match.destination`, description: 'only IPv4 is supported by the datapath yet' });
      } else if (martian) {
        // The datapath passes such packets to the stack (RFC 1812 5.3.7): the rule would never match.
        out.push({ field: `${prefix}.match.destination`, description: `${martian}: no packet to it is redirected` });
      }
    }
  }
  if (r.sourcePrefixes.length > LIMITS.sourcePrefixesPerRule) {
    out.push({ field: `${prefix}.match.source_prefixes`, description: `at most ${LIMITS.sourcePrefixesPerRule}` });
  }
  const seenPrefixes = new Set<string>();
  r.sourcePrefixes.forEach((p, i) => {
    const field = `${prefix}.match.source_prefixes[${i}]`;
    if (!check(() => parsePrefix(p), field, out)) return;
    if (parsePrefix(p).family !== 4) out.push({ field, description: 'only IPv4 is supported by the datapath yet' });
    if (seenPrefixes.has(p)) out.push({ field, description: 'is listed twice' });
    seenPrefixes.add(p);
  });
  if (r.ingressInterfaces.length === 0) {
    out.push({ field: `${prefix}.ingress_interfaces`, description: 'at least one interface is required' });
  }
  if (r.ingressInterfaces.length > LIMITS.ingressPerRule) {
    out.push({ field: `${prefix}.ingress_interfaces`, description: `at most ${LIMITS.ingressPerRule}` });
  }
  const seenIngress = new Set<string>();
  r.ingressInterfaces.forEach((name, i) => {
    const field = `${prefix}.ingress_interfaces[${i}]`;
    validateInterfaceName(name, field, out);
    if (seenIngress.has(name)) out.push({ field, description: 'is listed twice' });
    seenIngress.add(name);
  });
  if (r.backends.length > LIMITS.backendsPerRule) {
    out.push({ field: `${prefix}.backends`, description: `at most ${LIMITS.backendsPerRule}` });
  }
  const seenBackends = new Set<string>();
  r.backends.forEach((b, i) => {
    const f = `${prefix}.backends[${i}]`;
    if (b.ip === '') out.push({ field: `${f}.ip`, description: 'is required' });
    else if (check(() => parseIp(b.ip), `${f}.ip`, out)) {
      const ip = parseIp(b.ip);
      const martian = ip.family === 4 ? martianIpv4(ip.bytes) : undefined;
      if (ip.family !== 4) out.push({ field: `${f}.ip`, description: 'only IPv4 is supported by the datapath yet' });
      else if (martian) out.push({ field: `${f}.ip`, description: martian });
    }
    if (b.mac !== '' && check(() => parseMac(b.mac), `${f}.mac`, out)) {
      const why = nonUnicastMac(parseMac(b.mac));
      if (why) out.push({ field: `${f}.mac`, description: `"${truncate(b.mac)}" ${why}` });
    }
    validateInterfaceName(b.interface, `${f}.interface`, out);
    if (!Number.isInteger(b.weight) || b.weight < 0 || b.weight > LIMITS.weightMax) {
      out.push({ field: `${f}.weight`, description: `must be between 0 and ${LIMITS.weightMax}` });
    }
    const key = `${b.ip}@${b.interface}`;
    if (seenBackends.has(key)) out.push({ field: f, description: `backend ${key} is listed twice` });
    seenBackends.add(key);
  });
  if (r.udpChecksum !== 'update' && r.udpChecksum !== 'zero') {
    out.push({ field: `${prefix}.udp_checksum`, description: 'must be UPDATE or ZERO' });
  }
  const labels = Object.entries(r.labels);
  if (labels.length > LIMITS.labels) out.push({ field: `${prefix}.labels`, description: `at most ${LIMITS.labels}` });
  let reported = 0;
  for (const [k, v] of labels) {
    if (k !== '' && k.length <= LIMITS.labelLength && v.length <= LIMITS.labelLength) continue;
    // The entry is named by its key, JSON-quoted (truncated when long): rule.labels["Bad Key"].
    const field = `${prefix}.labels[${JSON.stringify(truncate(k))}]`;
    if (k === '') out.push({ field, description: 'a label key must not be empty' });
    else if (k.length > LIMITS.labelLength) {
      out.push({ field, description: `key is ${k.length} characters, at most ${LIMITS.labelLength}` });
    }
    if (v.length > LIMITS.labelLength) {
      out.push({ field, description: `value is ${v.length} characters, at most ${LIMITS.labelLength}` });
    }
    // Bounded: a request with thousands of bad labels gets the first few named, not a huge error.
    if (++reported === 8) break;
  }
  return out;
}

/** Validate a link. */
export function validateLink(l: LinkSpec, prefix: string, out: FieldViolation[] = []): FieldViolation[] {
  validateInterfaceName(l.a, `${prefix}.a`, out);
  validateInterfaceName(l.b, `${prefix}.b`, out);
  // A link from an interface to itself would reflect every frame it takes in back out of it (the host on it
  // reaches nothing more): never a cross-connect. Names of one device (an alternative name) are caught where
  // names are resolved (controller.ts linkByDeviceName).
  if (l.a === l.b && l.a !== '') {
    out.push({
      field: `${prefix}.b`,
      description: `must differ from ${prefix}.a (${l.a}): a link joins two interfaces`,
    });
  }
  if (l.direction !== 'both' && l.direction !== 'a-to-b') {
    out.push({ field: `${prefix}.direction`, description: 'must be BOTH or A_TO_B' });
  }
  return out;
}
