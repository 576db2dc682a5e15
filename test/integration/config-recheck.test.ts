/**
 * Config-file mode: a file refused for what the host is keeps no reason that no longer holds (docs/architecture.md,
 * "observe, don't assume"; a review found: a file refused for a link loop through a veth pair kept
 * "PreconditionFailed ... loop" after the pair was deleted). Real daemon, real veth pair, real pings: the
 * file `links: {A: B}` with A and B the two ends of one veth pair is refused (PreconditionFailed, the loop
 * named) while the last good file keeps forwarding; the pair deleted, the refusal is re-evaluated within
 * seconds and says InterfaceMissing (status, metric, log once), the last good file still forwarding.
 */
import assert from 'node:assert/strict';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus as Serving } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import type { ConfigFileStatus } from '../../src/gen/xdpctl/v1/daemon.js';
import { metric, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, shQuiet, until } from '../helpers/env.js';
import { Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

describe('config-file mode: a refusal for what the host is, re-evaluated as the host changes', kernelOnly(), () => {
  const lab = new Lab();
  const { id, topo } = lab;
  const dir = `/tmp/xdpctl-test-${id}-cr`;
  const file = `${dir}/xdpctl.yaml`;
  const na = `xn${id}a`;
  const nb = `xn${id}b`;
  let d: DaemonProcess | undefined;
  let x: Host, y: Host;

  before(() => {
    ({ x, y } = lab.addHosts({ x: '198.18.8.1/24', y: '198.18.8.2/24' }));
    sh('ip', ['link', 'add', na, 'type', 'veth', 'peer', 'name', nb]);
    sh('ip', ['link', 'set', na, 'up']);
    sh('ip', ['link', 'set', nb, 'up']);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  });
  lab.onDestroy(() => {
    shQuiet('ip', ['link', 'del', na]);
    rmSync(dir, { recursive: true, force: true });
  });
  after(() => lab.destroy());

  const status = async (): Promise<ConfigFileStatus> => (await d!.clients().daemon.getStatus({})).configFile!;
  const count = (re: RegExp) => d!.output.split('\n').filter((l) => re.test(l)).length;

  it('a link loop through a veth pair, then the pair deleted: PreconditionFailed, then InterfaceMissing', async () => {
    writeFileSync(file, `links:\n  ${x.hostIf}: ${y.hostIf}\n`);
    ({ d } = await lab.start(['--config', file, '--log-level', 'info', '--prometheus', '127.0.0.1:0']));
    assert.equal((await status()).inForce, true);
    assert.equal(topo.ping('x', y.ip!), true, 'the good file forwards');

    writeFileSync(file, `links:\n  ${na}: ${nb}\n`);
    await until('refused for the loop', async () => !(await status()).inForce, 6000);
    let s = await status();
    assert.equal(s.inForceCondition?.reason, 'PreconditionFailed', s.inForceCondition?.message);
    assert.match(s.problems[0].description, /these links would forward frames in a loop forever/);
    assert.equal(count(/"msg":"config [^"]* not applied: .*loop forever/), 1, 'logged once');

    sh('ip', ['link', 'del', na]); // the pair: both ends
    await until(
      async () => `InterfaceMissing: ${JSON.stringify((await status()).inForceCondition)}`,
      async () => (await status()).inForceCondition?.reason === 'InterfaceMissing',
      5000,
    );
    s = await status();
    assert.equal(s.inForce, false);
    assert.equal(s.inForceCondition?.status, ConditionStatus.CONDITION_STATUS_FALSE);
    assert.match(s.problems[0].field, /^links\[0\]/);
    assert.match(s.problems[0].description, new RegExp(`${na}.*does not exist|does not exist.*${na}`));
    assert.doesNotMatch(JSON.stringify(s.problems), /loop/);
    assert.equal(
      (await metric(d.prometheus!, 'xdpctl_config_refused', {
        xdpctl_config_path: file,
        xdpctl_config_reason: 'InterfaceMissing',
        xdpctl_config_field: s.problems[0].field,
      })) !== undefined,
      true,
      'the refusal series says InterfaceMissing',
    );
    assert.equal(count(/"msg":"config [^"]* not applied: .*does not exist/), 1, 'the new reason logged once');
    assert.equal((await d.clients().health.check({ service: 'xdpctl.config' })).status, Serving.NOT_SERVING);
    assert.equal(topo.ping('x', y.ip!), true, 'the last good file still forwards');
  });
});
