/** RuleService: validate, call the controller, convert. Errors map in status.ts. */
import type { NormalizedServiceDefinition, ServiceImplementation } from 'nice-grpc';

import type { Controller } from '../core/controller.js';
import { CoreError, type FieldViolation } from '../core/errors.js';
import { pacer } from '../core/execute.js';
import type { RuleSpec } from '../core/model.js';
import { validateName } from '../core/validate.js';
import type { Rule, RuleServiceDefinition } from '../../gen/xdpctl/v1/rule.js';
import { decodeApplyRulesLazily, encodeApplyRulesReply, lazyRules } from './apply-rules-codec.js';
import { reportChanges, reportOutcome } from './audit-outcome.js';
import { CHANGE_ACTION, ruleFromProto, ruleToProto } from './convert.js';
import { fromTsProto } from './definition.js';
import { encodeRule, fieldsMessage, ruleFieldsMessage, serializer, withBytes } from './encoded-reply.js';
import { pageToken, pageTokenKey } from './paging.js';

const DEFAULT_PAGE = 100;
/** Rules a ListRules page reads and encodes between two calls of its pacer. */
const LIST_SLICE = 128;

/** A name that no rule can have is a bad argument, not a miss (and is never echoed whole). */
function checkName(name: string): void {
  const v: FieldViolation[] = [];
  validateName(name, 'name', v);
  if (v.length) throw CoreError.invalid(v);
}
const MAX_PAGE = 1000;
/** Encoded rules per response at most (half the 4 MiB default receive limit of gRPC clients). */
export const MAX_PAGE_BYTES = 2 * 1024 * 1024;

/** The name a ListRules page token continues after (paging.ts: INVALID_ARGUMENT for any other token). */
function pageTokenName(token: string): string {
  return pageTokenKey('rule', token, (name) => {
    const v: FieldViolation[] = [];
    validateName(name, 'page_token', v);
    return v.length === 0;
  });
}

export function ruleService(ctl: Controller): ServiceImplementation<typeof RuleServiceDefinition> {
  return {
    async createRule(req, { signal }) {
      if (!req.rule) throw CoreError.invalid([{ field: 'rule', description: 'is required' }]);
      const rule = ruleToProto(await ctl.createRule(ruleFromProto(req.rule), { signal }));
      return withBytes({ rule }, ruleFieldsMessage(1, [rule]));
    },
    async getRule(req) {
      checkName(req.name);
      const rule = ruleToProto(ctl.getRule(req.name));
      return withBytes({ rule }, ruleFieldsMessage(1, [rule]));
    },
    async listRules(req) {
      const size = req.pageSize === 0 ? DEFAULT_PAGE : Math.min(req.pageSize, MAX_PAGE);
      const after = req.pageToken ? pageTokenName(req.pageToken) : undefined;
      // A page starts after the last name of the previous one: stable under concurrent changes. It costs its
      // size, not the rule count, and is read and encoded LIST_SLICE rules at a time, giving the event loop
      // back between them once 4 ms of a turn have passed (a page of 1 000 took one turn of 54-75 ms of CPU
      // with 10 000 rules installed): each slice starts after the last name of the one before, as the pages
      // of a client asking for LIST_SLICE rules at a time would. At most page_size rules and MAX_PAGE_BYTES
      // encoded (at least one rule), so that no page exceeds a default client's 4 MiB receive limit whatever
      // the rules hold; each rule is encoded once, to measure it and to send it.
      const pace = pacer();
      const rules: Rule[] = [];
      const encoded: Uint8Array[] = [];
      let bytes = 0;
      let more = false;
      let cursor = after;
      while (rules.length < size) {
        const page = ctl.rulePage(cursor, Math.min(LIST_SLICE, size - rules.length));
        let full = false;
        for (const view of page.rules) {
          const r = ruleToProto(view);
          const b = encodeRule(r);
          const n = b.length + 8; // + field tag and length
          if (rules.length > 0 && bytes + n > MAX_PAGE_BYTES) {
            full = true;
            break;
          }
          rules.push(r);
          encoded.push(b);
          bytes += n;
        }
        more = full || page.more;
        if (full || !page.more || page.rules.length === 0) break;
        cursor = page.rules[page.rules.length - 1].name;
        if (rules.length < size) await pace();
      }
      const nextPageToken = more && rules.length ? pageToken('rule', rules[rules.length - 1].name) : '';
      return withBytes(
        { rules, nextPageToken },
        fieldsMessage(
          encoded.map((b) => [1, b] as const),
          [2, nextPageToken],
        ),
      );
    },
    async updateRule(req, context) {
      const { signal } = context;
      if (!req.rule) throw CoreError.invalid([{ field: 'rule', description: 'is required' }]);
      const { repaired, changed, ...view } = await ctl.updateRule(
        ruleFromProto(req.rule),
        generationOf(req.expectedGeneration),
        {
          signal,
        },
      );
      if (!changed) reportOutcome(context, repaired.length ? 'repaired' : 'unchanged');
      const rule = ruleToProto(view);
      return withBytes({ rule, repaired }, updateRuleReply(rule, repaired));
    },
    async deleteRule(req, { signal }) {
      checkName(req.name);
      await ctl.deleteRule(req.name, generationOf(req.expectedGeneration), { signal });
      return {};
    },
    async applyRules(req, context) {
      const { signal } = context;
      const tick = () => new Promise<void>((r) => setImmediate(r));
      // Decoded (apply-rules-codec.ts: the request arrives undecoded), then converted, 256 at a time,
      // yielding between: decoding 10 000 rules took 20-55 ms, converting them 100-270 ms (MACs made
      // canonical). Every rule is decoded before any is converted: a request that does not decode is
      // refused as such, whatever a rule before the broken one holds.
      const raw = lazyRules(req);
      const protos: Rule[] = raw ? [] : req.rules;
      if (raw) {
        for (let i = 0; i < raw.count; i++) {
          protos.push(raw.get(i));
          if ((i & 255) === 255) await tick();
        }
      }
      const specs: RuleSpec[] = [];
      for (const [i, r] of protos.entries()) {
        specs.push(ruleFromProto(r));
        if ((i & 255) === 255) await tick();
      }
      const changes = await ctl.applyRules(specs, req.validateOnly, { signal });
      reportChanges(
        context,
        'rules',
        changes.map((c) => ({ name: c.name, action: c.action, repaired: !!c.repaired?.length })),
      );
      if (changes.every((c) => c.action === 'unchanged')) {
        reportOutcome(context, changes.some((c) => c.repaired?.length) ? 'repaired' : 'unchanged');
      }
      const renamedOf = new Map(changes.flatMap((c) => (c.renamed ? [[c.name, c.renamed] as const] : [])));
      // The whole set only when it fits a default client's limit with room to spare: an applied
      // change must not reach the client as "Received message larger than max" (RESOURCE_EXHAUSTED).
      // Built a page at a time, yielding between pages, and only until it is too large: the reply
      // to 10 000 rules held the event loop ~100 ms (reads wait meanwhile). Each rule is encoded
      // once, to measure it and to send it (encodeApplyRulesReply).
      const rules: Rule[] = [];
      const encoded: Uint8Array[] = [];
      let omitted = false;
      if (!req.validateOnly) {
        let bytes = 0;
        for (let after: string | undefined; !omitted;) {
          const page = ctl.rulePage(after, 256);
          for (const v of page.rules) {
            const r = ruleToProto(v);
            // Interface names given as a device's alternative name: what was stored instead, in this reply.
            const renamed = renamedOf.get(v.name);
            if (renamed && r.status) r.status.warnings = [...renamed, ...r.status.warnings];
            const b = encodeRule(r);
            bytes += b.length + 8;
            if (bytes > MAX_PAGE_BYTES) {
              omitted = true;
              break;
            }
            rules.push(r);
            encoded.push(b);
          }
          if (!page.more) break;
          after = page.rules.at(-1)!.name;
          await tick();
        }
      }
      return encodeApplyRulesReply(
        {
          changes: changes.map((c) => ({ name: c.name, action: CHANGE_ACTION[c.action], repaired: c.repaired ?? [] })),
          rules: omitted ? [] : rules,
          applied: !req.validateOnly,
          rulesOmitted: omitted,
        },
        omitted ? [] : encoded,
        tick,
      );
    },
  };
}

