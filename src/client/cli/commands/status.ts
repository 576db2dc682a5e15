/** `xdpctl status` and `xdpctl health` (for probes: exit 0 only when SERVING). */
import type { Command } from 'commander';
import { ClientError, Status } from 'nice-grpc';

import {
  GetStatusResponse,
  TelemetryExportState,
  type ConfigFileStatus,
  type TelemetryExportStatus,
} from '../../../gen/xdpctl/v1/daemon.js';
import { CliError, EXIT } from '../errors.js';
import { examples } from '../flags.js';
import { formatDuration, groupWarnings, HEALTH, orDash, print, printData, renderFields, yesNo } from '../output.js';
import { run } from '../session.js';

/** The status lines of config-file mode (daemon.proto ConfigFileStatus). */
function configRows(c: ConfigFileStatus, health: string): [string, string][] {
  const rows: [string, string][] = [
    ['config file', c.path],
    ['config in force', c.inForce ? 'yes' : `no (${c.inForceCondition?.reason ?? 'refused'})`],
    ['config health', health],
  ];
  if (!c.inForce) {
    const since = c.inForceCondition?.lastTransitionTime;
    if (since) rows.push(['not in force since', since.toISOString()]);
    for (const p of c.problems) rows.push(['refused', p.field ? `${p.field}: ${p.description}` : p.description]);
  }
  rows.push(['running', c.running]);
  return rows;
}

/** One telemetry exporter's line (daemon.proto TelemetryExportStatus): whether its exports leave the host. */
export function telemetryExportRow(t: TelemetryExportStatus): [string, string] {
  const to = `${t.signal} to ${t.exporter}`;
  switch (t.state) {
    case TelemetryExportState.TELEMETRY_EXPORT_STATE_OK:
      return ['telemetry export', `${to}: ok (last export ${t.lastExportTime?.toISOString() ?? '-'})`];
    case TelemetryExportState.TELEMETRY_EXPORT_STATE_FAILING:
      return [
        'telemetry export',
        `${to}: failing since ${t.failingSince?.toISOString() ?? '-'} (${t.error}); ${t.failingExports} export(s) failed since, their data dropped`,
      ];
    case TelemetryExportState.TELEMETRY_EXPORT_STATE_PENDING:
      return ['telemetry export', `${to}: no export has ended yet`];
    default:
      return ['telemetry export', `${to}: not reported`];
  }
}

