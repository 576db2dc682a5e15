import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { ConfigReport } from '../../src/server/config-watcher.js';
import { ConfigMetricProducer } from '../../src/server/telemetry/config-metrics.js';

type Point = { attributes: Record<string, string>; value: number };

describe('config-file metrics (a producer: exactly what the watcher says at collection)', () => {
  const base: ConfigReport = {
    path: '/etc/xdpctl/xdpctl.yaml',
    inForce: true,
    reason: 'Applied',
    message: '',
    problems: [],
    since: 1_700_000_000_500,
    appliedSha256: 'ab'.repeat(32),
    appliedAt: 1_700_000_000_500,
    running: 'the file as applied at …',
  };
  const collect = (r: ConfigReport | undefined) => {
    const p = new ConfigMetricProducer();
    p.attach(() => r, { name: 'xdpctld' });
    return Object.fromEntries(
      p.build().map((m) => {
        const x = m as unknown as { descriptor: { name: string }; dataPoints: Point[] };
        return [x.descriptor.name, x.dataPoints];
      }),
    );
  };

  it('reports nothing without --config', () => {
    assert.deepEqual(collect(undefined), {});
  });

  it('in force: in_force 1, the applied time with the hash, no refusal point', () => {
    const m = collect(base);
    assert.deepEqual(
      m['xdpctl.config.in_force'].map((p) => [p.attributes, p.value]),
      [[{ 'xdpctl.config.path': base.path }, 1]],
    );
    assert.deepEqual(m['xdpctl.config.refused'], []);
    assert.deepEqual(
      m['xdpctl.config.applied'].map((p) => [p.attributes['xdpctl.config.sha256'], p.value]),
      [[base.appliedSha256, 1_700_000_000]],
    );
  });

  it('refused: in_force 0 and one refusal point with the reason, the first field and since when', () => {
    const m = collect({
      ...base,
      inForce: false,
      reason: 'InvalidValue',
      problems: [
        { field: 'rules[0].match.port', description: 'must be between 1 and 65535' },
        { field: 'rules[1].name', description: 'is required' },
      ],
      since: 1_700_000_100_900,
    });
    assert.equal(m['xdpctl.config.in_force'][0].value, 0);
    assert.deepEqual(
      m['xdpctl.config.refused'].map((p) => [p.attributes, p.value]),
      [
        [
          {
            'xdpctl.config.path': base.path,
            'xdpctl.config.reason': 'InvalidValue',
            'xdpctl.config.field': 'rules[0].match.port',
          },
          1_700_000_100,
        ],
      ],
    );
    assert.equal(m['xdpctl.config.applied'].length, 1, 'the last good configuration is still reported');
  });
});
