/**
 * Config-file mode (xdpctld --config) and the TLS listeners' certificate (--tls-cert: TLS_METRICS) as metrics: whether the file on disk is in force, and while it is
 * not, since when and why (daemon.proto ConfigFileStatus; the `xdpctl.config` health service says the
 * same). Without --config nothing is reported.
 *  - `xdpctl.config.in_force`: 1 while the text on disk is applied, 0 while it is refused (the datapath then
 *    runs the last good configuration), with `xdpctl.config.path`;
 *  - `xdpctl.config.refused`: while refused, since when the file on disk is not in force (seconds since the
 *    epoch), with the path, `xdpctl.config.reason` (InvalidYaml, InvalidValue, InterfaceMissing, ...) and
 *    `xdpctl.config.field` (the first refused field's path in the file); no point while in force;
 *  - `xdpctl.config.applied`: when this daemon last applied the file (seconds since the epoch), with the path
 *    and `xdpctl.config.sha256` of the text applied (the last good configuration); no point before it applied
 *    one.
 * A MetricProducer (gauge-producer.ts): a refusal's reason and field are exported only while it holds; the
 * TLS certificate's gauges are collected with them (ConfigMetricProducer.attachTls).
 */
import type { MetricData } from '@opentelemetry/sdk-metrics';

import type { ConfigReport } from '../config-watcher.js';
import type { TlsCertificateStatus } from '../tls.js';
import { GaugeProducer, registerGauges, type GaugeNow } from './gauge-producer.js';

export const CONFIG_METRICS = {
  inForce: 'xdpctl.config.in_force',
  refused: 'xdpctl.config.refused',
  applied: 'xdpctl.config.applied',
} as const;

/**
 * The TCP listeners' own certificate (--tls-cert), with `xdpctl.tls.certificate.path`: its notAfter (seconds
 * since the epoch) and whether clients can accept it now (1; 0 once expired or before its notBefore, when
 * every new TLS client refuses the handshake). No point without --tls-cert.
 */
export const TLS_METRICS = {
  notAfter: 'xdpctl.tls.certificate.not_after',
  valid: 'xdpctl.tls.certificate.valid',
} as const;
export const TLS_ATTRS = { path: 'xdpctl.tls.certificate.path' } as const;

export const CONFIG_ATTRS = {
  path: 'xdpctl.config.path',
  reason: 'xdpctl.config.reason',
  field: 'xdpctl.config.field',
  sha256: 'xdpctl.config.sha256',
} as const;

const DESCRIPTIONS = {
  inForce: {
    description:
      'Whether the config file on disk (xdpctld --config) is in force: 1 applied, 0 refused (the datapath runs the last good configuration)',
    unit: '',
  },
  refused: {
    description:
      'While the config file on disk is refused: since when it is not in force (seconds since the epoch), with the reason and the first refused field',
    unit: 's',
  },
  applied: {
    description:
      'When this daemon last applied the config file (seconds since the epoch), with the SHA-256 of the text applied: the last good configuration',
    unit: 's',
  },
};

const TLS_DESCRIPTIONS = {
  notAfter: {
    description:
      'When the certificate the TLS listeners serve (--tls-cert) expires: its notAfter (seconds since the epoch)',
    unit: 's',
  },
  valid: {
    description:
      'Whether the certificate the TLS listeners serve is within its validity period now: 1 yes, 0 no (every new TLS client refuses it until the files are rotated)',
    unit: '',
  },
};

/** The TLS listeners' certificate (--tls-cert) as gauges (TLS_METRICS); no point without one. */
class TlsMetricProducer extends GaugeProducer<TlsCertificateStatus> {
  protected gauges(t: TlsCertificateStatus): GaugeNow[] {
    const attributes = { [TLS_ATTRS.path]: t.certFile };
    return [
      {
        name: TLS_METRICS.notAfter,
        ...TLS_DESCRIPTIONS.notAfter,
        points: [{ attributes, value: Math.floor(t.notAfter / 1000) }],
      },
      { name: TLS_METRICS.valid, ...TLS_DESCRIPTIONS.valid, points: [{ attributes, value: t.problem ? 0 : 1 }] },
    ];
  }
}

/**
 * The config watcher's report as gauges, for the daemon's metric readers (telemetry/sdk.ts, prometheus.ts),
 * with the TLS listeners' certificate's (attachTls).
 */
export class ConfigMetricProducer extends GaugeProducer<ConfigReport> {
  private readonly tls = new TlsMetricProducer();

  /** The TLS listeners' certificate (--tls-cert), read at each collection; returns the detach function. */
  attachTls(source: () => TlsCertificateStatus | undefined): () => void {
    const read = () => {
      try {
        return source();
      } catch {
        return undefined; // a certificate in use that does not parse here: no point rather than a made-up one
      }
    };
    return registerGauges(this.tls, read);
  }

  override build(): MetricData[] {
    return [...super.build(), ...this.tls.build()];
  }

  protected gauges(r: ConfigReport): GaugeNow[] {
    const A = CONFIG_ATTRS;
    const point = (attributes: Record<string, string>, value: number) => ({ attributes, value });
    const points = {
      inForce: [point({ [A.path]: r.path }, r.inForce ? 1 : 0)],
      refused: r.inForce
        ? []
        : [
            point(
              { [A.path]: r.path, [A.reason]: r.reason, [A.field]: r.problems[0]?.field ?? '' },
              Math.floor(r.since / 1000),
            ),
          ],
      applied:
        r.appliedAt !== undefined && r.appliedSha256
          ? [point({ [A.path]: r.path, [A.sha256]: r.appliedSha256 }, Math.floor(r.appliedAt / 1000))]
          : [],
    };
    return (Object.keys(points) as (keyof typeof points)[]).map((k) => ({
      name: CONFIG_METRICS[k],
      ...DESCRIPTIONS[k],
      points: points[k],
    }));
  }
}

/** The process's producer (one per process, like datapathMetrics); the daemon attaches its watcher's report. */
export const configMetrics = new ConfigMetricProducer();

/** Report `source` through {@link configMetrics}; returns a function that stops it (daemon stop). */
export function registerConfigMetrics(
  source: () => ConfigReport | undefined,
  scope: { name: string; version?: string } = { name: 'xdpctld' },
  producer: ConfigMetricProducer = configMetrics,
): () => void {
  return registerGauges(producer, source, scope);
}
