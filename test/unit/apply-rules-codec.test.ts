/**
 * ApplyRules decoded and encoded a chunk at a time (src/server/services/apply-rules-codec.ts,
 * issue 15 item 4: no long turn of the event loop for 10 000 rules) is the same message on the wire:
 * - every request, valid or mutated into garbage, gives what ApplyRulesRequest.decode gives (the same
 *   rules and validate_only), or is refused (INTERNAL "Error deserializing request", as grpc-js
 *   refuses one) exactly when that decode throws;
 * - the names the audit record takes equal the decoded ones;
 * - a reply built from pre-encoded rules is byte for byte ApplyRulesResponse.encode of the message.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import fc from 'fast-check';
import { ServerError, Status } from 'nice-grpc';

import { ChangeAction } from '../../src/gen/xdpctl/v1/common.js';
import { ApplyRulesRequest, ApplyRulesResponse, Rule } from '../../src/gen/xdpctl/v1/rule.js';
import {
  decodeApplyRulesLazily,
  encodeApplyRulesReply,
  encodeApplyRulesResponse,
  lazyRules,
} from '../../src/server/services/apply-rules-codec.js';
import { resourcesOf } from '../../src/server/services/access.js';

const text = fc.string({ maxLength: 10 });
const rule: fc.Arbitrary<Rule> = fc.record({
  name: text,
  match: fc.option(
    fc.record({
      protocol: fc.nat(2),
      port: fc.nat(70_000),
      destination: text,
      sourcePrefixes: fc.array(text, { maxLength: 2 }),
    }),
    { nil: undefined },
  ),
  ingressInterfaces: fc.array(text, { maxLength: 2 }),
  backends: fc.array(
    fc.record({ ip: text, mac: text, interface: text, weight: fc.option(fc.nat(2000), { nil: undefined }) }),
    {
      maxLength: 3,
    },
  ),
  udpChecksum: fc.nat(2),
  labels: fc.dictionary(text, text, { maxKeys: 2 }),
  generation: fc.bigInt({ min: 0n, max: 1n << 40n }),
});
const request = fc.record({ rules: fc.array(rule, { maxLength: 6 }), validateOnly: fc.boolean() });

/** What the daemon makes of the bytes: the lazily decoded request read rule by rule, or the refusal. */
function lazyDecode(bytes: Uint8Array): { rules: Rule[]; validateOnly: boolean } | 'refused' {
  try {
    const req = decodeApplyRulesLazily(bytes);
    const raw = lazyRules(req);
    const rules: Rule[] = [];
    // As the service reads them: count is read again after each rule (the whole decode may decide).
    if (raw) for (let i = 0; i < raw.count; i++) rules.push(raw.get(i));
    else rules.push(...req.rules);
    return { rules, validateOnly: req.validateOnly };
  } catch (e) {
    // Either thrown as grpc-js would be asked to (the deserializer) or as the handler refuses it.
    if (e instanceof ServerError) {
      assert.equal(e.code, Status.INTERNAL);
      assert.match(e.details, /deserializ/i);
    }
    return 'refused';
  }
}

function wholeDecode(bytes: Uint8Array): { rules: Rule[]; validateOnly: boolean } | 'refused' {
  try {
    const r = ApplyRulesRequest.decode(bytes);
    return { rules: r.rules, validateOnly: r.validateOnly };
  } catch {
    return 'refused';
  }
}

/** Mutations as test/integration/hostile-input.test.ts makes them. */
const mutate = fc.oneof(
  fc.uint8Array({ maxLength: 300 }).map((b) => () => b),
  fc.nat().map((n) => (base: Uint8Array) => base.subarray(0, n % Math.max(base.length, 1))),
  fc.tuple(fc.nat(), fc.nat(255)).map(([n, v]) => (base: Uint8Array) => {
    const b = Uint8Array.from(base);
    if (b.length) b[n % b.length] = v;
    return b;
  }),
  fc.tuple(fc.nat(), fc.nat(255), fc.nat(255)).map(([n, v, w]) => (base: Uint8Array) => {
    const b = Uint8Array.from(base);
    if (b.length) {
      b[n % b.length] = v;
      b[(n * 7 + 3) % b.length] = w;
    }
    return b;
  }),
  fc
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
    }),
);

