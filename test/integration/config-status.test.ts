/**
 * Config-file mode says, beyond a log line, whether the file on disk is in force (docs/architecture.md: report only
 * what was observed; a review's finding): while the file is refused, DaemonService.GetStatus, `xdpctl
 * status`, the `xdpctl.config` health service and the Prometheus metrics say that the file on disk is NOT
 * in force — which file, since when, why (the refusal's reason and field) — and what the datapath runs (the
 * last good file's SHA-256 and time); when a later good file is applied, all of them say so again. Before,
 * all of them stayed silent (health SERVING, status without a word) while only a log line said it.
 * Every kind of refusal: an interface that does not exist, a link into a bridge (no native redirects), a
 * missing `links:` section while links run, a YAML syntax error, a value validation refuses, an empty
 * file. Real traffic proves the last good configuration runs throughout.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus as Serving } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import type { ConfigFileStatus } from '../../src/gen/xdpctl/v1/daemon.js';
import { metric, xdpctl, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, shQuiet, sleep } from '../helpers/env.js';
import { Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const sha = (t: string) => createHash('sha256').update(t).digest('hex');

describe('config-file mode: status, health and metrics say whether the file on disk is in force', kernelOnly(), () => {
  const lab = new Lab();
  const { id, topo } = lab;
  const dir = `/tmp/xdpctl-test-${id}-cs`;
  const file = `${dir}/xdpctl.yaml`;
  const bridge = `xb${id}`;
  let d: DaemonProcess | undefined;
  let x: Host, y: Host, z: Host;

  before(() => {
    ({ x, y, z } = lab.addHosts({ x: '198.18.7.1/24', y: '198.18.7.2/24', z: '198.18.7.3/24' }));
    sh('ip', ['link', 'add', bridge, 'type', 'bridge']);
    sh('ip', ['link', 'set', bridge, 'up']);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  });
  lab.onDestroy(() => {
    shQuiet('ip', ['link', 'del', bridge]);
    rmSync(dir, { recursive: true, force: true });
  });
  after(() => lab.destroy());

  const status = async (): Promise<ConfigFileStatus> => {
    const s = await d!.clients().daemon.getStatus({});
    assert.ok(s.configFile, 'GetStatus carries config_file with --config');
    // The API takes no change in config-file mode: said, not "serving" alone.
    assert.equal(s.acceptsWrites, false);
    assert.match(s.writesRefused, /^the desired state is owned by the config file \//);
    return s.configFile;
  };
  const health = async (service: string) => (await d!.clients().health.check({ service })).status;
  async function until<T>(what: string, get: () => Promise<T>, ok: (v: T) => boolean, ms = 5000): Promise<T> {
    let v = await get();
    for (const end = Date.now() + ms; !ok(v) && Date.now() < end; v = await get()) await sleep(100);
    assert.ok(
      ok(v),
      `not within ${ms} ms: ${what}: ${JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? String(x) : x))}`,
    );
    return v;
  }

  it('says which file, since when and why it is refused, what runs instead, and when a good file is in force again', async () => {
    const good = `links:\n  ${x.hostIf}: ${y.hostIf}\n`;
    writeFileSync(file, good);
    ({ d } = await lab.start(['--config', file, '--log-level', 'info', '--prometheus', '127.0.0.1:0']));
    const prom = d.prometheus!;
    const path = { xdpctl_config_path: file };

    // In force: said everywhere, with the hash and time of the text applied.
    let s = await status();
    assert.equal(s.path, file);
    assert.equal(s.inForce, true);
    assert.equal(s.inForceCondition?.type, 'InForce');
    assert.equal(s.inForceCondition?.status, ConditionStatus.CONDITION_STATUS_TRUE);
    assert.equal(s.inForceCondition?.reason, 'Applied');
    assert.equal(s.appliedSha256, sha(good));
    assert.ok(s.appliedTime, 'applied_time set');
    assert.deepEqual(s.problems, []);
    assert.equal(await health('xdpctl.config'), Serving.SERVING);
    assert.equal(await metric(prom, 'xdpctl_config_in_force', path), 1);
    const appliedAt = await metric(prom, 'xdpctl_config_applied', { ...path, xdpctl_config_sha256: sha(good) });
    assert.equal(appliedAt, Math.floor(s.appliedTime.getTime() / 1000), 'the applied time, with the hash');
    assert.equal(await metric(prom, 'xdpctl_config_refused', path), undefined, 'no refusal series while in force');
    assert.equal(topo.ping('x', y.ip!), true, 'the good file forwards');

    // Every kind of refusal, one after the other: each says its own reason and field; "since" stays the
    // moment the file on disk stopped being in force; the last good file keeps running, and says so.
    const cases: { name: string; text: string; reason: string; field: RegExp }[] = [
      {
        name: 'a missing interface',
        text: `links:\n  ${x.hostIf}: nosuch${id}\n`,
        reason: 'InterfaceMissing',
        field: /^links\[0\]/,
      },
      {
        name: 'a link into a bridge',
        text: `links:\n  ${x.hostIf}: ${bridge}\n`,
        reason: 'PreconditionFailed',
        field: /^links\[0\]/,
      },
      { name: 'no links: section while a link runs', text: 'rules: []\n', reason: 'SectionMissing', field: /^links$/ },
      {
        name: 'a YAML syntax error',
        text: `links:\n  ${x.hostIf}: [${y.hostIf}\n`,
        reason: 'InvalidYaml',
        field: /^line \d+, column \d+$/,
      },
      {
        name: 'a value validation refuses',
        text: `links: {${x.hostIf}: ${y.hostIf}}\nrules:\n  - {name: web, port: 70000, ingress: [${z.hostIf}], backends: [{ip: 198.18.7.9, interface: ${y.hostIf}}]}\n`,
        reason: 'InvalidValue',
        field: /^rules\[0\]\.match\.port$/,
      },
      {
        name: 'an unknown key',
        text: `links: {${x.hostIf}: ${y.hostIf}}\nrule: []\n`,
        reason: 'InvalidFile',
        field: /^rule$/,
      },
      { name: 'an empty file', text: '# being edited\n', reason: 'Empty', field: /^$/ },
    ];
    const wroteFirst = Date.now();
    let since: Date | undefined;
    for (const c of cases) {
      writeFileSync(file, c.text);
      s = await until(c.name, status, (v) => !v.inForce && v.refusedSha256 === sha(c.text), 6000);
      assert.equal(s.inForceCondition?.status, ConditionStatus.CONDITION_STATUS_FALSE, c.name);
      assert.equal(s.inForceCondition?.reason, c.reason, `${c.name}: ${s.inForceCondition?.message}`);
      assert.ok(s.problems.length > 0, `${c.name}: the problems are listed`);
      assert.match(s.problems[0].field, c.field, `${c.name}: ${JSON.stringify(s.problems)}`);
      assert.ok(s.refusedTime && s.refusedTime.getTime() >= wroteFirst - 1000, `${c.name}: refused_time`);
      const t = s.inForceCondition!.lastTransitionTime!;
      assert.ok(t.getTime() >= wroteFirst - 1000, `${c.name}: not in force since after the first bad write`);
      since ??= t;
      assert.equal(t.getTime(), since.getTime(), `${c.name}: not in force since the first refusal, unbroken`);
      // What runs: the last good file, by hash and time.
      assert.equal(s.appliedSha256, sha(good), `${c.name}: the last good text`);
      assert.match(s.running, new RegExp(`sha256 ${sha(good).slice(0, 12)}.*0 rules, 1 link`), c.name);
      assert.equal(await health('xdpctl.config'), Serving.NOT_SERVING, `${c.name}: xdpctl.config NOT_SERVING`);
      assert.equal(await health(''), Serving.SERVING, `${c.name}: the daemon itself serves`);
      assert.equal(await health('xdpctl.datapath'), Serving.SERVING, `${c.name}: the datapath runs as desired`);
      assert.equal(await metric(prom, 'xdpctl_config_in_force', path), 0, c.name);
      assert.equal(
        await metric(prom, 'xdpctl_config_refused', {
          ...path,
          xdpctl_config_reason: c.reason,
          xdpctl_config_field: s.problems[0].field,
        }),
        Math.floor(since.getTime() / 1000),
        `${c.name}: the refusal series, since when, with the reason and field`,
      );
      const cli = await xdpctl(d.tcp, ['status']);
      assert.equal(cli.code, 0, cli.stderr);
      assert.match(cli.stdout, new RegExp(`config file:\\s+${file}`), c.name);
      assert.match(cli.stdout, new RegExp(`config in force:\\s+no \\(${c.reason}\\)`), c.name);
      assert.match(cli.stdout, /config health:\s+NOT_SERVING/, c.name);
      assert.match(cli.stdout, /not in force since:\s+\d{4}-/, c.name);
      assert.match(cli.stdout, /running:\s+the file as applied at/, c.name);
      assert.equal(topo.ping('x', y.ip!), true, `${c.name}: the last good configuration forwards`);
    }
    // The file removed (an unlink that no rename follows): unreadable, still not in force since the first refusal.
    rmSync(file);
    s = await until('the missing file is refused', status, (v) => v.inForceCondition?.reason === 'Unreadable');
    assert.equal(s.inForce, false);
    assert.match(s.problems[0].description, /ENOENT/);
    assert.equal(s.inForceCondition!.lastTransitionTime!.getTime(), since!.getTime(), 'since the first refusal');
    assert.equal(await health('xdpctl.config'), Serving.NOT_SERVING);
    assert.equal(topo.ping('x', y.ip!), true, 'unreadable: the last good configuration forwards');
    // The health service's probe form: exit 10 while refused.
    assert.equal((await xdpctl(d.tcp, ['health', '--service', 'xdpctl.config'])).code, 10);

    // A later good file: in force again, said everywhere, with its own hash.
    const good2 = `links:\n  ${x.hostIf}: ${z.hostIf}\n`;
    const wroteGood = Date.now();
    writeFileSync(file, good2);
    s = await until('the good file is in force', status, (v) => v.inForce);
    assert.equal(s.inForceCondition?.reason, 'Applied');
    assert.ok(s.inForceCondition!.lastTransitionTime!.getTime() >= wroteGood - 1000, 'in force since the write');
    assert.equal(s.appliedSha256, sha(good2));
    assert.deepEqual(s.problems, []);
    assert.equal(s.refusedSha256, '');
    assert.equal(await health('xdpctl.config'), Serving.SERVING);
    assert.equal(await metric(prom, 'xdpctl_config_in_force', path), 1);
    assert.equal(await metric(prom, 'xdpctl_config_refused', path), undefined, 'the refusal series is gone');
    assert.ok(await metric(prom, 'xdpctl_config_applied', { ...path, xdpctl_config_sha256: sha(good2) }));
    assert.equal(await metric(prom, 'xdpctl_config_applied', { ...path, xdpctl_config_sha256: sha(good) }), undefined);
    assert.equal((await xdpctl(d.tcp, ['health', '--service', 'xdpctl.config'])).code, 0);
    assert.equal(topo.ping('x', z.ip!), true, 'the new file forwards');
  });

  it('a start whose file is refused says the stored configuration runs, not the file', async () => {
    await d!.stop();
    const bad = `links:\n  ${x.hostIf}: nosuch${id}\n`;
    writeFileSync(file, bad);
    ({ d } = await lab.start(['--config', file, '--log-level', 'info']));
    const s = await status();
    assert.equal(s.inForce, false);
    assert.equal(s.inForceCondition?.reason, 'InterfaceMissing');
    assert.equal(s.refusedSha256, sha(bad));
    assert.equal(s.appliedSha256, '', 'this daemon applied no file');
    assert.match(s.running, /restored from the state store at start, 0 rules, 1 link/);
    assert.equal(await health('xdpctl.config'), Serving.NOT_SERVING);
    assert.equal(topo.ping('x', z.ip!), true, 'the stored configuration forwards');
  });
});
