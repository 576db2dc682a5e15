/** `xdpctl status` and `xdpctl health` (for probes: exit 0 only when SERVING). */
import type { Command } from 'commander';
import { ClientError, Status } from 'nice-grpc';

import { GetStatusResponse } from '../../../gen/xdpctl/v1/daemon.js';
import { CliError, EXIT } from '../errors.js';
import { examples } from '../flags.js';
import { formatDuration, HEALTH, orDash, print, printData, renderFields, yesNo } from '../output.js';
import { run } from '../session.js';

export function registerStatus(program: Command): void {
  program
    .command('status')
    .description("the daemon's version, health and datapath summary")
    .addHelpText('after', examples('xdpctl status\nxdpctl --server unix:/run/xdpctl/xdpctl.sock -o json status'))
    .action(
      run(async (s, o) => {
        const res = await s.client.daemon.getStatus({}, s.call());
        const health = s.health();
        const check = async (service: string): Promise<string> => {
          try {
            const h = await health.check({ service }, s.call());
            return HEALTH[h.status] ?? String(h.status);
          } catch (e) {
            if (e instanceof ClientError && e.code === Status.NOT_FOUND) return 'SERVICE_UNKNOWN';
            throw e;
          }
        };
        const healthBy = { '': await check(''), 'xdpctl.datapath': await check('xdpctl.datapath') };
        if (o.output !== 'table') {
          return printData(o.output, { ...(GetStatusResponse.toJSON(res) as object), health: healthBy });
        }
        const d = res.datapath;
        print(
          renderFields([
            ['server', o.server],
            ['version', res.version],
            ['serving', yesNo(res.serving)],
            ['health', healthBy['']],
            ['datapath health', healthBy['xdpctl.datapath']],
            ['program id', orDash(d?.programId)],
            ['pin path', orDash(d?.pinPath)],
            ['rules', d?.ruleCount ?? 0],
            ['links', d?.linkCount ?? 0],
            ['interfaces', d?.interfaceCount ?? 0],
            ['uptime', res.uptime ? formatDuration(Number(res.uptime.seconds)) : '-'],
            // What the datapath cannot do (e.g. failed redirects not counted): one line each.
            ...(d?.warnings ?? []).map((w): [string, string] => ['warning', w]),
          ]),
        );
      }),
    );

  // --- health (for probes: exit 0 only when SERVING)
  program
    .command('health')
    .description('gRPC health check; exits 0 when SERVING, 10 otherwise (for liveness/readiness probes)')
    .option('--service <name>', 'health service: "" (the daemon) or xdpctl.datapath (its interfaces)', '')
    .addHelpText(
      'after',
      examples('xdpctl --server unix:/run/xdpctl/xdpctl.sock health\nxdpctl health --service xdpctl.datapath'),
    )
    .action(
      run(async (s, o, _args, flags) => {
        const service = String(flags.service ?? '');
        let status: string;
        try {
          const h = await s.health().check({ service }, s.call());
          status = HEALTH[h.status] ?? String(h.status);
        } catch (e) {
          if (!(e instanceof ClientError) || e.code !== Status.NOT_FOUND) throw e;
          status = 'SERVICE_UNKNOWN';
        }
        if (o.output !== 'table') printData(o.output, { service, status });
        else print(status);
        if (status !== 'SERVING') {
          throw new CliError(`health of ${service === '' ? 'xdpctld' : `"${service}"`} is ${status}`, EXIT.UNAVAILABLE);
        }
      }),
    );
}
