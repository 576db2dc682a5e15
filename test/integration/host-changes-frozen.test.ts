/**
 * A state disk that stops completing writes (fsfreeze on a small ext4 on a loop device, as store-frozen.test.ts)
 * while a change switches GRO on on a backend's veth peer: the host-changes record of that change
 * (host-changes.json, in the state directory) is written off the event loop and bounded as the store's writes
 * are (dataplane/record-writer.ts):
 *  - while it is frozen, health, ListRules, GetStatus and /metrics are answered at once; the change is refused
 *    UNAVAILABLE within the bound naming the record and saying the disk is not answering; it is not applied
 *    (no read shows it, the kernel does not forward it) and the GRO it switched on is off again, as it was;
 *    GetStatus's warnings say the record's disk is not answering (was: writeFileSync on the event loop: nothing
 *    answered until the thaw, then the change applied ~50 s after its call, its caller gone);
 *  - once thawed, the same change works, GRO is on and recorded;
 *  - a SIGTERM while frozen again is handled at once and the daemon exits within a few seconds, saying it could
 *    not write the record (was: not handled until the thaw).
 * The file system is always thawed and unmounted, even on failure (a frozen one left behind hangs tools).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';

import { type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sleep, until } from '../helpers/env.js';
import { FrozenDisk, twoPassesSince, soon, timed } from '../helpers/frozen-disk.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const PORT = 7461;
const PORT2 = 7462;

describe(
  'a frozen state disk while a change switches GRO on: the host-changes record never holds the event loop',
  kernelOnly(),
  () => {
    const lab = new Lab();
    const { id, topo } = lab;
    const stateDir = `/tmp/xdpctl-test-${id}-state`;
    const record = `${stateDir}/host-changes.json`;
    const disk = new FrozenDisk(stateDir, `/tmp/xdpctl-test-${id}-state.img`);
    let d: DaemonProcess | undefined;
    let c: Clients;
    let b1: Host;
    let b2: Host;
    const freeze = () => disk.freeze();
    const thaw = () => disk.thaw();
    const gro = (h: Host) => /^generic-receive-offload: (\w+)/m.exec(topo.exec(h.role, 'ethtool', ['-k', 'eth0']))?.[1];
    const names = async () =>
      (await c.rules.listRules({ pageSize: 0, pageToken: '' }, soon())).rules.map((r) => r.name);

    before(async () => {
      ({ b1, b2 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', b2: '198.18.3.1/24' }));
      disk.mount();
      ({ d, c } = await lab.start(['--log-level', 'info', '--prometheus', '127.0.0.1:0']));
      await c.rules.createRule({ rule: lab.apiRule('web', PORT, [backendOf(b1)]) });
      // Two reconciler passes end after that commit (the store's read mark taken before the freeze).
      await twoPassesSince(d);
    });
    // Before the lab stops the daemon: thawed, unmounted.
    after(() => disk.remove());
    after(() => lab.destroy());

    it('frozen: reads answered at once, the change refused within the bound and undone (GRO off again); thawed: it works; SIGTERM while frozen: exits', async () => {
      // b2's veth peer has GRO off (a new veth's default): a native redirect into it needs it on, recorded.
      assert.equal(gro(b2), 'off');
      const web2 = lab.apiRule('web2', PORT2, [backendOf(b2)]);
      freeze();
      try {
        const change = timed(c.rules.createRule({ rule: web2 }, soon(20_000)));
        let settled = false;
        void change.then(() => (settled = true));
        let asked = 0;
        while (!settled) {
          const h = await timed(c.health.check({ service: '' }, soon()));
          assert.ok(h.ms < 1000 && !h.error, `health answered in ${h.ms} ms while the change waits for the disk`);
          const l = await timed(names());
          assert.ok(l.ms < 1000 && l.value?.includes('web'), `ListRules answered in ${l.ms} ms`);
          const s = await timed(c.daemon.getStatus({}, soon()));
          assert.ok(s.ms < 1000 && !s.error, `GetStatus answered in ${s.ms} ms`);
          const m = await timed(fetch(`http://${d!.prometheus}/metrics`, soon()).then((r) => r.text()));
          assert.ok(m.ms < 1000 && !m.error, `/metrics answered in ${m.ms} ms`);
          asked++;
          await sleep(200);
        }
        assert.ok(asked >= 3, `asked ${asked} times while the change waited`);
        const refused = await change;
        assert.ok(refused.error, 'the change is refused');
        assert.equal(refused.error.code, Status.UNAVAILABLE, refused.error.message);
        assert.ok(refused.error.message.includes(stateDir), `names the state path: ${refused.error.message}`);
        assert.match(refused.error.message, /the disk did not complete a write in 5 s \(not answering\)/);
        assert.ok(refused.ms < 8000, `refused within the bound: ${refused.ms} ms`);
        // Not applied: no read shows it, the kernel does not forward it, and GRO is as it was.
        assert.deepEqual(await names(), ['web']);
        assert.equal((await lab.send(PORT2, [b2], 20, 20)).total, 0, 'the refused rule is not in the kernel');
        assert.equal((await lab.send(PORT, [b1], 20, 20)).total, 20, 'the datapath forwards on');
        assert.equal(gro(b2), 'off', 'GRO on the backend peer left as it was');
        if (refused.error.message.includes(record)) {
          const st = await c.daemon.getStatus({}, soon());
          assert.ok(
            st.datapath!.warnings.some((w) => w.includes(`host-changes record ${record}`) && /not answering/.test(w)),
            JSON.stringify(st.datapath!.warnings),
          );
        }
      } finally {
        thaw();
      }
      // Thawed: the change works, GRO on and recorded (once the record's late write is followed by this one).
      await until(
        async () => JSON.stringify(await c.daemon.getStatus({})),
        async () => (await c.daemon.getStatus({})).acceptsWrites,
        15_000,
      );
      await c.rules.createRule({ rule: web2 });
      assert.deepEqual(await names(), ['web', 'web2']);
      assert.equal((await lab.send(PORT2, [b2], 20, 20)).total, 20);
      assert.equal(gro(b2), 'on');
      await until(
        () => readFileSync(record, 'utf8'),
        () => (JSON.parse(readFileSync(record, 'utf8')) as { gro: unknown[] }).gro.length === 2,
        10_000,
      );

      // SIGTERM while frozen: handled at once, the daemon exits within a few seconds (the record not written).
      freeze();
      try {
        const t0 = Date.now();
        const exited = d!.stop('SIGTERM');
        const code = await Promise.race([exited, sleep(15_000).then(() => 'still running')]);
        const ms = Date.now() - t0;
        assert.notEqual(code, 'still running', `SIGTERM while frozen: no exit in 15 s\n${d!.output}`);
        assert.ok(ms < 8000, `exited in ${ms} ms`);
        assert.match(d!.output, /stop: host-changes record .*\(not answering\)/);
      } finally {
        thaw();
      }
    });
  },
);
