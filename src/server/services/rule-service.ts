/** RuleService: validate, call the controller, convert. Errors map in status.ts. */
import type { ServiceImplementation } from 'nice-grpc';

import type { Controller } from '../core/controller.js';
import { CoreError, type FieldViolation } from '../core/errors.js';
import { validateName } from '../core/validate.js';
import type { RuleServiceDefinition } from '../../gen/xdpctl/v1/rule.js';
import { CHANGE_ACTION, ruleFromProto, ruleToProto } from './convert.js';

const DEFAULT_PAGE = 100;

/** A name that no rule can have is a bad argument, not a miss (and is never echoed whole). */
function checkName(name: string): void {
  const v: FieldViolation[] = [];
  validateName(name, 'name', v);
  if (v.length) throw CoreError.invalid(v);
}
const MAX_PAGE = 1000;

export function ruleService(ctl: Controller): ServiceImplementation<typeof RuleServiceDefinition> {
  return {
    async createRule(req, { signal }) {
      if (!req.rule) throw CoreError.invalid([{ field: 'rule', description: 'is required' }]);
      return { rule: ruleToProto(await ctl.createRule(ruleFromProto(req.rule), { signal })) };
    },
    async getRule(req) {
      checkName(req.name);
      return { rule: ruleToProto(ctl.getRule(req.name)) };
    },
    async listRules(req) {
      const size = req.pageSize === 0 ? DEFAULT_PAGE : Math.min(req.pageSize, MAX_PAGE);
      const all = ctl.listRules();
      // Page tokens are the last name returned: stable under concurrent changes.
      const start = req.pageToken ? all.findIndex((r) => r.name > req.pageToken) : 0;
      const page = start < 0 ? [] : all.slice(start, start + size);
      const more = start >= 0 && start + size < all.length;
      return { rules: page.map(ruleToProto), nextPageToken: more ? page[page.length - 1].name : '' };
    },
    async updateRule(req, { signal }) {
      if (!req.rule) throw CoreError.invalid([{ field: 'rule', description: 'is required' }]);
      return { rule: ruleToProto(await ctl.updateRule(ruleFromProto(req.rule), req.expectedGeneration, { signal })) };
    },
    async deleteRule(req, { signal }) {
      checkName(req.name);
      await ctl.deleteRule(req.name, req.expectedGeneration, { signal });
      return {};
    },
    async applyRules(req, { signal }) {
      const changes = await ctl.applyRules(req.rules.map(ruleFromProto), req.validateOnly, { signal });
      return {
        changes: changes.map((c) => ({ name: c.name, action: CHANGE_ACTION[c.action] })),
        rules: req.validateOnly ? [] : ctl.listRules().map(ruleToProto),
        applied: !req.validateOnly,
      };
    },
  };
}
