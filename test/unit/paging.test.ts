/**
 * Pages within a default client's 4 MiB limit (services/paging.ts) and the
 * services that use them beyond ListRules: ListLinks over 1024 links (the
 * link table's capacity) whose warnings are as long as they get, ApplyLinks'
 * links_omitted, ListInterfaces/GetInterface with a used_by past 1 MiB.
 * The services run over a stub controller holding those collections; the
 * integration test large-responses.test.ts shows the same on a real daemon
 * at 1000 rules x 64 backends on 64 interfaces.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { CallContext } from 'nice-grpc';

import type { Controller, ManagedInterface as CoreInterface } from '../../src/server/core/controller.js';
import { CoreError } from '../../src/server/core/errors.js';
import { GetInterfaceResponse, ListInterfacesResponse } from '../../src/gen/xdpctl/v1/interface.js';
import { ApplyLinksResponse, ListLinksResponse } from '../../src/gen/xdpctl/v1/link.js';
import { interfaceService } from '../../src/server/services/interface-service.js';
import { linkService } from '../../src/server/services/link-service.js';
import { capStrings, MAX_PAGE_BYTES, pageToken, pageTokenKey, takePage } from '../../src/server/services/paging.js';
import { counterService } from '../../src/server/services/counter-service.js';
import { ruleService } from '../../src/server/services/rule-service.js';
import type { CounterHub } from '../../src/server/core/counter-hub.js';

const LIMIT = 4 * 1024 * 1024;
const ctx = { signal: new AbortController().signal } as CallContext;

function invalidToken(e: unknown): boolean {
  assert.ok(e instanceof CoreError, String(e));
  assert.equal(e.kind, 'invalid');
  assert.equal(e.violations?.[0]?.field, 'page_token');
  return true;
}

describe('paging', () => {
  it('takePage: at most page_size items and MAX_PAGE_BYTES, at least one, continuing after the last key', () => {
    const items = Array.from({ length: 50 }, (_, i) => `k${String(i).padStart(3, '0')}`);
    const opts = { kind: 't', key: (x: string) => x, bytes: () => 100_000 };
    const first = takePage(items, { ...opts, pageSize: 0 });
    assert.equal(first.items.length, Math.floor(MAX_PAGE_BYTES / 100_008));
    const seen = [...first.items];
    let next = first.next;
    while (next) {
      const after = pageTokenKey('t', next, () => true);
      const page = takePage(items, { ...opts, pageSize: 7, after });
      assert.ok(page.items.length <= 7 && page.items.length > 0);
      seen.push(...page.items);
      next = page.next;
    }
    assert.deepEqual(seen, items);
    // One item larger than a page still comes, alone.
    const huge = takePage(items, { ...opts, bytes: () => 3 * MAX_PAGE_BYTES, pageSize: 10 });
    assert.deepEqual(huge.items, ['k000']);
    assert.equal(huge.next, pageToken('t', 'k000'));
  });

  it('capStrings keeps the leading entries within the budget and counts the rest', () => {
    assert.deepEqual(capStrings(['a', 'b'], 100), { kept: ['a', 'b'], omitted: 0 });
    assert.deepEqual(capStrings(['aaaa', 'bbbb', 'cccc'], 14), { kept: ['aaaa', 'bbbb'], omitted: 1 });
  });

  it('ListLinks pages 1024 links with the longest warnings within 4 MiB; a foreign token is INVALID_ARGUMENT', async () => {
    // 1024 links (the link table's capacity), 15-byte names, 17 warnings each as long as shadow warnings get.
    const name = (i: number, side: string) => `${side}${String(i).padStart(4, '0')}`.padEnd(15, 'x');
    const long = 'w'.repeat(250);
    const links = Array.from({ length: 1024 }, (_, i) => ({
      a: name(i, 'a'),
      b: name(i, 'b'),
      direction: 'both' as const,
      active: [true, true] as [boolean, boolean],
      warnings: Array.from({ length: 17 }, (_, k) => `${k} ${long}`),
    }));
    const ctl = { listLinks: () => links } as unknown as Controller;
    const svc = linkService(ctl);
    const got: string[] = [];
    let token = '';
    let pages = 0;
    do {
      const page = ListLinksResponse.fromPartial(await svc.listLinks({ pageSize: 0, pageToken: token }, ctx));
      const bytes = ListLinksResponse.encode(page).finish().length;
      assert.ok(bytes < LIMIT, `a page of ${bytes} bytes`);
      got.push(...page.links.map((l) => `${l.a}-${l.b}`));
      token = page.nextPageToken;
      pages++;
    } while (token);
    assert.ok(pages > 1, `${pages} page(s)`);
    assert.deepEqual(
      got,
      links.map((l) => `${l.a}-${l.b}`),
    );
    await assert.rejects(svc.listLinks({ pageSize: 0, pageToken: pageToken('if', 'eth0') }, ctx), invalidToken);
    await assert.rejects(svc.listLinks({ pageSize: 0, pageToken: 'x' }, ctx), invalidToken);

    // ApplyLinks answers with the whole set only when it fits; otherwise links_omitted.
    const applying = {
      listLinks: () => links,
      applyLinks: async () => [],
    } as unknown as Controller;
    const applied = ApplyLinksResponse.fromPartial(
      await linkService(applying).applyLinks({ links: [], validateOnly: false }, ctx),
    );
    assert.equal(applied.linksOmitted, true);
    assert.deepEqual(applied.links, []);
  });

  it('ListInterfaces pages; an interface used by more than 1 MiB of rules lists what fits and counts the rest', async () => {
    const users = (n: number, tag: string) =>
      Array.from({ length: n }, (_, i) => `rule/${tag}-${String(i).padStart(6, '0')}`.padEnd(60, 'n') + '/egress');
    const iface = (name: string, n: number): CoreInterface => ({
      name,
      ifindex: 1,
      present: true,
      requestedMode: 'auto',
      effectiveMode: 'native',
      progId: 1,
      usedBy: users(n, name),
      warnings: [],
      conditions: [],
    });
    // 20 000 users (what --max-rules 20000 allows) on one interface, 4000 on 64 others.
    const all = [
      iface('big', 20_000),
      ...Array.from({ length: 64 }, (_, i) => iface(`e${String(i).padStart(2, '0')}`, 4000)),
    ];
    all.sort((x, y) => (x.name < y.name ? -1 : 1));
    const svc = interfaceService({ listInterfaces: () => all } as unknown as Controller);
    const names: string[] = [];
    let token = '';
    do {
      const page = ListInterfacesResponse.fromPartial(await svc.listInterfaces({ pageSize: 0, pageToken: token }, ctx));
      const bytes = ListInterfacesResponse.encode(page).finish().length;
      assert.ok(bytes < LIMIT, `a page of ${bytes} bytes`);
      for (const i of page.interfaces) {
        names.push(i.name);
        assert.equal(i.usedBy.length + i.usedByOmitted, i.name === 'big' ? 20_000 : 4000, i.name);
        if (i.name === 'big') assert.ok(i.usedByOmitted > 0 && i.usedBy.length > 10_000);
      }
      token = page.nextPageToken;
    } while (token);
    assert.deepEqual(
      names,
      all.map((i) => i.name),
    );
    const big = GetInterfaceResponse.fromPartial(await svc.getInterface({ name: 'big' }, ctx));
    assert.equal(big.interface!.usedBy.length + big.interface!.usedByOmitted, 20_000);
    await assert.rejects(svc.listInterfaces({ pageSize: 0, pageToken: pageToken('if', 'a/b') }, ctx), invalidToken);
  });

  it('page tokens are authenticated: a crafted, altered or unsigned token is INVALID_ARGUMENT on every paged call', async () => {
    const unsigned = (text: string) => Buffer.from(text).toString('base64url');
    const tamper = (token: string) => {
      const raw = Buffer.from(token, 'base64url');
      raw[raw.length - 1] ^= 1; // the content changes, the HMAC does not
      return raw.toString('base64url');
    };
    const ctl = {
      listLinks: () => [],
      listInterfaces: () => [],
      rulePage: () => ({ rules: [], more: false }),
    } as unknown as Controller;
    const hub = {
      snapshot: () => ({ time: 0, rules: [], backends: [], links: [], global: undefined }),
    } as unknown as CounterHub;
    const links = linkService(ctl);
    const ifs = interfaceService(ctl);
    const rs = ruleService(ctl);
    const cs = counterService(hub);
    const calls: [string, (pageToken: string) => Promise<unknown>, string[]][] = [
      ['ListRules', (t) => rs.listRules({ pageSize: 0, pageToken: t }, ctx), ['after:zzz', 'after:r1', 'rule:r1']],
      ['ListLinks', (t) => links.listLinks({ pageSize: 0, pageToken: t }, ctx), ['link:a\0b', 'link:zzz']],
      ['ListInterfaces', (t) => ifs.listInterfaces({ pageSize: 0, pageToken: t }, ctx), ['if:eth0', 'if:zzz']],
      ['GetCounters', (t) => cs.getCounters({ pageToken: t }, ctx), ['entries:8000', 'entries:1']],
    ];
    for (const [what, call, crafted] of calls) {
      for (const text of crafted) {
        await assert.rejects(call(unsigned(text)), invalidToken, `${what}: unsigned ${text}`);
      }
      // Tokens of the right shape this process signed, but altered, of another collection, or not canonical.
      const kind = { ListRules: 'rule', ListLinks: 'link', ListInterfaces: 'if', GetCounters: 'entries' }[what]!;
      const genuine = pageToken(kind, kind === 'entries' ? '8000' : 'r1');
      await assert.rejects(call(tamper(genuine)), invalidToken, `${what}: altered`);
      await assert.rejects(call(genuine.slice(0, -2)), invalidToken, `${what}: truncated`);
      await assert.rejects(call(`${genuine}=`), invalidToken, `${what}: not canonical`);
      await assert.rejects(call(pageToken(kind === 'if' ? 'link' : 'if', 'r1')), invalidToken, `${what}: other kind`);
    }
    // A genuine token is accepted (the key it carries comes back).
    assert.equal(
      pageTokenKey('rule', pageToken('rule', 'r1'), () => true),
      'r1',
    );
    await rs.listRules({ pageSize: 0, pageToken: pageToken('rule', 'r1') }, ctx);
  });
});
