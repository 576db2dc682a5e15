/** DaemonService: version, readiness, a datapath summary and, with --config, whether the file is in force. */
import type { ServiceImplementation } from 'nice-grpc';

import { roleSatisfies } from '../auth/policy.js';
import type { ConfigReport } from '../config-watcher.js';
import { monotonicMs } from '../core/clock.js';
import type { Controller } from '../core/controller.js';
import type { Dataplane } from '../core/dataplane.js';
import type { WriteProblem } from '../log-sink.js';
import type { ExportReport } from '../telemetry/export-health.js';
import type { TlsCertificateStatus } from '../tls.js';
import { callerOf } from './caller.js';
import { ConditionStatus } from '../../gen/xdpctl/v1/common.js';
import {
  TelemetryExportState,
  type ConfigFileStatus,
  type DaemonServiceDefinition,
  type TelemetryExportStatus,
} from '../../gen/xdpctl/v1/daemon.js';

/** A config watcher's report as the API's ConfigFileStatus (daemon.proto). */
export function configFileStatus(r: ConfigReport): ConfigFileStatus {
  return {
    path: r.path,
    inForce: r.inForce,
    inForceCondition: {
      type: 'InForce',
      status: r.inForce ? ConditionStatus.CONDITION_STATUS_TRUE : ConditionStatus.CONDITION_STATUS_FALSE,
      reason: r.reason,
      message: r.inForce ? `the file on disk is applied: ${r.running}` : `${r.message}; the datapath runs ${r.running}`,
      lastTransitionTime: new Date(r.since),
    },
    problems: r.problems.map((p) => ({ field: p.field, description: p.description })),
    refusedSha256: r.inForce ? '' : (r.refusedSha256 ?? ''),
    refusedTime: r.inForce || r.refusedAt === undefined ? undefined : new Date(r.refusedAt),
    appliedSha256: r.appliedSha256 ?? '',
    appliedTime: r.appliedAt === undefined ? undefined : new Date(r.appliedAt),
    running: r.running,
  };
}

/** Problems GetStatus lists one by one (10 000 rules not ACTIVE would make a reply of megabytes); the rest are counted. */
export const LISTED_PROBLEMS = 100;

export function daemonService(
  ctl: Controller,
  dp: Dataplane,
  info: {
    version: string;
    /** When the daemon started, by the monotonic clock (core/clock.ts): uptime is measured from it. */
    startedAt: number;
    serving: () => boolean;
    /** Config-file mode's report; undefined without --config. */
    configFile?: () => ConfigReport | undefined;
    /** The TLS listeners' certificate; undefined without --tls-cert. */
    tls?: () => TlsCertificateStatus;
    /** The telemetry exporters, as their exports last ended (telemetry/export-health.ts). */
    telemetryExports?: () => ExportReport[];
    /** The log's refused writes (log-sink.ts), while they are refused. */
    logWriteProblem?: () => WriteProblem | undefined;
  },
): ServiceImplementation<typeof DaemonServiceDefinition> {
  return {
    async getStatus(_req, context) {
      const up = Math.floor(monotonicMs() - info.startedAt);
      const state = ctl.desiredState();
      const config = info.configFile?.();
      const serving = info.serving();
      // For this caller: what the daemon refuses for everyone, and a role that allows no change (read-only).
      const caller = callerOf(context);
      const refusals = [
        serving ? ctl.writesRefused() : 'the daemon is not serving (starting or stopping)',
        caller && !roleSatisfies(caller.role, 'admin')
          ? `${caller.who} has ${caller.role ? `the ${caller.role} role` : 'no role'}: changes need the admin role`
          : undefined,
      ].filter((x): x is string => x !== undefined);
      const refused = refusals.length ? refusals.join('; ') : undefined;
      return {
        version: info.version,
        serving,
        acceptsWrites: refused === undefined,
        writesRefused: refused ?? '',
        datapath: {
          programId: dp.progId,
          pinPath: dp.pinRoot,
          ruleCount: state.rules.length,
          linkCount: state.links.length,
          interfaceCount: ctl.listInterfaces().length,
          // What the datapath cannot observe, then every problem that keeps xdpctl.datapath NOT_SERVING, from
          // the one judgement that health and the xdpctl.datapath.problems gauge say too (Controller.problemReport):
          // the reconciler's overdue pass, missing interfaces, foreign programs, links not forwarding, the repairs
          // another tool keeps undoing (core/fights.ts), the forwarding loops the host made (core/rule-loops.ts),
          // each rule not ACTIVE with why; past LISTED_PROBLEMS, how many more. Before those, the rule backends
          // and links whose way back cannot be told (Controller.loopsUntold): not observed, not a problem.
          warnings: [...dp.warnings, ...ctl.loopsUntold(LISTED_PROBLEMS), ...ctl.problemReport(LISTED_PROBLEMS).listed],
        },
        uptime: { seconds: BigInt(Math.floor(up / 1000)), nanos: (up % 1000) * 1e6 },
        configFile: config && configFileStatus(config),
        stateStore: stateStoreStatus(ctl.stateStore()),
        tls: info.tls && tlsStatus(info.tls()),
        telemetryExports: (info.telemetryExports?.() ?? []).map(telemetryExportStatus),
        logWriteProblem: logWriteProblem(info.logWriteProblem?.()),
      };
    },
  };
}

