/**
 * A state disk that stops completing writes (a frozen file system: `fsfreeze -f` on a small ext4 on a loop
 * device; a hung NFS or iSCSI volume behaves alike) never holds the daemon's event loop (core/store.ts: every
 * write of the running daemon runs on the store's worker thread, each bounded by STORE_WRITE_TIMEOUT_MS):
 *  - while it is frozen, health, reads and GetStatus are answered at once; a change is refused UNAVAILABLE
 *    within the bound, naming the path and saying the disk is not answering, and is not applied (the kernel
 *    does not forward it, no read shows it); GetStatus says why changes are refused; a second change is
 *    refused at once (was: the COMMIT's fsync held the event loop: nothing was answered until the thaw);
 *  - once thawed, the store takes writes again (said once), the commit that completed late is written over
 *    with the desired state (the store holds what the kernel holds), and a change works and is on disk.
 * The file system is always thawed and unmounted, even on failure (a frozen one left behind hangs tools).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';

import { type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sleep, until } from '../helpers/env.js';
import { soon, stateOnFrozenDisk, timed } from '../helpers/frozen-disk.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const PORT = 7451;
const PORT2 = 7452;

describe('a state disk that stops completing writes (fsfreeze) never holds the event loop', kernelOnly(), () => {
  const lab = new Lab();
  const { id } = lab;
  const { db, disk, onDisk } = stateOnFrozenDisk(id);
  let d: DaemonProcess | undefined;
  let c: Clients;
  let b1: Host;
  let lateCommit = false;
  const rule = (name: string, port: number) => lab.apiRule(name, port, [backendOf(b1)]);
  const logged = (re: RegExp) => d!.output.split('\n').filter((l) => l.startsWith('{') && re.test(l)).length;

  before(async () => {
    ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    disk.mount();
    ({ d, c } = await lab.start(['--log-level', 'info']));
    await c.rules.createRule({ rule: rule('web', PORT) });
  });
  // Before the lab stops the daemon (its exit waits for a write pending on a frozen disk): thawed, unmounted.
  after(() => disk.remove());
  after(() => lab.destroy());

  it('frozen: health, reads and status answered at once, a change refused within the bound; thawed: writes again', async () => {
    assert.deepEqual(onDisk(), ['web']);
    disk.freeze();
    try {
      const health = await timed(c.health.check({ service: '' }, soon()));
      assert.ok(health.ms < 1000 && !health.error, `health answered in ${health.ms} ms`);
      // The change: its commit does not complete; refused within the bound (5 s), not applied.
      const change = timed(c.rules.createRule({ rule: rule('web2', PORT2) }, soon(15_000)));
      // Meanwhile (its BEGIN or COMMIT pending on the worker thread): health and reads answered at once.
      let settled = false;
      void change.then(() => (settled = true));
      let asked = 0;
      while (!settled) {
        const h = await timed(c.health.check({ service: '' }, soon()));
        assert.ok(h.ms < 1000 && !h.error, `health answered in ${h.ms} ms while the change waits for the disk`);
        const g = await timed(c.rules.getRule({ name: 'web' }, soon()));
        assert.ok(g.ms < 1000 && g.value?.rule?.name === 'web', `GetRule answered in ${g.ms} ms`);
        asked++;
        await sleep(200);
      }
      assert.ok(asked >= 3, `asked ${asked} times while the change waited`);
      const refused = await change;
      assert.ok(refused.error, 'the change is refused');
      assert.equal(refused.error.code, Status.UNAVAILABLE, refused.error.message);
      assert.match(
        refused.error.message,
        new RegExp(`state store ${db}: the disk did not complete a write in 5 s \\(not answering\\)`),
      );
      assert.match(refused.error.message, /the change is not (applied|made)/);
      assert.ok(refused.ms < 8000, `refused within the bound: ${refused.ms} ms`);
      lateCommit = refused.error.message.startsWith('commit:');
      // Not applied: no read shows it, the kernel does not forward it.
      const names = (await c.rules.listRules({ pageSize: 0, pageToken: '' })).rules.map((r) => r.name);
      assert.deepEqual(names, ['web']);
      assert.equal((await lab.send(PORT2, [b1], 20, 20)).total, 0, 'the refused rule is not in the kernel');
      assert.equal((await lab.send(PORT, [b1], 20, 20)).total, 20, 'the datapath forwards on');
      // GetStatus says why changes are refused; another change is refused at once.
      const st = await timed(c.daemon.getStatus({}, soon()));
      assert.ok(st.ms < 1000, `GetStatus answered in ${st.ms} ms`);
      assert.equal(st.value!.acceptsWrites, false);
      assert.match(
        st.value!.writesRefused,
        /^the state store refuses writes: the disk has not completed a write .*not answering/,
      );
      assert.match(st.value!.stateStore!.problem, /not answering/);
      const again = await timed(c.rules.createRule({ rule: rule('web3', 7453) }, soon()));
      assert.equal(again.error?.code, Status.UNAVAILABLE, again.error?.message);
      assert.match(again.error!.message, /not answering/);
      assert.ok(again.ms < 1000, `refused at once: ${again.ms} ms`);
    } finally {
      disk.thaw();
    }
    await until(
      async () => JSON.stringify(await c.daemon.getStatus({})),
      async () => (await c.daemon.getStatus({})).acceptsWrites,
      10_000,
    );
    // The late commit (web2) written over with the desired state: the store holds what the kernel holds.
    await until(
      () => JSON.stringify(onDisk()),
      () => JSON.stringify(onDisk()) === '["web"]',
      10_000,
    );
    await c.rules.createRule({ rule: rule('web2', PORT2) });
    assert.deepEqual(onDisk(), ['web', 'web2']);
    assert.equal((await lab.send(PORT2, [b1], 20, 20)).total, 20);
    assert.equal(logged(/state store .* takes writes again/), 1, d!.output);
    // Refused at its COMMIT (the BEGIN answered): the disk completed that commit once thawed, and it was said.
    if (lateCommit) assert.equal(logged(/the disk answered and completed the commit of 1 change/), 1, d!.output);
  });
});
