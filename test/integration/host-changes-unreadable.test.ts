/**
 * An unreadable host-changes record (host-changes.json cut short) is not dropped in silence: the start logs
 * an error naming the file and that the changes it lists will not be undone by --cleanup-on-exit, and keeps
 * the file byte for byte (moved aside to host-changes.json.unreadable-<time>); the next change is recorded
 * in a fresh file, never written over the old one. Before: nothing logged, and the next change overwrote it.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh } from '../helpers/env.js';
import { backendOf, Lab, udpRule } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

describe('an unreadable host-changes record is said and kept', kernelOnly(), () => {
  const lab = new Lab();
  const stateDir = `/tmp/xdpctl-test-${lab.id}-state`;
  const file = `${stateDir}/host-changes.json`;
  let d: DaemonProcess | undefined;
  let vm: Host, b1: Host;

  before(() => {
    ({ vm, b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }, { routeVm: false }));
  });
  after(() => lab.destroy());

  it('logs an error naming the file and what will not be undone, keeps it, records the next change afresh', async () => {
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    // What a crash or a full disk in a copy may leave: cut in the middle of its first record.
    const cut = '{"gro":[{"ifname":"eth0","netns":"r29b4"';
    writeFileSync(file, cut, { mode: 0o600 });
    ({ d } = await lab.start(['--log-level', 'info', '--xdp-mode', 'native']));
    const records = d.logLines<{ msg: string; level: number; keptAs?: string }>();
    const said = records.filter((r) => r.msg.startsWith(`host-changes record ${file} is unreadable`));
    assert.equal(said.length, 1, `logged once: ${d.output}`);
    assert.equal(said[0].level, 50, 'as an error');
    assert.match(said[0].msg, /--cleanup-on-exit will not put them back/);
    const kept = readdirSync(stateDir).filter((f) => f.startsWith('host-changes.json.unreadable-'));
    assert.equal(kept.length, 1, 'moved aside');
    assert.equal(said[0].keptAs, `${stateDir}/${kept[0]}`, 'the log names the copy');
    assert.ok(said[0].msg.includes(`kept as ${stateDir}/${kept[0]}`));
    assert.equal(readFileSync(`${stateDir}/${kept[0]}`, 'utf8'), cut, 'kept byte for byte');

    // A change of the host (GRO switched on on the backend's veth peer) is recorded in a fresh file.
    await d.clients().rules.createRule({ rule: udpRule('web', 7984, [vm.hostIf], [backendOf(b1)]) });
    assert.match(sh('ip', ['netns', 'exec', b1.netns, 'ethtool', '-k', 'eth0']), /^generic-receive-offload: on/m);
    const record = JSON.parse(readFileSync(file, 'utf8')) as { gro: { netns: string }[] };
    assert.ok(
      record.gro.some((g) => g.netns === b1.netns),
      `the new change is recorded: ${JSON.stringify(record)}`,
    );
    assert.equal(readFileSync(`${stateDir}/${kept[0]}`, 'utf8'), cut, 'the copy is left as it was');
  });
});
