/** LinkService: cross-connects. */
import type { ServiceImplementation } from 'nice-grpc';

import type { Controller } from '../core/controller.js';
import { CoreError, type FieldViolation } from '../core/errors.js';
import { validateInterfaceName } from '../core/validate.js';
import { linkKey } from '../core/model.js';
import { Link, type LinkServiceDefinition } from '../../gen/xdpctl/v1/link.js';
import { CHANGE_ACTION, linkFromProto, linkToProto } from './convert.js';
import { reportChanges, reportOutcome } from './audit-outcome.js';
import { MAX_PAGE_BYTES, pageTokenKey, takePage } from './paging.js';

/** A link's place in (a, b) order as one string: interface names hold no NUL, which sorts first. */
const abKey = (l: { a: string; b: string }) => `${l.a}\0${l.b}`;
const isAbKey = (key: string) => {
  const [a, b, more] = key.split('\0');
  const v: FieldViolation[] = [];
  validateInterfaceName(a, 'a', v);
  validateInterfaceName(b ?? '', 'b', v);
  return more === undefined && v.length === 0;
};

export function linkService(ctl: Controller): ServiceImplementation<typeof LinkServiceDefinition> {
  const current = (spec: { a: string; b: string }) => ctl.listLinks().find((l) => linkKey(l) === linkKey(spec));
  return {
    async connect(req, { signal }) {
      if (!req.link) throw CoreError.invalid([{ field: 'link', description: 'is required' }]);
      const { renamed, ...spec } = await ctl.connect(linkFromProto(req.link), { signal });
      const link = linkToProto(current(spec) ?? spec);
      // Interface names given as a device's alternative name: what was stored instead, in this reply.
      if (renamed) link.status!.warnings = [...renamed, ...link.status!.warnings];
      return { link };
    },
    async disconnect(req, { signal }) {
      const v: FieldViolation[] = [];
      validateInterfaceName(req.a, 'a', v);
      validateInterfaceName(req.b, 'b', v);
      if (v.length) throw CoreError.invalid(v);
      await ctl.disconnect(req.a, req.b, { signal });
      return {};
    },
    async listLinks(req) {
      const after = req.pageToken ? pageTokenKey('link', req.pageToken, isAbKey) : undefined;
      const { items, next } = takePage(byAB(ctl.listLinks()).map(linkToProto), {
        kind: 'link',
        key: abKey,
        bytes: (l) => Link.encode(l).finish().length,
        pageSize: req.pageSize,
        after,
      });
      return { links: items, nextPageToken: next };
    },
    async applyLinks(req, context) {
      const changes = await ctl.applyLinks(req.links.map(linkFromProto), req.validateOnly, { signal: context.signal });
      reportChanges(
        context,
        'links',
        byAB(changes).map((c) => ({ name: `${c.a}-${c.b}`, action: c.action })),
      );
      if (changes.every((c) => c.action === 'unchanged')) reportOutcome(context, 'unchanged');
      const renamedOf = new Map(changes.flatMap((c) => (c.renamed ? [[linkKey(c), c.renamed] as const] : [])));
      const links = req.validateOnly
        ? []
        : byAB(ctl.listLinks()).map((l) => {
            const p = linkToProto(l);
            const renamed = renamedOf.get(linkKey(l));
            if (renamed) p.status!.warnings = [...renamed, ...p.status!.warnings];
            return p;
          });
      // The whole set only when it fits a default client's limit with room to spare (as ApplyRules).
      const omitted = links.reduce((n, l) => n + Link.encode(l).finish().length + 8, 0) > MAX_PAGE_BYTES;
      return {
        changes: byAB(changes).map((c) => ({ a: c.a, b: c.b, action: CHANGE_ACTION[c.action] })),
        links: omitted ? [] : links,
        applied: !req.validateOnly,
        linksOmitted: omitted,
      };
    },
  };
}

/** Code-unit order (what "ascending" means for interface names; localeCompare would not be stable across locales). */
function cmp(x: string, y: string): number {
  return x < y ? -1 : x > y ? 1 : 0;
}

/** In ascending order of (a, b), as the API documents for links and link changes. */
function byAB<T extends { a: string; b: string }>(xs: T[]): T[] {
  return [...xs].sort((x, y) => (x.a === y.a ? cmp(x.b, y.b) : cmp(x.a, y.a)));
}
