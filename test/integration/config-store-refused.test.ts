/**
 * Config-file mode: a file the state store refused (its disk full) says so and is applied once the store
 * takes writes again (tenth review, finding 4: the reason was "TableFull" though no datapath table was full,
 * and the file was never applied after the disk had room, only at a SIGHUP; status said "state store
 * writable: yes" and "refused: the disk is full" together). Real daemon on a 2 MB tmpfs state directory,
 * real cross-connects, real pings: `links: {x: y}` in force; the disk filled and the file changed to
 * `links: {x: z}`: refused with reason StateStoreRefused naming the disk, x still reaches y; the disk emptied:
 * the file is applied within seconds, x reaches z, logged as re-evaluated because the store takes writes.
 */
import assert from 'node:assert/strict';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import type { ConfigFileStatus } from '../../src/gen/xdpctl/v1/daemon.js';
import { VERIFY_MS } from '../../src/server/config-watcher.js';
import { metric, type DaemonProcess } from '../helpers/daemon.js';
import { emptyDisk, fillDisk, kernelOnly, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

describe('config-file mode: a file the state store refused', kernelOnly(), () => {
  const lab = new Lab();
  const { id, topo } = lab;
  const dir = `/tmp/xdpctl-test-${id}-cs`;
  const file = `${dir}/xdpctl.yaml`;
  const stateDir = `/tmp/xdpctl-test-${id}-state`;
  let d: DaemonProcess | undefined;
  let x: Host, y: Host, z: Host;

  before(() => {
    ({ x, y, z } = lab.addHosts({ x: '198.18.8.1/24', y: '198.18.8.2/24', z: '198.18.8.3/24' }));
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    sh('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'tmpfs', stateDir]);
  });
  // Before the lab removes the daemon and its state dir: the tmpfs unmounted (lazily: the daemon may hold it).
  after(() => {
    shQuiet('umount', ['-l', stateDir]);
    rmSync(dir, { recursive: true, force: true });
  });
  after(() => lab.destroy());

  const status = async (): Promise<ConfigFileStatus> => (await d!.clients().daemon.getStatus({})).configFile!;
  const count = (re: RegExp) => d!.output.split('\n').filter((l) => re.test(l)).length;

  it('refused as StateStoreRefused while the disk is full, applied once it has room again', async () => {
    writeFileSync(file, `links:\n  ${x.hostIf}: ${y.hostIf}\n`);
    ({ d } = await lab.start(['--config', file, '--log-level', 'info', '--prometheus', '127.0.0.1:0']));
    assert.equal((await status()).inForce, true);
    assert.equal(topo.ping('x', y.ip!), true, 'the good file forwards');

    fillDisk(stateDir);
    try {
      writeFileSync(`${file}.new`, `links:\n  ${x.hostIf}: ${z.hostIf}\n`);
      sh('mv', [`${file}.new`, file]);
      await until('refused', async () => !(await status()).inForce, 10_000);
      const s = await status();
      assert.equal(s.inForceCondition?.reason, 'StateStoreRefused', s.inForceCondition?.message);
      assert.match(s.inForceCondition!.message, /state store .*: the disk is full \(ENOSPC\)/);
      assert.ok(
        (await metric(d.prometheus!, 'xdpctl_config_refused', {
          xdpctl_config_path: file,
          xdpctl_config_reason: 'StateStoreRefused',
          xdpctl_config_field: '',
        })) !== undefined,
        'the refusal series says StateStoreRefused',
      );
      assert.equal(topo.ping('x', y.ip!), true, 'the last good file forwards on');
      assert.equal(topo.ping('x', z.ip!), false, 'the refused file is not in the kernel');
      // The watcher's periodic look (every VERIFY_MS) reads a file whose identity changed since its last look:
      // once it has (refused again, not logged again), only the store's recovery can apply the file.
      await sleep(VERIFY_MS + 1000);
      assert.equal((await status()).inForceCondition?.reason, 'StateStoreRefused');
    } finally {
      emptyDisk(stateDir);
    }
    // No SIGHUP, no new file: the store taking writes again is what the refusal waited for.
    await until(
      async () => JSON.stringify(await status()),
      async () => (await status()).inForce,
      10_000,
    );
    assert.equal((await status()).inForceCondition?.reason, 'Applied');
    assert.equal(topo.ping('x', z.ip!), true, 'the file is in force');
    assert.equal(count(/re-evaluated: the state store takes writes again/), 1, d.output.slice(-3000));
  });
});
