/**
 * A state disk that stops completing writes (fsfreeze on a small ext4 on a loop device: helpers/frozen-disk.ts),
 * before any change hits it; a real daemon with --cleanup-on-exit whose rules switched GRO on on two backends'
 * veth peers (recorded in host-changes.json):
 *  1. the freeze is seen without a change: GetStatus (and `xdpctl status`) stop saying the store is writable within
 *     a few seconds (the disk probe: a write and fsync by the probe process each pass, 5 s bound) and say it is not
 *     answering since when (ETIMEDOUT); it never says writable without a recent answer of the disk (3 s); health
 *     and GetStatus answer within 1 s throughout; a change is then refused at once. Was: "writable: yes" until a
 *     change hit the disk. Thawed: writable again;
 *  2. a SIGTERM on the frozen disk (right after the freeze: the worst case, not yet seen by the probe) exits
 *     within the stop's 2 s bound on the state directory's writes (+ 1 s for the rest on a loaded machine), saying
 *     the record could not be written. Was: 7.9 s (the cleanup's record write waited 5 s, then the stop's 2 s);
 *  3. after that stop a stale record (still listing both GRO changes, undone by that cleanup) and its `.tmp` are
 *     left; an operator switches GRO on on b2's peer for itself; the next daemon says the record may not be current,
 *     removes the `.tmp`, and its --cleanup-on-exit leaves b2's GRO on (left as found) while it undoes what it did
 *     itself (b1's GRO, switched on again by it). Was: it switched the operator's GRO off.
 * The file system is always thawed and unmounted, even on failure (a frozen one left behind hangs tools).
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';

import { type Clients, type DaemonProcess, xdpctl } from '../helpers/daemon.js';
import { kernelOnly, sleep, until } from '../helpers/env.js';
import { FrozenDisk, twoPassesSince, soon, timed } from '../helpers/frozen-disk.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const PORT = 7471;
const PORT2 = 7472;

describe('a frozen state disk: seen before a change, a bounded stop, no stale record acted on', kernelOnly(), () => {
  const lab = new Lab();
  const { id, topo } = lab;
  const stateDir = `/tmp/xdpctl-test-${id}-state`;
  const record = `${stateDir}/host-changes.json`;
  const disk = new FrozenDisk(stateDir, `/tmp/xdpctl-test-${id}-state.img`);
  const args = ['--log-level', 'info', '--prometheus', '127.0.0.1:0', '--cleanup-on-exit'];
  let d: DaemonProcess | undefined;
  let c: Clients;
  let b1: Host;
  let b2: Host;
  const gro = (h: Host) => /^generic-receive-offload: (\w+)/m.exec(topo.exec(h.role, 'ethtool', ['-k', 'eth0']))?.[1];
  const recorded = () => (JSON.parse(readFileSync(record, 'utf8')) as { gro: { netns?: string }[] }).gro;

  before(async () => {
    ({ b1, b2 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', b2: '198.18.3.1/24' }));
    disk.mount();
    ({ d, c } = await lab.start(args));
    await c.rules.createRule({ rule: lab.apiRule('web', PORT, [backendOf(b1)]) });
    await c.rules.createRule({ rule: lab.apiRule('web2', PORT2, [backendOf(b2)]) });
    assert.equal(gro(b1), 'on');
    assert.equal(gro(b2), 'on');
    await until(
      () => readFileSync(record, 'utf8'),
      () => recorded().length === 2,
      10_000,
    );
    await twoPassesSince(d);
  });
  // Before the lab stops the daemon: thawed, unmounted.
  after(() => disk.remove());
  after(() => lab.destroy());

  it('1: frozen, no change made: GetStatus says not answering within seconds, never writable without a recent answer', async (t) => {
    const st0 = (await c.daemon.getStatus({})).stateStore!;
    assert.equal(st0.writable, true, JSON.stringify(st0));
    const t0 = Date.now();
    disk.freeze();
    let said: number | undefined;
    let cannotTell = 0;
    try {
      while (Date.now() - t0 < 15_000) {
        const h = await timed(c.health.check({ service: '' }, soon()));
        assert.ok(h.ms < 1000 && !h.error, `health answered in ${h.ms} ms while frozen`);
        const asked = Date.now();
        const s = await timed(c.daemon.getStatus({}, soon()));
        assert.ok(s.ms < 1000 && !s.error, `GetStatus answered in ${s.ms} ms while frozen`);
        const store = s.value!.stateStore!;
        if (store.writable) {
          // Only on a recent answer of the disk (3 s), never on none.
          assert.ok(store.lastWriteAnswered, `writable without an observation: ${JSON.stringify(store)}`);
          assert.ok(
            asked - store.lastWriteAnswered.getTime() <= 3000 + s.ms,
            `writable on an answer ${asked - store.lastWriteAnswered.getTime()} ms old: ${JSON.stringify(store)}`,
          );
        } else if (store.cannotTell) {
          cannotTell++;
          assert.match(store.problem, /^cannot be told: the disk last answered a write at /);
        } else {
          assert.match(
            store.problem,
            /^the disk has not completed a write sent to it at \S+ \(not answering for more than 5 s: ETIMEDOUT, /,
          );
          said = Date.now();
          assert.equal(s.value!.acceptsWrites, false);
          assert.match(s.value!.writesRefused, /^the state store refuses writes: .*not answering/);
          const since = store.refusingSince!.getTime();
          assert.ok(
            since >= t0 - 1500 && since <= t0 + 2500,
            `not answering since ${store.refusingSince!.toISOString()}`,
          );
          break;
        }
        await sleep(250);
      }
      assert.ok(said, 'GetStatus said the frozen store is not answering within 15 s (no change made)');
      t.diagnostic(`said not answering ${said - t0} ms after the freeze (cannot be told ${cannotTell} time(s) before)`);
      const cli = await xdpctl(d!.tcp, ['status']);
      assert.match(
        cli.stdout,
        /state store writable: +no: the disk has not completed a write .*ETIMEDOUT.*changes are refused/,
      );
      // A change now is refused at once, not after 5 s on the disk.
      const change = await timed(c.rules.createRule({ rule: lab.apiRule('web3', 7473, [backendOf(b1)]) }, soon()));
      assert.equal(change.error?.code, Status.UNAVAILABLE, change.error?.message);
      assert.match(change.error!.message, /not answering/);
      assert.ok(change.ms < 1000, `refused in ${change.ms} ms`);
    } finally {
      disk.thaw();
    }
    await until(
      async () => JSON.stringify((await c.daemon.getStatus({})).stateStore),
      async () => {
        const s = await c.daemon.getStatus({});
        return s.stateStore!.writable && s.acceptsWrites;
      },
      15_000,
    );
    await twoPassesSince(d!);
  });

  it('2: SIGTERM on the frozen disk exits within the bound, saying what it did not write', async (t) => {
    // Thawed by test 3 (it looks at what the stop left), or by the cleanup.
    disk.freeze();
    const t0 = Date.now();
    const code = await Promise.race([d!.stop('SIGTERM'), sleep(15_000).then(() => 'still running')]);
    const ms = Date.now() - t0;
    assert.notEqual(code, 'still running', `SIGTERM while frozen: no exit in 15 s\n${d!.output}`);
    assert.equal(code, 0, d!.output);
    t.diagnostic(`exited ${ms} ms after SIGTERM`);
    assert.ok(ms < 3000, `exited in ${ms} ms (bound 2 s on the state directory's writes)`);
    assert.match(d!.output, /stop: host-changes record .*not answering/);
    for (const l of d!.logLines<{ msg: string }>()) if (/stop|not recorded|cleanup/.test(l.msg)) t.diagnostic(l.msg);
    // The cleanup itself was done (the host is not the disk): GRO off again on both peers.
    assert.equal(gro(b1), 'off');
    assert.equal(gro(b2), 'off');
  });

  it("3: the next daemon does not act on the stale record: the operator's GRO left on", async (t) => {
    disk.thaw();
    // The write the stop could not complete: its child dies once the disk answers, leaving its .tmp.
    await until(`${record}.tmp`, () => existsSync(`${record}.tmp`), 5000);
    t.diagnostic(
      `left: ${record}.tmp of ${statSync(`${record}.tmp`).size} bytes, record ${readFileSync(record, 'utf8')}`,
    );
    assert.equal(recorded().length, 2, 'the record still lists the GRO changes that stop undid (stale)');
    // The operator switches GRO on on b2's peer for itself.
    topo.exec(b2.role, 'ethtool', ['-K', 'eth0', 'gro', 'on']);
    assert.equal(gro(b2), 'on');
    d = (await lab.start(args)).d;
    c = lab.c;
    assert.match(d.output, /host-changes record \S+ may not be current: \S+\.tmp \(\d+ bytes, .*\) removed/);
    assert.equal(existsSync(`${record}.tmp`), false, 'the .tmp removed');
    // It forwards both rules again: b1's GRO switched on again by this daemon (its own change), b2's found on.
    await until(
      () => `${gro(b1)} ${gro(b2)}`,
      () => gro(b1) === 'on',
      10_000,
    );
    assert.equal((await lab.send(PORT2, [b2], 20, 20)).total, 20);
    assert.equal(await d.stop('SIGTERM'), 0, d.output);
    assert.equal(gro(b2), 'on', `the operator's GRO on b2's peer left as found\n${d.output}`);
    assert.equal(gro(b1), 'off', 'what this daemon switched on itself is undone');
    assert.match(d.output, /GRO left as found \(the host-changes record listing it may not be current/);
    for (const l of d.logLines<{ msg: string }>()) {
      if (/may not be current|cleanup/.test(l.msg)) t.diagnostic(`${l.msg} ${JSON.stringify(l)}`);
    }
  });
});
