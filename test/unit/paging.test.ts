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
import { capStrings, MAX_PAGE_BYTES, pageToken, takePage } from '../../src/server/services/paging.js';

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
      const after = Buffer.from(next, 'base64url').toString().slice(2);
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
});
