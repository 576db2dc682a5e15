/**
 * A change refused because its COMMIT did not complete in time (a frozen file system: `fsfreeze -f` on a small
 * ext4 on a loop device: helpers/frozen-disk.ts) whose commit lands on the disk after the daemon stopped: every line about it stays
 * true.
 *  - a SIGTERM meanwhile stops all but the store's worker thread, held in that commit (the kernel does not
 *    interrupt it): the daemon says so and says "stopped" only once the thaw let the thread, and it, end (was:
 *    "stopped" at once, and the process lived on until the thaw);
 *  - the reply does not promise what a stop breaks: it says that if the daemon stops before the disk answers,
 *    the next start applies whatever the store then holds;
 *  - the next start finds the store's generation ahead of the pins' (the generation the kernel reflects) and
 *    says so, naming both; the rule the kernel holds and the store lacks is removed (the store holds the
 *    delete), and the line says the store is ahead of the pins, naming both generations, instead of "a change
 *    the daemon wrote into the kernel and stopped before committing" (was: that line, false: the store is
 *    ahead of the kernel, not behind).
 * The file system is always thawed and unmounted, even on failure.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';

import { type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, until } from '../helpers/env.js';
import { stateOnFrozenDisk } from '../helpers/frozen-disk.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const PORT = 7461;

describe(
  'a commit refused as pending that lands after the daemon stopped: the next start says so',
  kernelOnly(),
  () => {
    const lab = new Lab();
    const { id } = lab;
    const { disk, onDisk } = stateOnFrozenDisk(id);
    let d: DaemonProcess | undefined;
    let c: Clients;
    let b1: Host;
    const lines = (out: string, re: RegExp) =>
      out
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { msg: string })
        .filter((l) => re.test(l.msg));

    before(async () => {
      ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
      disk.mount();
      ({ d, c } = await lab.start(['--log-level', 'info']));
      await c.rules.createRule({ rule: lab.apiRule('e1', PORT, [backendOf(b1)]) });
    });
    // Before the lab stops the daemon: thawed, unmounted.
    after(() => disk.remove());
    after(() => lab.destroy());

    it('delete refused while frozen, SIGTERM, thaw, start: the reply and the restore lines are true', async () => {
      assert.deepEqual(onDisk(), ['e1']);
      assert.equal((await lab.send(PORT, [b1], 20, 20)).total, 20);
      const first = d!;
      let stopping: Promise<number | null> | undefined;
      disk.freeze();
      try {
        const refused = await c.rules.deleteRule({ name: 'e1' }, { signal: AbortSignal.timeout(15_000) }).then(
          () => undefined,
          (e: Error & { code?: Status }) => e,
        );
        assert.ok(refused, 'the delete is refused');
        assert.equal(refused.code, Status.UNAVAILABLE, refused.message);
        // Refused at its COMMIT: the commit is pending on the disk (the case this test is about).
        assert.match(refused.message, /UNAVAILABLE: commit: /, refused.message);
        assert.match(refused.message, /the change is not applied/);
        assert.match(
          refused.message,
          /if the daemon stops before, the next start applies whatever the store then holds/,
          refused.message,
        );
        // Not applied: the kernel forwards e1 on.
        assert.equal((await lab.send(PORT, [b1], 20, 20)).total, 20, 'e1 still forwards');
        first.closeClients();
        stopping = first.stop();
        // All but the store's worker thread stops; that thread is held in the delete's commit, which the kernel
        // does not interrupt: the process cannot exit and says so, not "stopped" (was: "stopped", and the process
        // lived on until the thaw).
        const heldLine = /^stop: all done but one thing: the state store's worker thread is held in its commit of /;
        await until(
          () => first.output,
          () => lines(first.output, heldLine).length === 1,
          10_000,
        );
        assert.equal(lines(first.output, /^stopped$/).length, 0, `"stopped" while it cannot exit\n${first.output}`);
        assert.equal(first.child.exitCode, null, 'still running: held by the frozen disk');
      } finally {
        disk.thaw();
      }
      await stopping;
      // The disk completed the commit: the thread ended, the process said "stopped" and exited.
      assert.equal(lines(first.output, /^stopped$/).length, 1, first.output);
      // The pending commit landed: the store no longer holds e1.
      assert.deepEqual(onDisk(), []);
      ({ d, c } = await lab.start(['--log-level', 'info']));
      const ahead = lines(d.output, /is at generation \d+, ahead of the pinned datapath/);
      assert.equal(ahead.length, 1, d.output);
      const [, store, pins] = /at generation (\d+), ahead .* last written from generation (\d+)/.exec(ahead[0].msg)!;
      assert.equal(Number(store), Number(pins) + 1, ahead[0].msg);
      const removed = lines(d.output, /^restore removed a rule the state store does not know/);
      assert.equal(removed.length, 1, d.output);
      assert.doesNotMatch(removed[0].msg, /stopped before committing/, removed[0].msg);
      assert.match(
        removed[0].msg,
        new RegExp(`The store is at generation ${store}, ahead of the generation ${pins} the pins record`),
      );
      assert.match(removed[0].msg, /the client was told the change was not applied/);
      // The store is applied: e1 is removed from the kernel (what the store holds), and the store still lacks it.
      assert.equal((await lab.send(PORT, [b1], 20, 20)).total, 0, 'e1 removed');
      assert.deepEqual(
        (await c.rules.listRules({ pageSize: 0, pageToken: '' })).rules.map((r) => r.name),
        [],
      );
    });
  },
);
