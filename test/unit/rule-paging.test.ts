/**
 * No response over a default client's 4 MiB receive limit, whatever the
 * rules hold: 700 rules x 64 backends with 63-character names (within the
 * documented limits) through RuleService's ListRules pages and ApplyRules'
 * answer, encoded exactly as on the wire.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { Controller, RuleView } from '../../src/server/core/controller.js';
import { serializer } from '../../src/server/services/encoded-reply.js';
import { MAX_PAGE_BYTES, ruleService } from '../../src/server/services/rule-service.js';
import { ApplyRulesResponse, ListRulesResponse, Rule } from '../../src/gen/xdpctl/v1/rule.js';

const CLIENT_LIMIT = 4 * 1024 * 1024;
const name63 = (prefix: string, i: number) => `${prefix}${String(i).padStart(4, '0')}`.padEnd(63, 'x');

function bigRules(): RuleView[] {
  return Array.from({ length: 700 }, (_, r) => {
    const backends = Array.from({ length: 64 }, (_, b) => ({
      ip: `10.${r >> 8}.${r & 255}.${b + 1}`,
      mac: '02:42:ac:11:00:02',
      interface: `veth${b}`.padEnd(15, 'v'),
      weight: 1,
    }));
    return {
      name: name63('r', r),
      protocol: 'udp',
      port: 1000 + r,
      destination: '',
      sourcePrefixes: [],
      ingressInterfaces: ['eth0'],
      backends,
      udpChecksum: 'update',
      labels: { owner: 'o'.repeat(63) },
      generation: 1,
      createTime: 0,
      updateTime: 0,
      status: {
        state: 'active',
        message: '',
        backends: backends.map((b) => ({ ...b, resolved: true, message: '' })),
        warnings: [],
      },
    } as unknown as RuleView;
  }).sort((a, b) => (a.name < b.name ? -1 : 1));
}

describe('responses within the client limit', () => {
  const rules = bigRules();
  // Pages as Controller.rulePage makes them: the first names after the token, in code-unit order.
  const rulePage = (after: string | undefined, limit: number) => {
    const start = after === undefined ? 0 : rules.findIndex((r) => r.name > after);
    const page = start < 0 ? [] : rules.slice(start, start + limit);
    return { rules: page, more: start >= 0 && start + limit < rules.length };
  };
  const ctl = { listRules: () => rules, rulePage, applyRules: async () => [] } as unknown as Controller;
  const svc = ruleService(ctl) as unknown as {
    listRules(req: { pageSize: number; pageToken: string }): Promise<ListRulesResponse>;
    applyRules(req: { rules: []; validateOnly: boolean }, ctx: { signal: AbortSignal }): Promise<ApplyRulesResponse>;
  };

  it('ListRules pages stay under 2 MiB encoded and together hold every rule in order', async () => {
    const seen: string[] = [];
    let token = '';
    let pages = 0;
    do {
      const page = await svc.listRules({ pageSize: 1000, pageToken: token });
      const bytes = ListRulesResponse.encode(page).finish().length;
      assert.ok(bytes <= MAX_PAGE_BYTES + 64 && bytes < CLIENT_LIMIT, `page ${pages}: ${bytes} bytes`);
      seen.push(...page.rules.map((r) => r.name));
      token = page.nextPageToken;
      pages++;
    } while (token);
    assert.deepEqual(
      seen,
      rules.map((r) => r.name),
    );
    assert.ok(pages > 1, `${pages} pages`);
  });

  it('every page holds as many rules as fit (each counted as its encoding + 8 bytes), sent as its own encoding', async () => {
    const wire = serializer((r: ListRulesResponse) => ListRulesResponse.encode(r).finish());
    for (const pageSize of [1, 10, 100, 300, 350, 400, 1000]) {
      let token = '';
      let taken = 0;
      do {
        const page = await svc.listRules({ pageSize, pageToken: token });
        const sizes = page.rules.map((r) => Rule.encode(r).finish().length + 8);
        const bytes = sizes.reduce((a, b) => a + b, 0);
        assert.ok(page.rules.length >= 1 && page.rules.length <= pageSize);
        assert.ok(page.rules.length === 1 || bytes <= MAX_PAGE_BYTES, `${pageSize}: ${bytes} bytes`);
        taken += page.rules.length;
        if (page.rules.length < pageSize && taken < rules.length) {
          const next = Rule.encode(
            (await svc.listRules({ pageSize: 1, pageToken: page.nextPageToken })).rules[0],
          ).finish().length;
          assert.ok(bytes + next + 8 > MAX_PAGE_BYTES, `${pageSize}: the next rule would have fitted`);
        }
        assert.deepEqual(Buffer.from(wire(page)), Buffer.from(ListRulesResponse.encode(page).finish()), `${pageSize}`);
        token = page.nextPageToken;
      } while (token);
      assert.equal(taken, rules.length, `${pageSize}: every rule once`);
    }
  });

  it('ApplyRules leaves the rule set out when it would not fit, and says so', async () => {
    const res = await svc.applyRules({ rules: [], validateOnly: false }, { signal: new AbortController().signal });
    assert.equal(res.rulesOmitted, true);
    assert.deepEqual(res.rules, []);
    assert.ok(ApplyRulesResponse.encode(res).finish().length < CLIENT_LIMIT);
  });
});
