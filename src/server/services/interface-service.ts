/** InterfaceService: the interfaces the daemon manages, requested vs effective XDP mode. */
import type { ServiceImplementation } from 'nice-grpc';

import type { Controller } from '../core/controller.js';
import { CoreError, type FieldViolation } from '../core/errors.js';
import { validateInterfaceName } from '../core/validate.js';
import { ManagedInterface, type InterfaceServiceDefinition } from '../../gen/xdpctl/v1/interface.js';
import { interfaceToProto } from './convert.js';
import { capStrings, pageTokenKey, takePage } from './paging.js';

/** used_by of one interface is cut at this many bytes (ManagedInterface.used_by_omitted counts the rest). */
export const MAX_USED_BY_BYTES = 1024 * 1024;

const isInterfaceName = (name: string) => {
  const v: FieldViolation[] = [];
  validateInterfaceName(name, 'name', v);
  return v.length === 0;
};

/** An interface as the API shows it, its used_by within MAX_USED_BY_BYTES. */
function toProto(i: Parameters<typeof interfaceToProto>[0]): ManagedInterface {
  const m = interfaceToProto(i);
  const { kept, omitted } = capStrings(m.usedBy, MAX_USED_BY_BYTES);
  return { ...m, usedBy: kept, usedByOmitted: omitted };
}

export function interfaceService(ctl: Controller): ServiceImplementation<typeof InterfaceServiceDefinition> {
  return {
    async listInterfaces(req) {
      const after = req.pageToken ? pageTokenKey('if', req.pageToken, isInterfaceName) : undefined;
      // Sorted by name (the controller's order); a page continues after the last name of the previous one.
      const { items, next } = takePage(ctl.listInterfaces().map(toProto), {
        kind: 'if',
        key: (i) => i.name,
        bytes: (i) => ManagedInterface.encode(i).finish().length,
        pageSize: req.pageSize,
        after,
      });
      return { interfaces: items, nextPageToken: next };
    },
    async getInterface(req) {
      // A name no interface can have is a bad argument, not a miss (and is never echoed whole).
      const v: FieldViolation[] = [];
      validateInterfaceName(req.name, 'name', v);
      if (v.length) throw CoreError.invalid(v);
      const i = ctl.listInterfaces().find((x) => x.name === req.name);
      if (!i) {
        // Both NOT_FOUND, but said apart: a device of the host no rule or link uses, or no device at all.
        const host = ctl.unmanagedInterface(req.name);
        throw new CoreError(
          'not-found',
          host.kind === 'device'
            ? `interface "${req.name}" exists but is not managed by xdpctld (no rule or link uses it)`
            : host.kind === 'altname'
              ? `interface "${req.name}" is an alternative name of ${host.device}, not managed by xdpctld under that name`
              : `interface "${req.name}" does not exist (in xdpctld's network namespace)`,
        );
      }
      return { interface: toProto(i) };
    },
  };
}
