/**
 * Loading, adopting, migrating pins of another capacity and attaching: typed
 * errors with the operation, the errno name and libbpf's own log; attach modes reported as the kernel
 * reports them; a foreign XDP program is never clobbered.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { after, describe, it } from 'node:test';

import { zeroBackendStats } from '../../src/server/core/dataplane.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { RING_SIZE } from '../../src/server/dataplane/codec.js';
import { KernelError } from '../../src/server/dataplane/errors.js';
import { kernelOnly, OBJECT, removeIproute2BpffsDirs, ROOT, runId, sh, shQuiet } from '../helpers/env.js';

describe('datapath load and attach', kernelOnly(), () => {
  const id = runId();
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  const otherRoot = `/sys/fs/bpf/xdpctl-test-${id}b`;
  const migrateRoot = `/sys/fs/bpf/xdpctl-test-${id}m`;
  const ifA = `x${id}la`;
  const ifB = `x${id}lb`;
  const opened: XdpDatapath[] = [];
  after(() => {
    removeIproute2BpffsDirs(); // `ip link set ... obj` below makes them
    opened.forEach((d) => d.close());
    shQuiet('ip', ['link', 'del', ifA]);
    XdpDatapath.unpinAll(pinRoot);
    XdpDatapath.unpinAll(otherRoot);
    XdpDatapath.unpinAll(migrateRoot);
  });

  it('migrates pins of another capacity instead of refusing them: new maps beside, swapped in at the end', () => {
    opened.push(XdpDatapath.open({ objectPath: OBJECT, pinRoot, capacity: { ruleSlots: 32 } }));
    const first = XdpDatapath.open({ objectPath: OBJECT, pinRoot: migrateRoot, capacity: { ruleSlots: 32 } });
    assert.equal(first.migrating, undefined, 'nothing pinned before: nothing to migrate');
    first.close();
    const maxEntries = (path: string) =>
      (JSON.parse(sh('bpftool', ['-j', 'map', 'show', 'pinned', path])) as { max_entries: number }).max_entries;
    const before = maxEntries(`${migrateRoot}/maps/rule_cfg`);
    const dp = XdpDatapath.open({ objectPath: OBJECT, pinRoot: migrateRoot, capacity: { ruleSlots: 64 } });
    try {
      assert.ok(
        dp.migrating?.some((c) => /^rule_cfg: max_entries \d+ -> \d+$/.test(c)),
        String(dp.migrating),
      );
      assert.equal(dp.maps.ruleCfg.info.maxEntries > before, true, 'the new maps have the new capacity');
      assert.equal(maxEntries(`${migrateRoot}/maps/rule_cfg`), before, 'the old pins stay until the switch');
      assert.equal(maxEntries(`${migrateRoot}/maps_next/rule_cfg`), dp.maps.ruleCfg.info.maxEntries);
      assert.deepEqual(dp.finishMigration(), [], 'no interface ran the old program');
      assert.equal(dp.migrating, undefined);
      assert.equal(maxEntries(`${migrateRoot}/maps/rule_cfg`), dp.maps.ruleCfg.info.maxEntries, 'new pins in place');
      assert.ok(!existsSync(`${migrateRoot}/maps_next`));
    } finally {
      dp.close();
    }
    // And the next start adopts them as they are.
    const again = XdpDatapath.open({ objectPath: OBJECT, pinRoot: migrateRoot, capacity: { ruleSlots: 64 } });
    assert.equal(again.migrating, undefined);
    assert.equal(again.adopted, true);
    again.close();
  });

  it('reads and writes rule_ring through memory (BPF_F_MMAPABLE); pins from before the flag are migrated', () => {
    const root = `${migrateRoot}r`;
    try {
      // Pins as a daemon from before the flag left them: rule_ring the same shape, without BPF_F_MMAPABLE.
      const first = XdpDatapath.open({ objectPath: OBJECT, pinRoot: root, capacity: { ruleSlots: 8 } });
      const entries = first.maps.ruleRing.info.maxEntries;
      assert.equal(first.maps.ruleRing.mmapable, true);
      first.close();
      const ring = `${root}/maps/rule_ring`;
      sh('rm', ['-f', ring]);
      sh('bpftool', [
        'map',
        'create',
        ring,
        'type',
        'array',
        'key',
        '4',
        'value',
        '4',
        'entries',
        String(entries),
        'name',
        'rule_ring',
      ]);
      const dp = XdpDatapath.open({ objectPath: OBJECT, pinRoot: root, capacity: { ruleSlots: 8 } });
      try {
        assert.deepEqual(dp.migrating, ['rule_ring: mmapable 0 -> 1024']);
        const m = dp.maps.ruleRing;
        assert.equal(m.mmapable, true);
        // Memory and the syscalls see the same values, across page boundaries (1031 x 8 bytes per slot).
        const base = 3 * RING_SIZE + 5;
        const values = Uint32Array.from({ length: 2 * RING_SIZE }, (_, i) => (i * 2654435761) >>> 0);
        m.putRangeU32(base, values);
        for (const i of [0, 1, 511, 512, 1030, 1031, 2 * RING_SIZE - 1])
          assert.equal(m.get(base + i), values[i], `key ${base + i}`);
        assert.equal(m.get(base - 1), 0, 'the key before the range is untouched');
        assert.equal(m.get(base + values.length), 0, 'the key after the range is untouched');
        m.put(base + 7, 424242);
        const back = m.getRangeU32(base, values.length);
        assert.equal(back[7], 424242);
        assert.deepEqual([...back.subarray(8)], [...values.subarray(8)]);
        assert.throws(() => m.getRangeU32(entries - 2, 3), /E2BIG/);
        dp.finishMigration();
      } finally {
        dp.close();
      }
      const again = XdpDatapath.open({ objectPath: OBJECT, pinRoot: root, capacity: { ruleSlots: 8 } });
      assert.equal(again.migrating, undefined, 'the migrated pins are adopted as they are');
      assert.equal(again.maps.ruleRing.mmapable, true);
      again.close();
    } finally {
      XdpDatapath.unpinAll(root);
    }
  });

  it('adopts the pinned program without loading it again when it was loaded from the same object; loads when anything differs', () => {
    const root = `/sys/fs/bpf/xdpctl-test-${id}f`;
    const progs = `${root}/progs`;
    const loadedPins = () => readdirSync(progs).filter((f) => f.startsWith('loaded_'));
    try {
      const first = XdpDatapath.open({ objectPath: OBJECT, pinRoot: root });
      const progId = first.progId;
      assert.equal(first.loadedAtOpen, true, 'nothing pinned: loaded');
      first.close();
      assert.equal(loadedPins().length, 1, 'the program is pinned under its load fingerprint too');

      const second = XdpDatapath.open({ objectPath: OBJECT, pinRoot: root });
      assert.equal(second.loadedAtOpen, false, 'same object, same maps: adopted without a load');
      assert.equal(second.progId, progId);
      assert.equal(second.adopted, true);
      assert.equal(second.upgraded, false);
      second.close();

      // The fingerprint pin gone (pins edited by hand): load, compare tags, adopt, pin it again.
      rmSync(`${progs}/${loadedPins()[0]}`);
      const third = XdpDatapath.open({ objectPath: OBJECT, pinRoot: root });
      assert.equal(third.loadedAtOpen, true, 'no fingerprint pin: loaded and compared');
      assert.equal(third.progId, progId, 'same code: the pinned program is kept');
      third.close();
      assert.equal(loadedPins().length, 1);

      // The fingerprint pin names another program than progs/xdpctl_main: load.
      const fp = loadedPins()[0];
      rmSync(`${progs}/${fp}`);
      sh('bpftool', ['prog', 'load', `${ROOT}/build/bpf/baseline.bpf.o`, `${progs}/${fp}`]);
      const fourth = XdpDatapath.open({ objectPath: OBJECT, pinRoot: root });
      assert.equal(fourth.loadedAtOpen, true, 'the fingerprint pin is another program: loaded');
      assert.equal(fourth.progId, progId);
      fourth.close();

      // Another object (another build): loaded, and the interfaces would be upgraded.
      const next = XdpDatapath.open({ objectPath: `${ROOT}/build/bpf/xdpctl-next.bpf.o`, pinRoot: root });
      assert.equal(next.loadedAtOpen, true);
      assert.equal(next.upgraded, true);
      assert.notEqual(next.progId, progId);
      next.close();
      assert.equal(loadedPins().length, 1, 'one fingerprint pin: the new load replaced the old');
      const back = XdpDatapath.open({ objectPath: `${ROOT}/build/bpf/xdpctl-next.bpf.o`, pinRoot: root });
      assert.equal(back.loadedAtOpen, false);
      back.close();
    } finally {
      XdpDatapath.unpinAll(root);
    }
  });

  it('syncArray reads an array map and writes only the entries that differ (rule_ports at start)', () => {
    const ports = opened[0].maps.rulePorts;
    assert.equal(
      ports.syncArray(() => undefined),
      0,
      'all zero as wanted: nothing written',
    );
    ports.put(4242, { any: 3, dst: 1 });
    ports.put(7, { any: 1, dst: 0, xorIfindex: 9, xorSlot: 2 });
    const want = (port: number) => (port === 7 ? { any: 1, dst: 0, xorIfindex: 9, xorSlot: 2 } : undefined);
    assert.equal(ports.syncArray(want), 1, 'only the stray count of port 4242 is written');
    assert.deepEqual(ports.get(4242), { any: 0, dst: 0 });
    assert.deepEqual(ports.get(7), { any: 1, dst: 0, xorIfindex: 9, xorSlot: 2 });
    assert.equal(
      ports.syncArray(() => undefined),
      1,
      'port 7 cleared',
    );
    assert.equal(
      ports.syncArray(() => undefined),
      0,
    );
  });

  it('getManyPerCpu reads the asked-for indexes of a per-CPU array in batches, as one lookup each would', () => {
    const stats = opened[0].maps.backendStats;
    const max = stats.info.maxEntries;
    const cpus = stats.getPerCpu(0)!.length;
    const value = (i: number, c: number) => ({
      packets: BigInt(i * 10 + c),
      bytes: BigInt(i) << 40n,
      redirectErrors: 1n,
    });
    const written = [0, 1, 2, 5, 4097, 4098, max - 1].filter((i) => i < max);
    for (const i of written)
      stats.putPerCpu(
        i,
        Array.from({ length: cpus }, (_, c) => value(i, c)),
      );
    const one = (ids: number[]) => new Map(ids.filter((i) => i < max).map((i) => [i, stats.getPerCpu(i)!]));
    // Dense (batches over 0..max, several chunks), sparse (one by one), zeros, an index past the end.
    for (const ids of [
      Array.from({ length: Math.min(max, 5000) }, (_, i) => i),
      [4098, 2, 0, 5],
      [max - 1, 3],
      [3, 6, max, max + 100],
      [],
    ]) {
      for (const chunk of [4096, 7]) {
        const what = `indexes ${ids.length > 8 ? `0..${ids.length - 1}` : ids.join(',')}, chunks of ${chunk}`;
        assert.deepEqual(stats.getManyPerCpu(ids, chunk), one(ids), what);
      }
    }
    assert.deepEqual(
      stats.getManyPerCpu([4097]).get(4097),
      Array.from({ length: cpus }, (_, c) => value(4097, c)),
    );
    for (const i of written) stats.putPerCpu(i, Array.from({ length: cpus }, zeroBackendStats));
  });
  it('reports a missing interface as ENODEV naming it', () => {
    assert.throws(
      () => opened[0].attach('nosuchif0', 'auto'),
      (e: unknown) => {
        assert.ok(e instanceof KernelError);
        assert.equal(e.kind, 'not-found');
        assert.match(e.message, /^look up interface nosuchif0: no such interface \(ENODEV\)$/);
        return true;
      },
    );
  });

  it('attaches native, generic or auto and reports the effective mode; never clobbers a foreign program', () => {
    sh('ip', ['link', 'add', ifA, 'type', 'veth', 'peer', 'name', ifB]);
    const dp = opened[0];
    assert.equal(dp.attach(ifA, 'generic').mode, 'generic');
    assert.equal(dp.attach(ifA, 'generic').replaced, false, 'idempotent');
    assert.equal(dp.attach(ifA, 'native').mode, 'native', 'mode change');
    assert.equal(dp.attach(ifA, 'auto').mode, 'native', 'auto keeps what works');
    dp.detach(ifA);
    assert.equal(dp.state(ifA).mode, 'none');
    // Another xdpctld's program (the same object, name and tag, loaded on another pin root's maps) is not
    // ours: refused, untouched, and the refusal says whose it is.
    const other = XdpDatapath.open({ objectPath: OBJECT, pinRoot: otherRoot });
    opened.push(other);
    sh('ip', ['link', 'set', 'dev', ifA, 'xdpgeneric', 'pinned', XdpDatapath.progPinPath(otherRoot)]);
    assert.equal(dp.state(ifA).progId, other.progId);
    assert.equal(dp.state(ifA).ours, false);
    assert.equal(dp.state(ifA).identity, 'foreign');
    assert.throws(
      () => dp.attach(ifA, 'generic'),
      new RegExp(
        `attach xdp to ${ifA}: another XDP program \\(id ${other.progId}, generic mode\\) is attached: an xdpctl_main ` +
          `of another xdpctld: it uses maps that are not pinned under ${pinRoot}; it is left alone \\(EBUSY\\)`,
      ),
    );
    assert.throws(() => dp.detach(ifA), /is not ours/);
    assert.equal(dp.state(ifA).progId, other.progId, "the other xdpctld's program untouched");
    // An earlier load on exactly this pin root's maps whose program pin is gone (an upgrade after the pin was
    // removed) is ours by its map ids: replaced.
    const earlierRoot = `${otherRoot}e`;
    try {
      const earlier = XdpDatapath.open({ objectPath: OBJECT, pinRoot: earlierRoot });
      sh('ip', ['-force', 'link', 'set', 'dev', ifA, 'xdpgeneric', 'pinned', XdpDatapath.progPinPath(earlierRoot)]);
      const earlierId = earlier.progId;
      earlier.close();
      rmSync(`${earlierRoot}/progs`, { recursive: true });
      const later = XdpDatapath.open({ objectPath: OBJECT, pinRoot: earlierRoot });
      try {
        assert.notEqual(later.progId, earlierId, 'loaded again: the program pin was gone');
        assert.equal(later.state(ifA).progId, earlierId);
        assert.equal(later.state(ifA).ours, true, 'an xdpctl_main on exactly our maps');
        assert.equal(later.state(ifA).identity, 'ours');
        assert.equal(later.attach(ifA, 'generic').replaced, true);
        assert.equal(later.state(ifA).progId, later.progId);
        // ... and the other pin root's copy is still not ours to that datapath either.
        sh('ip', ['-force', 'link', 'set', 'dev', ifA, 'xdpgeneric', 'pinned', XdpDatapath.progPinPath(otherRoot)]);
        assert.equal(later.state(ifA).ours, false);
      } finally {
        later.close();
      }
    } finally {
      XdpDatapath.unpinAll(earlierRoot);
    }
    sh('ip', ['link', 'set', 'dev', ifA, 'xdpgeneric', 'off']);
    // A foreign program is refused, not clobbered, and stays attached.
    sh('ip', ['link', 'set', 'dev', ifA, 'xdpgeneric', 'obj', `${ROOT}build/bpf/baseline.bpf.o`, 'sec', 'xdp']);
    const foreign = dp.state(ifA);
    assert.equal(foreign.ours, false);
    assert.throws(() => dp.attach(ifA, 'auto'), /another XDP program \(id \d+, generic mode\) is attached \(EBUSY\)/);
    assert.equal(dp.state(ifA).progId, foreign.progId, 'foreign program untouched');
    assert.throws(() => dp.detach(ifA), /is not ours/);
  });
});
