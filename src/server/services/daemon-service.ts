/** DaemonService: version, readiness and a datapath summary. */
import type { ServiceImplementation } from 'nice-grpc';

import type { Controller } from '../core/controller.js';
import type { Dataplane } from '../core/dataplane.js';
import type { DaemonServiceDefinition } from '../../gen/xdpctl/v1/daemon.js';

export function daemonService(
  ctl: Controller,
  dp: Dataplane,
  info: { version: string; startedAt: number; serving: () => boolean },
): ServiceImplementation<typeof DaemonServiceDefinition> {
  return {
    async getStatus() {
      const up = Date.now() - info.startedAt;
      const state = ctl.desiredState();
      return {
        version: info.version,
        serving: info.serving(),
        datapath: {
          programId: dp.progId,
          pinPath: dp.pinRoot,
          ruleCount: state.rules.length,
          linkCount: state.links.length,
          interfaceCount: ctl.listInterfaces().length,
          warnings: [...dp.warnings],
        },
        uptime: { seconds: BigInt(Math.floor(up / 1000)), nanos: (up % 1000) * 1e6 },
      };
    },
  };
}