export function registerStatus(program: Command): void {
  program
    .command('status')
    .description(
      "the daemon's version, health and datapath summary; with xdpctld --config, whether the file on disk is in force",
    )
    .option(
      '--wide',
      'warnings: name every rule of a line that says many not ACTIVE for one reason, not the first 5 and how many more',
    )
    .addHelpText(
      'after',
      examples('xdpctl status\nxdpctl status --wide\nxdpctl --server unix:/run/xdpctl/xdpctl.sock -o json status'),
    )
    .action(
      run(async (s, o, _args, flags) => {
        const wide = flags.wide === true;
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
        const cfg = res.configFile;
        const healthBy: Record<string, string> = {
          '': await check(''),
          'xdpctl.datapath': await check('xdpctl.datapath'),
          // Only with --config: whether the file on disk is in force.
          ...(cfg ? { 'xdpctl.config': await check('xdpctl.config') } : {}),
        };
        if (o.output !== 'table') {
          return printData(o.output, { ...(GetStatusResponse.toJSON(res) as object), health: healthBy });
        }
        const d = res.datapath;
        print(
          renderFields([
            ['server', o.server],
            ['version', res.version],
            ['serving', yesNo(res.serving)],
            [
              'accepts changes',
              res.acceptsWrites ? 'yes' : `no: ${res.writesRefused || 'not said (an older xdpctld)'}`,
            ],
            ['health', healthBy['']],
            ['datapath health', healthBy['xdpctl.datapath']],
            ['program id', orDash(d?.programId)],
            ['pin path', orDash(d?.pinPath)],
            ['rules', d?.ruleCount ?? 0],
            ['links', d?.linkCount ?? 0],
            ['interfaces', d?.interfaceCount ?? 0],
            ['uptime', res.uptime ? formatDuration(Number(res.uptime.seconds)) : '-'],
            // What the datapath cannot do (e.g. failed redirects not counted) and what is wrong: one line each, the
            // rules not ACTIVE for one reason together (--wide: naming every one; -o json: the daemon's lines).
            ...groupWarnings(d?.warnings ?? [], wide).map((w): [string, string] => ['warning', w]),
            // The state store: whether it takes writes (changes are refused while it does not), and why not.
            ...(res.stateStore
              ? ([
                  ['state store', res.stateStore.path],
                  [
                    'state store writable',
                    res.stateStore.writable
                      ? `yes${res.stateStore.lastWriteAnswered ? ` (a write answered at ${res.stateStore.lastWriteAnswered.toISOString()})` : ''}`
                      : res.stateStore.cannotTell
                        ? `${res.stateStore.problem}; changes are tried (refused if the disk does not answer in 5 s)`
                        : `no: ${res.stateStore.problem}${res.stateStore.refusingSince ? ` (since ${res.stateStore.refusingSince.toISOString()})` : ''}; changes are refused`,
                  ],
                ] as [string, string][])
              : []),
            // The daemon's log, while it refuses writes (a full disk, the file size limit): lines are dropped.
            ...(res.logWriteProblem
              ? ([
                  [
                    'log',
                    `${res.logWriteProblem.sink} cannot be written: ${res.logWriteProblem.cause}` +
                      `${res.logWriteProblem.since ? ` (since ${res.logWriteProblem.since.toISOString()})` : ''}; ` +
                      `${res.logWriteProblem.linesDropped} line(s) dropped`,
                  ],
                ] as [string, string][])
              : []),
            // The TCP listeners' own certificate: until when clients accept it; once it expired, that they refuse it.
            ...(res.tls
              ? ([
                  ['tls certificate', res.tls.certificateFile],
                  [
                    'tls certificate valid',
                    res.tls.valid
                      ? `yes, until ${res.tls.notAfter?.toISOString() ?? '-'}`
                      : `no: ${res.tls.problem}; new TLS clients refuse the handshake until the files are rotated`,
                  ],
                  ...(res.tls.files && !res.tls.files.startsWith('in use')
                    ? ([['tls files', res.tls.files]] as [string, string][])
                    : []),
                  // Whom it trusts to sign client certificates (--tls-client-ca), as rotated.
                  ...(res.tls.clientCa
                    ? ([
                        ['tls client ca', res.tls.clientCa.file],
                        ...res.tls.clientCa.certificates.map(
                          (c) =>
                            [
                              'tls client ca cert',
                              `${c.subject}, sha256 ${c.sha256Fingerprint}, ` +
                                (c.notAfter && c.notAfter.getTime() < Date.now()
                                  ? `expired on ${c.notAfter.toISOString()}`
                                  : `until ${c.notAfter?.toISOString() ?? '-'}`),
                            ] as [string, string],
                        ),
                      ] as [string, string][])
                    : []),
                ] as [string, string][])
              : []),
            // Config-file mode: whether the file on disk is in force; if not, since when, why, and what runs.
            ...(cfg ? configRows(cfg, healthBy['xdpctl.config']) : []),
            // The daemon's own telemetry exporters (OTEL_*): whether what they export leaves the host.
            ...res.telemetryExports.map(telemetryExportRow),
          ]),
        );
      }),
    );

  // --- health (for probes: exit 0 only when SERVING)
  program
    .command('health')
    .description('gRPC health check; exits 0 when SERVING, 10 otherwise (for liveness/readiness probes)')
    .option(
      '--service <name>',
      'health service: "" (the daemon), xdpctl.datapath (its interfaces) or xdpctl.config (the --config file on disk is in force)',
      '',
    )
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
