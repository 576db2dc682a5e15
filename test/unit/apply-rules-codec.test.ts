/**
 * ApplyRules decoded and encoded a chunk at a time (src/server/services/apply-rules-codec.ts,
 * so that 10 000 rules take no long turn of the event loop) is the same message on the wire:
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
import {
  ApplyRulesRequest,
  ApplyRulesResponse,
  CreateRuleResponse,
  GetRuleResponse,
  ListRulesResponse,
  Rule,
  UpdateRuleResponse,
} from '../../src/gen/xdpctl/v1/rule.js';
import {
  decodeApplyRulesLazily,
  encodeApplyRulesReply,
  lazyRules,
} from '../../src/server/services/apply-rules-codec.js';
import { serializer } from '../../src/server/services/encoded-reply.js';
import { ruleService, updateRuleReply } from '../../src/server/services/rule-service.js';
import { Controller } from '../../src/server/core/controller.js';
import type { RuleSpec } from '../../src/server/core/model.js';
import { capacityForRules } from '../../src/server/daemon.js';
import { appendedField } from '../helpers/arbitraries.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';
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
const encodeApplyRulesResponse = serializer((r: ApplyRulesResponse) =>
  ApplyRulesResponse.encode(ApplyRulesResponse.fromPartial(r)).finish(),
);
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
  appendedField,
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
          repaired: fc.array(text, { maxLength: 2 }),
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
      changes: [{ name: 'a', action: ChangeAction.CHANGE_ACTION_CREATE, repaired: [] }],
      rules: [],
      applied: true,
      rulesOmitted: false,
    };
    assert.deepEqual(
      Buffer.from(encodeApplyRulesResponse(plain)),
      Buffer.from(ApplyRulesResponse.encode(plain).finish()),
    );
  });

  it('GetRule, ListRules, CreateRule and UpdateRule replies are sent as the service encoded them: the same bytes as their own encode', async () => {
    const dp = new ModelDataplane(capacityForRules(40), ['in0', 'b0', 'b1', 'b2']);
    const ctl = new Controller(dp, { mode: 'native', fixVethPeers: true });
    const specs: RuleSpec[] = Array.from({ length: 30 }, (_, i) => ({
      name: `r${i}`,
      protocol: 'udp',
      port: 2000 + i,
      destination: i % 3 ? '' : '10.9.0.1',
      sourcePrefixes: i % 4 ? [] : ['10.0.0.0/8'],
      ingressInterfaces: ['in0'],
      backends: [0, 1, 2].slice(0, 1 + (i % 3)).map((k) => ({
        ip: `10.1.${k}.${i + 1}`,
        mac: k === 2 ? '' : `02:00:00:00:0${k}:01`,
        interface: `b${k}`,
        weight: k + 1,
      })),
      udpChecksum: 'update',
      labels: (i % 2 ? { team: `t${i}` } : {}) as Record<string, string>,
    }));
    await ctl.applyRules(specs, false);
    const svc = ruleService(ctl);
    const ctx = {} as Parameters<typeof svc.getRule>[1];
    const getBytes = serializer((r: GetRuleResponse) =>
      GetRuleResponse.encode(GetRuleResponse.fromPartial(r)).finish(),
    );
    const listBytes = serializer((r: ListRulesResponse) =>
      ListRulesResponse.encode(ListRulesResponse.fromPartial(r)).finish(),
    );
    for (const s of specs) {
      const reply = (await svc.getRule({ name: s.name }, ctx)) as GetRuleResponse;
      const whole = GetRuleResponse.encode(GetRuleResponse.fromPartial(reply)).finish();
      assert.deepEqual(Buffer.from(getBytes(reply)), Buffer.from(whole), s.name);
    }
    let pageToken = '';
    let pages = 0;
    do {
      const reply = (await svc.listRules({ pageSize: 7, pageToken }, ctx)) as ListRulesResponse;
      const whole = ListRulesResponse.encode(ListRulesResponse.fromPartial(reply)).finish();
      assert.deepEqual(Buffer.from(listBytes(reply)), Buffer.from(whole));
      pageToken = reply.nextPageToken;
      pages++;
    } while (pageToken);
    assert.equal(pages, 5);

    // CreateRule and UpdateRule replies too (a change's reply), repaired lines included.
    const createBytes = serializer((r: CreateRuleResponse) =>
      CreateRuleResponse.encode(CreateRuleResponse.fromPartial(r)).finish(),
    );
    const updateBytes = serializer((r: UpdateRuleResponse) =>
      UpdateRuleResponse.encode(UpdateRuleResponse.fromPartial(r)).finish(),
    );
    const extra = (await svc.getRule({ name: 'r1' }, ctx)) as GetRuleResponse;
    const created = (await svc.createRule(
      { rule: { ...extra.rule!, name: 'r-new', match: { ...extra.rule!.match!, port: 3999 } } },
      ctx,
    )) as CreateRuleResponse;
    const wholeCreated = CreateRuleResponse.encode(CreateRuleResponse.fromPartial(created)).finish();
    assert.deepEqual(Buffer.from(createBytes(created)), Buffer.from(wholeCreated));
    for (const name of ['r0', 'r4', 'r5']) {
      const cur = ((await svc.getRule({ name }, ctx)) as GetRuleResponse).rule!;
      const moved = { ...cur, backends: cur.backends.map((b) => ({ ...b, ip: b.ip.replace(/^10\.1\./, '10.2.') })) };
      const reply = (await svc.updateRule({ rule: moved, expectedGeneration: 0n }, ctx)) as UpdateRuleResponse;
      const whole = UpdateRuleResponse.encode(UpdateRuleResponse.fromPartial(reply)).finish();
      assert.deepEqual(Buffer.from(updateBytes(reply)), Buffer.from(whole), name);
    }
    const lines = [
      'backend 10.1.0.1@b0 (map backends, entry 3): dmac 02:00:00:00:00:09, desired 02:00:00:00:00:01',
      'ü',
    ];
    assert.deepEqual(
      Buffer.from(updateRuleReply(extra.rule!, lines)),
      Buffer.from(UpdateRuleResponse.encode({ rule: extra.rule!, repaired: lines }).finish()),
    );
  });
});
