/**
 * The one conversion between rule and link specs (shared/config-file.ts: what a YAML file, the CLI's
 * flags and the daemon's core speak) and the API's messages (proto/xdpctl/v1/rule.proto, link.proto).
 * Used by the daemon (services/convert.ts, which adds the output-only fields) and by the CLI
 * (`apply -f`, `rules add`). Unset enums and weights take the defaults the protos document (UDP,
 * checksum update, weight 1, both directions); a value outside an enum is passed on as its number in
 * text, for validation to name the field.
 */
import { LinkDirection, type Link } from '../gen/xdpctl/v1/link.js';
import { Protocol, UdpChecksumMode, type Rule } from '../gen/xdpctl/v1/rule.js';
import type { LinkSpec, RuleSpec } from './config-file.js';

/** A spec as a Rule message (generation 0, no output-only fields). */
export function ruleSpecToProto(r: RuleSpec): Rule {
  return {
    name: r.name,
    match: {
      protocol: Protocol.PROTOCOL_UDP,
      port: r.port,
      destination: r.destination,
      sourcePrefixes: [...r.sourcePrefixes],
    },
    ingressInterfaces: [...r.ingressInterfaces],
    backends: r.backends.map((b) => ({ ip: b.ip, mac: b.mac, interface: b.interface, weight: b.weight })),
    udpChecksum:
      r.udpChecksum === 'zero' ? UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO : UdpChecksumMode.UDP_CHECKSUM_MODE_UPDATE,
    labels: { ...r.labels },
    generation: 0n,
  };
}

/** A Rule message (as a client sent it) as a spec; missing parts are empty, defaults applied. */
export function ruleSpecFromProto(r: Rule | undefined): RuleSpec {
  const m = r?.match;
  return {
    name: r?.name ?? '',
    protocol: m?.protocol === Protocol.PROTOCOL_UDP || !m?.protocol ? 'udp' : (String(m.protocol) as 'udp'),
    port: m?.port ?? 0,
    destination: m?.destination ?? '',
    sourcePrefixes: [...(m?.sourcePrefixes ?? [])],
    ingressInterfaces: [...(r?.ingressInterfaces ?? [])],
    backends: (r?.backends ?? []).map((b) => ({
      ip: b.ip,
      mac: b.mac,
      interface: b.interface,
      weight: b.weight ?? 1,
    })),
    udpChecksum:
      !r?.udpChecksum || r.udpChecksum === UdpChecksumMode.UDP_CHECKSUM_MODE_UPDATE
        ? 'update'
        : r.udpChecksum === UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO
          ? 'zero'
          : (String(r.udpChecksum) as 'update'),
    labels: { ...(r?.labels ?? {}) },
  };
}

/** A link spec as a Link message (no status). */
export function linkSpecToProto(l: LinkSpec): Link {
  return {
    a: l.a,
    b: l.b,
    direction: l.direction === 'a-to-b' ? LinkDirection.LINK_DIRECTION_A_TO_B : LinkDirection.LINK_DIRECTION_BOTH,
  };
}

/** A Link message (as a client sent it) as a spec. */
export function linkSpecFromProto(l: Link | undefined): LinkSpec {
  const d = l?.direction ?? LinkDirection.LINK_DIRECTION_UNSPECIFIED;
  return {
    a: l?.a ?? '',
    b: l?.b ?? '',
    direction:
      d === LinkDirection.LINK_DIRECTION_A_TO_B
        ? 'a-to-b'
        : d === LinkDirection.LINK_DIRECTION_BOTH || d === LinkDirection.LINK_DIRECTION_UNSPECIFIED
          ? 'both'
          : (String(d) as 'both'),
  };
}
