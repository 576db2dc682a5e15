/**
 * The one rule/link conversion (src/shared/proto-convert.ts) that the daemon and the CLI share:
 * spec -> message -> spec is the identity for every spec; unset enums and weights take the defaults
 * the protos document; values outside an enum reach validation as text instead of being dropped.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import fc from 'fast-check';

import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { Protocol, UdpChecksumMode } from '../../src/gen/xdpctl/v1/rule.js';
import { ruleFromProto, ruleToProto } from '../../src/server/services/convert.js';
import type { LinkSpec, RuleSpec } from '../../src/shared/config-file.js';
import {
  linkSpecFromProto,
  linkSpecToProto,
  ruleSpecFromProto,
  ruleSpecToProto,
} from '../../src/shared/proto-convert.js';

const text = fc.string({ maxLength: 12 });
const ruleSpec: fc.Arbitrary<RuleSpec> = fc.record(
  {
    name: text,
    protocol: fc.constant('udp' as const),
    port: fc.integer({ min: 0, max: 70_000 }),
    destination: text,
    sourcePrefixes: fc.array(text, { maxLength: 3 }),
    ingressInterfaces: fc.array(text, { maxLength: 3 }),
    backends: fc.array(
      fc.record(
        { ip: text, mac: text, interface: text, weight: fc.integer({ min: 0, max: 2000 }) },
        { noNullPrototype: true },
      ),
      {
        maxLength: 4,
      },
    ),
    udpChecksum: fc.constantFrom('update' as const, 'zero' as const),
    labels: fc.dictionary(text, text, { maxKeys: 3, noNullPrototype: true }),
  },
  { noNullPrototype: true },
);
const linkSpec: fc.Arbitrary<LinkSpec> = fc.record(
  { a: text, b: text, direction: fc.constantFrom('both' as const, 'a-to-b' as const) },
  { noNullPrototype: true },
);

describe('rule and link conversion shared by the daemon and the CLI', () => {
  it('spec -> message -> spec is the identity (rules and links)', () => {
    fc.assert(fc.property(ruleSpec, (r) => assert.deepEqual(ruleSpecFromProto(ruleSpecToProto(r)), r)));
    fc.assert(fc.property(linkSpec, (l) => assert.deepEqual(linkSpecFromProto(linkSpecToProto(l)), l)));
  });

  it("the daemon's conversion is this one (what `apply -f` sends is what the daemon reads)", () => {
    fc.assert(fc.property(ruleSpec, (r) => assert.deepEqual(ruleFromProto(ruleSpecToProto(r)), r)));
    const view = {
      ...ruleSpecFromProto(undefined),
      name: 'web',
      generation: 3,
      createTime: 0,
      updateTime: 0,
      status: { state: 'active' as const, message: '', backends: [], warnings: [], conditions: [] },
    };
    const { generation, status, createTime, updateTime, ...spec } = ruleToProto(view);
    assert.equal(generation, 3n);
    assert.ok(status && createTime && updateTime);
    assert.deepEqual({ ...spec, generation: 0n }, ruleSpecToProto(view));
  });

  it('defaults for unset fields; enum values it does not know pass as text for validation to name', () => {
    const d = ruleSpecFromProto({
      name: 'x',
      ingressInterfaces: [],
      backends: [{ ip: '', mac: '', interface: '' }],
      udpChecksum: 0,
      labels: {},
      generation: 0n,
    });
    assert.equal(d.protocol, 'udp');
    assert.equal(d.udpChecksum, 'update');
    assert.equal(d.backends[0].weight, 1);
    const odd = ruleSpecFromProto({
      name: 'x',
      match: { protocol: 7 as Protocol, port: 1, destination: '', sourcePrefixes: [] },
      ingressInterfaces: [],
      backends: [],
      udpChecksum: 9 as UdpChecksumMode,
      labels: {},
      generation: 0n,
    });
    assert.equal(odd.protocol, '7');
    assert.equal(odd.udpChecksum, '9');
    assert.equal(
      linkSpecFromProto({ a: 'a', b: 'b', direction: LinkDirection.LINK_DIRECTION_UNSPECIFIED }).direction,
      'both',
    );
    assert.equal(linkSpecFromProto({ a: 'a', b: 'b', direction: 5 as LinkDirection }).direction, '5');
  });
});