describe('ApplyRules decoded and encoded a chunk at a time', () => {
  it('a valid request decodes to exactly the whole decode, rule by rule and through .rules', () => {
    fc.assert(
      fc.property(request, (r) => {
        const bytes = ApplyRulesRequest.encode(r).finish();
        const want = ApplyRulesRequest.decode(bytes);
        assert.deepEqual(lazyDecode(bytes), { rules: want.rules, validateOnly: want.validateOnly });
        const req = decodeApplyRulesLazily(bytes);
        assert.deepEqual(req.rules, want.rules);
        assert.equal(req.validateOnly, want.validateOnly);
      }),
      { numRuns: 500 },
    );
  });

  it('mutated bytes: refused exactly when the whole decode refuses them, else the same message', () => {
    let refused = 0;
    let runs = 0;
    fc.assert(
      fc.property(request, mutate, (r, f) => {
        const bytes = f(ApplyRulesRequest.encode(r).finish());
        const want = wholeDecode(bytes);
        const got = lazyDecode(bytes);
        runs++;
        if (want === 'refused') refused++;
        assert.deepEqual(got, want);
      }),
      { numRuns: 4000 },
    );
    assert.ok(refused > runs / 10, `${refused} of ${runs} refused: the mutations must reach the refusal path`);
  });

  it('a rule whose inner length runs past its own end decodes as the whole decode reads it', () => {
    // rules[0] says 2 bytes, but its name field says 5: the whole decode reads the name across the
    // boundary and continues after it (no second rule); reading rules[0] alone would refuse it.
    const bytes = Uint8Array.from([0x0a, 0x02, 0x0a, 0x05, 0x61, 0x62, 0x63, 0x64, 0x65]);
    const want = wholeDecode(bytes);
    assert.notEqual(want, 'refused');
    assert.deepEqual(lazyDecode(bytes), want);
  });

  it('the audit record names the same rules, without decoding them', () => {
    fc.assert(
      fc.property(fc.array(rule, { maxLength: 40 }), (rules) => {
        const bytes = ApplyRulesRequest.encode({ rules, validateOnly: false }).finish();
        const path = '/xdpctl.v1.RuleService/ApplyRules';
        assert.deepEqual(
          resourcesOf(path, decodeApplyRulesLazily(bytes)),
          resourcesOf(path, ApplyRulesRequest.decode(bytes)),
        );
      }),
      { numRuns: 300 },
    );
  });

  it('a reply built from pre-encoded rules is byte for byte the whole encode', async () => {
    const reply = fc.record({
      changes: fc.array(
        fc.record({
          name: text,
          action: fc.constantFrom(...Object.values(ChangeAction).filter((v) => typeof v === 'number')),
        }),
        {
          maxLength: 2100,
        },
      ),
      rules: fc.array(rule, { maxLength: 300 }),
      applied: fc.boolean(),
      rulesOmitted: fc.boolean(),
    });
    await fc.assert(
      fc.asyncProperty(reply, async (r) => {
        let yields = 0;
        const built = await encodeApplyRulesReply(
          r as ApplyRulesResponse,
          r.rules.map((x) => Rule.encode(x).finish()),
          async () => void yields++,
        );
        assert.equal(built, r);
        assert.deepEqual(
          Buffer.from(encodeApplyRulesResponse(built)),
          Buffer.from(ApplyRulesResponse.encode(r as ApplyRulesResponse).finish()),
        );
        if (r.changes.length >= 1024) assert.ok(yields > 0, 'yields while it builds');
      }),
      { numRuns: 60 },
    );
    // A reply nobody built beforehand (the HTTP/JSON gateway's, or an error's) is encoded whole.
    const plain = {
      changes: [{ name: 'a', action: ChangeAction.CHANGE_ACTION_CREATE }],
      rules: [],
      applied: true,
      rulesOmitted: false,
    };
    assert.deepEqual(
      Buffer.from(encodeApplyRulesResponse(plain)),
      Buffer.from(ApplyRulesResponse.encode(plain).finish()),
    );
  });
});