/** daemon.proto LogWriteProblem from the log sink's (undefined while lines are written). */
function logWriteProblem(p: WriteProblem | undefined) {
  if (!p) return undefined;
  return { sink: 'stdout', code: p.code, cause: p.cause, since: new Date(p.since), linesDropped: BigInt(p.lines) };
}

/** daemon.proto StateStoreStatus from the controller's view of its store (undefined: --no-state). */
function stateStoreStatus(
  s: { path: string; problem?: string; since?: number; unknown?: string; lastAnswer?: number } | undefined,
) {
  if (!s) return undefined;
  // Writable only on a recent answer of the disk: a refusal says why not; no recent answer cannot be told.
  const cannotTell = s.problem === undefined && s.unknown !== undefined;
  return {
    path: s.path,
    writable: s.problem === undefined && !cannotTell,
    problem: s.problem ?? s.unknown ?? '',
    refusingSince: s.since === undefined ? undefined : new Date(s.since),
    lastWriteAnswered: s.lastAnswer === undefined ? undefined : new Date(s.lastAnswer),
    cannotTell,
  };
}

/** daemon.proto TlsStatus from the certificate in use. */
function tlsStatus(t: TlsCertificateStatus) {
  return {
    certificateFile: t.certFile,
    notBefore: new Date(t.notBefore),
    notAfter: new Date(t.notAfter),
    valid: t.problem === undefined,
    problem: t.problem ?? '',
    clientCertificateRequired: t.mutual,
    files: t.filesState,
    clientCa: t.clientCa && {
      file: t.clientCa.file,
      certificates: t.clientCa.certificates.map((c) => ({
        subject: c.subject,
        sha256Fingerprint: c.sha256,
        notBefore: new Date(c.notBefore),
        notAfter: new Date(c.notAfter),
      })),
    },
  };
}

/** daemon.proto TelemetryExportStatus from an exporter's report. */
export function telemetryExportStatus(r: ExportReport): TelemetryExportStatus {
  return {
    signal: r.signal,
    exporter: r.exporter,
    state:
      r.ok === undefined
        ? TelemetryExportState.TELEMETRY_EXPORT_STATE_PENDING
        : r.ok
          ? TelemetryExportState.TELEMETRY_EXPORT_STATE_OK
          : TelemetryExportState.TELEMETRY_EXPORT_STATE_FAILING,
    lastExportTime: r.lastExportAt === undefined ? undefined : new Date(r.lastExportAt),
    failingSince: r.failingSince === undefined ? undefined : new Date(r.failingSince),
    error: r.error ?? '',
    failedExports: BigInt(r.failedExports),
    failingExports: BigInt(r.failingExports),
  };
}