const utf8 = new TextEncoder();

/** UpdateRuleResponse's bytes: the rule through the kept writer (encodeRule), then each repaired line (field 2). */
export function updateRuleReply(rule: Rule, repaired: readonly string[]): Uint8Array {
  return fieldsMessage([[1, encodeRule(rule)], ...repaired.map((line) => [2, utf8.encode(line)] as const)]);
}

/**
 * A uint64 expected_generation as the core's number. Generations count
 * changes from 1 and never approach 2^53; a larger value cannot equal one, and
 * rounding keeps it above every real generation, so the call fails ABORTED.
 */
function generationOf(g: bigint): number {
  return g > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(g);
}

/**
 * The RuleService definition with ApplyRules decoded and encoded a chunk at a
 * time (apply-rules-codec.ts), and CreateRule, GetRule, ListRules, UpdateRule
 * and ApplyRules replies sent as the service encoded them (encoded-reply.ts):
 * the same bytes on the wire, no single long turn of the event loop for
 * 10 000 rules, and a change's reply encoded through the kept writer (its own
 * encode copied the message and grew a fresh buffer from 128 bytes).
 */
export function ruleWireDefinition(
  def: typeof RuleServiceDefinition,
): NormalizedServiceDefinition<typeof RuleServiceDefinition> {
  const methods = fromTsProto(def);
  return {
    ...methods,
    createRule: { ...methods.createRule, responseSerialize: serializer(methods.createRule.responseSerialize) },
    getRule: { ...methods.getRule, responseSerialize: serializer(methods.getRule.responseSerialize) },
    listRules: { ...methods.listRules, responseSerialize: serializer(methods.listRules.responseSerialize) },
    updateRule: { ...methods.updateRule, responseSerialize: serializer(methods.updateRule.responseSerialize) },
    applyRules: {
      ...methods.applyRules,
      requestDeserialize: decodeApplyRulesLazily,
      responseSerialize: serializer(methods.applyRules.responseSerialize),
    },
  };
}
