/**
 * Config-file mode applies a file whole or not at all, and follows files that change without an event
 * naming them (docs/architecture.md, promise 7, a review's findings):
 *  - a file whose links the kernel refuses (an egress that cannot transmit native redirects: a bridge) must
 *    not leave its rules applied: before, the rule section went in, the links failed, the log said "the last
 *    good configuration keeps running" while the rule was gone (0 of 20), and writing the good file back did
 *    nothing (its text was taken as in force);
 *  - a Kubernetes ConfigMap volume (`cfg.yaml -> ..data/cfg.yaml`, `..data -> ..2026_a`, updated by renaming
 *    a new `..data` over the old) and an in-place edit of the file a symlink points to were never seen.
 * Real traffic: UDP through the rule, pings through the link.
 */
import assert from 'node:assert/strict';
import { mkdirSync, rmSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, shQuiet, sleep } from '../helpers/env.js';
import { Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const PORT = 7411;

describe('config-file mode: whole or nothing, and files behind symlinks', kernelOnly(), () => {
  const lab = new Lab();
  const { id, topo } = lab;
  const dir = `/tmp/xdpctl-test-${id}-cfg`;
  const bridge = `xb${id}`;
  let d: DaemonProcess | undefined;
  let vm: Host, b1: Host, x: Host, y: Host;

  before(() => {
    ({ vm, b1, x, y } = lab.addHosts({
      vm: '198.18.1.1/24',
      b1: '198.18.2.1/24',
      x: '198.18.7.1/24',
      y: '198.18.7.2/24',
    }));
    sh('ip', ['link', 'add', bridge, 'type', 'bridge']);
    sh('ip', ['link', 'set', bridge, 'up']);
    mkdirSync(dir, { recursive: true });
  });
  lab.onDestroy(() => {
    shQuiet('ip', ['link', 'del', bridge]);
    rmSync(dir, { recursive: true, force: true });
  });
  after(() => lab.destroy());

  const ruleYaml = () =>
    `rules:\n  - name: web\n    port: ${PORT}\n    ingress: [${vm.hostIf}]\n` +
    `    backends:\n      - {ip: ${b1.ip}, mac: "${b1.mac}", interface: ${b1.hostIf}}\n`;
  const good = () => `links:\n  ${x.hostIf}: ${y.hostIf}\n${ruleYaml()}`;
  const ruleCount = async () => (await d!.clients().rules.listRules({})).rules.length;
  const links = async () => (await d!.clients().links.listLinks({})).links.map((l) => `${l.a}-${l.b}`).sort();
  const lines = (msg: string) => d!.output.split('\n').filter((l) => l.includes(`"msg":"${msg}`));
  async function delivered(n: number): Promise<number> {
    return (await lab.send(PORT, [b1], n, 1, { settle: 200 })).got[0];
  }
  async function until(what: string, ok: () => Promise<boolean>, ms = 5000) {
    for (const end = Date.now() + ms; Date.now() < end; await sleep(100)) if (await ok()) return;
    assert.fail(`not within ${ms} ms: ${what}`);
  }

  it('a file whose links the kernel refuses changes nothing, and the good file written back is applied', async () => {
    const file = `${dir}/whole.yaml`;
    writeFileSync(file, good());
    ({ d } = await lab.start(['--config', file, '--log-level', 'info']));
    assert.equal(await ruleCount(), 1);
    assert.deepEqual(await links(), [`${x.hostIf}-${y.hostIf}`]);
    assert.equal(await delivered(20), 20, 'the rule forwards');
    assert.equal(topo.ping('x', y.ip!), true, 'the link forwards');
    const appliedBefore = lines('config applied').length;
    const generation = (await d.clients().rules.getRule({ name: 'web' })).rule!.generation;

    // No rules, and a link into a bridge: valid as a file, refused by the kernel phase (native redirects).
    writeFileSync(file, `links:\n  ${x.hostIf}: ${bridge}\nrules: []\n`);
    await until('the refusal is logged', async () => lines('config ').some((l) => l.includes('not applied')));
    const [refused] = lines('config ').filter((l) => l.includes('not applied'));
    assert.match(refused, /cannot transmit native XDP redirects/, refused);
    assert.match(refused, /the last good configuration keeps running/);
    assert.equal(await ruleCount(), 1, 'the rule the file removed is back (or was never removed)');
    assert.equal(await delivered(20), 20, 'and forwards: the last good configuration runs whole');
    assert.deepEqual(await links(), [`${x.hostIf}-${y.hostIf}`], 'the link is as it was');
    assert.equal(topo.ping('x', y.ip!), true);
    // One transaction for the whole file: the rule was never removed, so nothing was put back.
    assert.equal((await d.clients().rules.getRule({ name: 'web' })).rule!.generation, generation, 'rule unchanged');
    assert.equal(lines('config applied').length, appliedBefore, 'nothing said to be applied');

    // The good file written back (the same text as the one in force): applied, and said so.
    writeFileSync(file, good());
    await until('the good file is applied again', async () => lines('config applied').length > appliedBefore);
    assert.equal(await ruleCount(), 1);
    assert.equal(await delivered(20), 20);
    assert.equal(topo.ping('x', y.ip!), true);
    assert.equal(lines('config ').filter((l) => l.includes('not applied')).length, 1, 'the refusal said once');
    await d.stop();
    d = undefined;
  });

  it('follows a ConfigMap volume (a ..data symlink swapped by rename) and in-place edits of a symlink target', async () => {
    const cm = `${dir}/cm`;
    mkdirSync(`${cm}/..2026_a`, { recursive: true });
    writeFileSync(`${cm}/..2026_a/cfg.yaml`, `links:\n  ${x.hostIf}: ${y.hostIf}\n`);
    symlinkSync('..2026_a', `${cm}/..data`);
    symlinkSync('..data/cfg.yaml', `${cm}/cfg.yaml`);
    ({ d } = await lab.start(['--config', `${cm}/cfg.yaml`, '--log-level', 'info']));
    assert.deepEqual(await links(), [`${x.hostIf}-${y.hostIf}`]);
    assert.equal(topo.ping('x', y.ip!), true);

    // The kubelet's atomic update: a new timestamped directory, a new ..data link renamed over the old one.
    mkdirSync(`${cm}/..2026_b`);
    writeFileSync(`${cm}/..2026_b/cfg.yaml`, `links: {}\n${ruleYaml()}`);
    symlinkSync('..2026_b', `${cm}/..data_tmp`);
    renameSync(`${cm}/..data_tmp`, `${cm}/..data`);
    rmSync(`${cm}/..2026_a`, { recursive: true });
    await until('the new ConfigMap version is applied', async () => (await links()).length === 0);
    await until('with its rule', async () => (await ruleCount()) === 1);
    assert.equal(topo.ping('x', y.ip!, 1), false, 'the link is gone');
    assert.equal(await delivered(20), 20, 'the rule forwards');

    // An in-place edit of the file the symlinks resolve to (another directory than the configured path's).
    writeFileSync(`${cm}/..2026_b/cfg.yaml`, `links:\n  ${x.hostIf}: ${y.hostIf}\nrules: []\n`);
    await until('the in-place edit is applied', async () => (await links()).length === 1);
    await until('and its rules', async () => (await ruleCount()) === 0);
    assert.equal(topo.ping('x', y.ip!), true, 'the link is back');
    assert.equal(await delivered(20), 0, 'and the rule is gone');
    await d.stop();
    d = undefined;
  });

  it('a first start with a file it cannot apply and nothing stored is not "as desired"', async () => {
    // A first start: no pins, no state, and no program the earlier daemons left attached (a program of
    // another datapath is foreign to a new one, and left alone).
    for (const h of [vm, x, y]) shQuiet('ip', ['link', 'set', 'dev', h.hostIf, 'xdp', 'off']);
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    const file = `${dir}/first.yaml`;
    writeFileSync(file, `links:\n  ${x.hostIf}: nx${id}q\n`); // an interface that does not exist
    ({ d } = await lab.start(['--config', file, '--log-level', 'info']));
    const health = async () => (await d!.clients().health.check({ service: 'xdpctl.datapath' })).status;
    await until(
      'datapath health NOT_SERVING',
      async () => (await health()) === HealthCheckResponse_ServingStatus.NOT_SERVING,
    );
    assert.equal((await d.clients().health.check({ service: '' })).status, HealthCheckResponse_ServingStatus.SERVING);
    const [line] = lines('config ').filter((l) => l.includes('not applied'));
    assert.match(line, /no configuration runs/, line);
    assert.doesNotMatch(line, /last good configuration keeps running/);
    writeFileSync(file, `links:\n  ${x.hostIf}: ${y.hostIf}\n`);
    await until('the good file is applied', async () => (await links()).length === 1);
    await until('datapath health SERVING', async () => (await health()) === HealthCheckResponse_ServingStatus.SERVING);
    await d.stop();
    d = undefined;
  });
});
