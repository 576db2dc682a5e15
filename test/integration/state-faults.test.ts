/**
 * The kernel and the disk never disagree about an acknowledged change, with
 * the disk failing for real under a running daemon and traffic flowing:
 * the state directory is a tiny tmpfs that fills up (ENOSPC), is remounted
 * read-only, or (through a test-only preload, test/helpers/sqlite-eio.mjs)
 * fails COMMIT with an I/O error. Each time the client gets a status naming
 * the state path, the kernel maps are byte for byte unchanged, traffic keeps
 * flowing, and a restart shows exactly what the client was told. A start on
 * a full or read-only disk serves reads and the adopted datapath; a missing
 * store while the pins still hold rules is refused unless --reset-datapath.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';

import { type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { emptyDisk, fillDisk, kernelOnly, ROOT, sh, shQuiet, sleep } from '../helpers/env.js';
import { backendOf, Lab, NOWHERE } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';
const PORT = 7999;

describe('state store faults: kernel and disk agree (real faults, traffic flowing)', kernelOnly(), () => {
  const lab = new Lab();
  const { id, topo, listeners } = lab;
  const stateDir = `/tmp/xdpctl-test-${id}-state`;
  const trigger = `/tmp/xdpctl-test-${id}-eio`;
  const env = { NODE_OPTIONS: `--import=${ROOT}test/helpers/sqlite-eio.mjs`, XDPCTL_TEST_SQLITE_EIO: trigger };
  let d: DaemonProcess | undefined;
  let c: Clients;
  let vm: Host, b1: Host;

  const start = async (extra: string[] = []) => {
    ({ d, c } = await lab.start(extra, env));
  };
  const rule = (name: string, port: number, labels: Record<string, string> = {}) =>
    lab.apiRule(name, port, [backendOf(b1)], labels);
  /** Fill the tmpfs until it answers ENOSPC. */
  const fill = () => fillDisk(stateDir);
  const unfill = () => emptyDisk(stateDir);
  /** Run `fn` with UDP flowing to the rule "web"; every datagram must arrive. */
  const underTraffic = async (fn: () => Promise<void>) => {
    const l = await UdpListener.start(b1.netns, b1.ip!, PORT);
    listeners.push(l);
    const sender = sendUdp(vm.netns, NOWHERE, PORT, 20_000, { perTick: 10, tickMs: 4 });
    let ok = false;
    try {
      await sleep(200);
      await fn();
      await sleep(200);
      ok = true;
    } finally {
      sender.stop();
      if (!ok) l.kill();
    }
    const { sent } = await sender.done;
    await sleep(150);
    const got = await l.stop();
    assert.ok(sent >= 100, `traffic flowed (${sent})`);
    assert.equal(got.unique, sent, 'every datagram forwarded across the fault');
  };
  const rejects = async (p: Promise<unknown>, code: Status, message: RegExp) => {
    await assert.rejects(p, (e: Error & { code?: Status }) => {
      assert.equal(
        e.code,
        code,
        `${Status[code]} expected, got ${e.code === undefined ? e : Status[e.code]}: ${e.message}`,
      );
      assert.match(e.message, message);
      assert.ok(e.message.includes(`${stateDir}/state.db`), `the message names the state path: ${e.message}`);
      return true;
    });
  };
  const names = async () => (await c.rules.listRules({ pageSize: 0, pageToken: '' })).rules.map((r) => r.name);

  before(async () => {
    ({ vm, b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    mkdirSync(stateDir, { recursive: true });
    sh('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'tmpfs', stateDir]);
    await start();
    await c.rules.createRule({ rule: rule('web', PORT) });
  });
  // Unmounted before the lab removes the daemon and its state dir; lazily: the daemon may still hold the database open.
  after(() => shQuiet('umount', ['-l', stateDir]));
  lab.onDestroy(() => rmSync(trigger, { force: true }));
  after(() => lab.destroy());

  it('full disk (ENOSPC) during CreateRule and DeleteRule: RESOURCE_EXHAUSTED naming the path, kernel unchanged, restart agrees', async () => {
    const maps = d!.dumpMaps();
    fill();
    try {
      // The forwarding of a rule the change does not touch never notices it.
      await underTraffic(async () => {
        await rejects(c.rules.createRule({ rule: rule('web2', PORT + 1) }), Status.RESOURCE_EXHAUSTED, /disk is full/);
      });
      // Deleting the rule itself: undone when COMMIT fails (docs/state-store.md).
      await rejects(
        c.rules.deleteRule({ name: 'web', expectedGeneration: 0n }),
        Status.RESOURCE_EXHAUSTED,
        /disk is full/,
      );
    } finally {
      unfill();
    }
    assert.deepEqual(d!.dumpMaps(), maps, 'kernel maps unchanged');
    assert.deepEqual(await names(), ['web']);
    await d!.stop('SIGTERM');
    await start();
    assert.deepEqual(await names(), ['web'], 'the restart shows what the client was told');
    const keys = (m: Record<string, unknown>) => (m.rule_match as { key: unknown }[]).map((e) => e.key);
    assert.deepEqual(keys(d!.dumpMaps()), keys(maps), 'and so does the kernel (the rule moved to a fresh slot)');
    await underTraffic(async () => {});
  });

  it('full disk while a change switches GRO on for a new backend: the store error, not a precondition; no half-written record', async () => {
    const b2 = topo.addHost('b2', '198.18.3.1/24');
    const maps = d!.dumpMaps();
    fill();
    try {
      const r = rule('web3', PORT + 2);
      // b2's veth peer has GRO off (a new veth's default): a native redirect into it needs it on, and the
      // daemon records that change in host-changes.json, which cannot be written now.
      r.backends = [{ ip: b2.ip!, mac: b2.mac, interface: b2.hostIf, weight: 1 }];
      await rejects(c.rules.createRule({ rule: r }), Status.RESOURCE_EXHAUSTED, /disk is full/);
    } finally {
      unfill();
    }
    assert.equal(existsSync(`${stateDir}/host-changes.json.tmp`), false, 'no half-written record left');
    assert.match(d!.output, /GRO switched on not recorded in \S+host-changes\.json/);
    // The change failed: the GRO it switched on is off again, as the daemon found it.
    assert.match(topo.exec('b2', 'ethtool', ['-k', 'eth0']), /^generic-receive-offload: off/m, 'GRO put back');
    assert.deepEqual(d!.dumpMaps(), maps, 'kernel maps unchanged');
    assert.deepEqual(await names(), ['web']);
  });

  it('I/O error (EIO) at COMMIT of UpdateRule: UNAVAILABLE naming the path, kernel unchanged, restart agrees', async () => {
    const maps = d!.dumpMaps();
    const before = (await c.rules.getRule({ name: 'web' })).rule!;
    await underTraffic(async () => {
      writeFileSync(trigger, '');
      try {
        await rejects(
          c.rules.updateRule({ rule: { ...rule('web', PORT, { moved: 'yes' }), generation: before.generation } }),
          Status.UNAVAILABLE,
          /I\/O error \(EIO\)/,
        );
      } finally {
        rmSync(trigger);
      }
    });
    assert.deepEqual(d!.dumpMaps(), maps, 'kernel maps unchanged');
    await d!.stop('SIGTERM');
    await start();
    const now = (await c.rules.getRule({ name: 'web' })).rule!;
    assert.equal(now.generation, before.generation);
    assert.deepEqual(now.labels, {});
  });

  it('start on a full disk: serves reads and the adopted datapath, says it cannot persist, refuses changes until space is freed', async () => {
    await d!.stop('SIGTERM');
    fill();
    try {
      await underTraffic(async () => {
        await start();
        assert.match(d!.output, /the state store cannot persist/);
        assert.deepEqual(await names(), ['web']);
        await rejects(c.rules.createRule({ rule: rule('web2', PORT + 1) }), Status.RESOURCE_EXHAUSTED, /full/);
      });
    } finally {
      unfill();
    }
    await c.rules.createRule({ rule: rule('web2', PORT + 1) });
    await c.rules.deleteRule({ name: 'web2', expectedGeneration: 0n });
    assert.deepEqual(await names(), ['web']);
  });

  it('start on a read-only remount: serves reads and the datapath; DeleteRule is FAILED_PRECONDITION naming the path; restart agrees', async () => {
    await d!.stop('SIGTERM');
    sh('mount', ['-o', 'remount,ro', stateDir]);
    try {
      await underTraffic(async () => {
        await start();
        assert.match(d!.output, /the state store cannot persist/);
        const maps = d!.dumpMaps();
        await rejects(
          c.rules.deleteRule({ name: 'web', expectedGeneration: 0n }),
          Status.FAILED_PRECONDITION,
          /read-only/,
        );
        assert.deepEqual(d!.dumpMaps(), maps, 'kernel maps unchanged');
      });
      await d!.stop('SIGTERM');
    } finally {
      sh('mount', ['-o', 'remount,rw', stateDir]);
    }
    await start();
    assert.deepEqual(await names(), ['web'], 'the rule the client was told is still there');
  });

  it('a missing store while the pins hold rules is refused loudly; --reset-datapath clears the maps and detaches', async () => {
    await d!.stop('SIGTERM');
    for (const f of readdirSync(stateDir)) renameSync(`${stateDir}/${f}`, `${stateDir}/${f}.aside`);
    await assert.rejects(
      start(),
      /state store .*state\.db does not exist, but the pinned datapath .* --reset-datapath/,
    );
    assert.match(
      sh('ip', ['-j', 'link', 'show', vm.hostIf]),
      /"xdp"/,
      'the program is still attached: nothing was wiped',
    );
    await start(['--reset-datapath']);
    assert.deepEqual(await names(), []);
    assert.deepEqual(d!.dumpMaps().rule_match, []);
    await sleep(100);
    assert.doesNotMatch(sh('ip', ['-j', 'link', 'show', vm.hostIf]), /"xdp"/, 'and detached');
    assert.ok(existsSync(`${stateDir}/state.db`));
  });
});
