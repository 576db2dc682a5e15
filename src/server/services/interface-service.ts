/** InterfaceService: the interfaces the daemon manages, requested vs effective XDP mode. */
import type { ServiceImplementation } from 'nice-grpc';

import type { Controller } from '../core/controller.js';
import { CoreError, type FieldViolation } from '../core/errors.js';
import { validateInterfaceName } from '../core/validate.js';
import type { InterfaceServiceDefinition } from '../../gen/xdpctl/v1/interface.js';
import { interfaceToProto } from './convert.js';

export function interfaceService(ctl: Controller): ServiceImplementation<typeof InterfaceServiceDefinition> {
  return {
    async listInterfaces() {
      return { interfaces: ctl.listInterfaces().map(interfaceToProto) };
    },
    async getInterface(req) {
      // A name no interface can have is a bad argument, not a miss (and is never echoed whole).
      const v: FieldViolation[] = [];
      validateInterfaceName(req.name, 'name', v);
      if (v.length) throw CoreError.invalid(v);
      const i = ctl.listInterfaces().find((x) => x.name === req.name);
      if (!i) throw new CoreError('not-found', `interface "${req.name}" is not managed by xdpctld`);
      return { interface: interfaceToProto(i) };
    },
  };
}
