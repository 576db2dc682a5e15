/**
 * A kill -9 at any step of a --max-rules migration leaves a datapath the next start takes over: the
 * daemon kills itself (XDPCTL_TEST_MIGRATION_KILL, datapath.ts migrationStep) before the first attach,
 * between the attaches of its two ingress interfaces, after them before the maps' pins move, in the middle
 * of that move, before the program's pin moves and before its next_ pin goes. A restart with the same
 * --max-rules then finds its own programs on the interfaces (whichever pin set their maps use), swaps them
 * atomically, says what it found, and runs the rules ACTIVE and SERVING; datagrams flow through the crash
 * and the restart with none lost, and the counters the daemon reads are the ones the program counts into.
 * The --max-rules alternates between two sizes, so that every case migrates.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, sleep, until } from '../helpers/env.js';
import { backendOf, Lab, NOWHERE } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const PORT = 7999;
/** Rules besides r0 (ports nobody sends to): the migration has rules to write. */
const OTHERS = 200;
const SMALL = '256';
const LARGE = '512';
const STEPS = [
  'before-attach',
  'between-attaches',
  'after-attach',
  'mid-rename',
  'before-prog-pin',
  'before-next-unpin',
] as const;
/** Steps after which an interface runs the new program: the next start completes the migration's pin move. */
const SWITCHED = new Set<string>(STEPS.slice(1));

describe(
  'a kill -9 at any step of a --max-rules migration: the next start takes the datapath over',
  kernelOnly(),
  () => {
    const lab = new Lab();
    const { id, listeners } = lab;
    const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
    let d: DaemonProcess;
    let c: Clients;
    let vm: Host, v2: Host, b1: Host;
    let size: string = SMALL;

    before(async () => {
      ({ vm, v2, b1 } = lab.addHosts({ vm: '198.18.1.1/24', v2: '198.18.3.1/24', b1: '198.18.2.1/24' }));
      ({ d, c } = await lab.start(['--log-level', 'info', '--max-rules', size]));
      const rules = [
        lab.rule('r0', PORT, [backendOf(b1)], [vm.hostIf, v2.hostIf]),
        ...Array.from({ length: OTHERS }, (_, i) => lab.rule(`r${i + 1}`, 9000 + i, [backendOf(b1)], [vm.hostIf])),
      ];
      await c.rules.applyRules({ rules, validateOnly: false });
      await lab.untilActive('r0');
    });
    after(() => lab.destroy());

    const progOn = (ifname: string) =>
      (JSON.parse(sh('ip', ['-j', 'link', 'show', 'dev', ifname]))[0] as { xdp?: { prog?: { id: number } } }).xdp?.prog
        ?.id ?? 0;
    const ruleCfgMax = () =>
      (
        JSON.parse(sh('bpftool', ['-j', 'map', 'show', 'pinned', `${pinRoot}/maps/rule_cfg`])) as {
          max_entries: number;
        }
      ).max_entries;
    const packets = async () =>
      (await c.counters.getCounters({ filter: { rules: ['r0'] } })).counters!.backends.reduce(
        (n, b) => n + b.packets,
        0n,
      );

    // Each step restarted with the killed run's --max-rules; one also with the one before it (a second migration).
    const cases = [...STEPS.map((step) => ({ step, back: false })), { step: 'between-attaches', back: true }];
    for (const { step, back } of cases) {
      const how = back ? ', restarted with the --max-rules before it' : '';
      it(`killed at ${step}${how}: the restart takes its programs over, none lost, ACTIVE and SERVING`, async (t) => {
        const target = size === SMALL ? LARGE : SMALL;
        const restartSize = back ? size : target;
        const cfgBefore = ruleCfgMax();
        const l = await UdpListener.start(b1.netns, b1.ip!, PORT);
        listeners.push(l);
        const sender = sendUdp(vm.netns, NOWHERE, PORT, 200_000, { perTick: 4, tickMs: 4 });
        t.after(async () => {
          sender.stop();
          await sender.done.catch(() => undefined);
          await l.stop().catch(() => undefined);
        });
        await sleep(300);
        // The daemon that migrates, killed at the step (its datapath keeps forwarding: kill -9 first).
        await d.stop('SIGKILL');
        const killed = await lab
          .start(['--log-level', 'info', '--max-rules', target], {
            XDPCTL_TEST_MIGRATION_KILL: step,
          })
          .then(
            () => assert.fail(`the daemon was not killed at ${step}`),
            (e: Error) => e.message,
          );
        assert.match(killed, /exited null/, 'killed, not exited');
        assert.match(killed, /migrating to new maps/);
        const progs = [progOn(vm.hostIf), progOn(v2.hostIf)];
        t.diagnostic(`${step}: after the kill, ${vm.hostIf} runs ${progs[0]}, ${v2.hostIf} ${progs[1]}`);
        ({ d, c } = await lab.start(['--log-level', 'info', '--max-rules', restartSize]));
        size = restartSize;
        await lab.untilActive('r0');
        await until('datapath SERVING', async () => (await lab.health()) === 1, 5000);
        const programId = (await c.daemon.getStatus({})).datapath!.programId;
        assert.equal(progOn(vm.hostIf), programId, `${vm.hostIf} runs the daemon's program`);
        assert.equal(progOn(v2.hostIf), programId, `${v2.hostIf} runs the daemon's program`);
        if (back) assert.equal(ruleCfgMax(), cfgBefore, 'rule_cfg back to its size');
        else if (target === LARGE)
          assert.ok(ruleCfgMax() > cfgBefore, `rule_cfg grew (${cfgBefore} -> ${ruleCfgMax()})`);
        else assert.ok(ruleCfgMax() < cfgBefore, `rule_cfg shrank (${cfgBefore} -> ${ruleCfgMax()})`);
        assert.ok(!existsSync(`${pinRoot}/maps_next`), 'no maps_next left');
        assert.deepEqual(
          readdirSync(`${pinRoot}/progs`).filter((f) => !f.startsWith('loaded_')),
          ['xdpctl_main'],
          'one program pinned',
        );
        // What it says it found and did.
        const out = d.output;
        assert.doesNotMatch(out, /another xdpctld|left alone/, 'its own programs are not another daemon');
        if (SWITCHED.has(step)) {
          // The switch had begun: the restart completes that migration (its --max-rules is the same) and adopts it.
          assert.match(out, /left unfinished by a stopped daemon had switched .*completed from the pins/);
          if (back) {
            // Then migrated from the completed maps to the size asked for, both interfaces swapped.
            assert.match(out, /migrating to new maps/);
            assert.match(out, /"msg":"migrated to the new maps: every interface that ran the old program \(/);
          } else assert.doesNotMatch(out, /migrating to new maps/, 'nothing left to migrate');
        } else {
          assert.match(out, /left unfinished by a stopped daemon had not switched any interface/);
          assert.match(out, /"msg":"migrated to the new maps: every interface that ran the old program/);
        }
        // The rule can be changed (it was EBUSY), and the program counts into the maps the daemon reads.
        const r0 = (await c.rules.getRule({ name: 'r0' })).rule!;
        await c.rules.updateRule({ rule: { ...r0, labels: { step } }, expectedGeneration: 0n });
        assert.equal((await lab.status('r0')).state, RuleState.RULE_STATE_ACTIVE);
        const p0 = await packets();
        await sleep(300);
        sender.stop();
        const { sent } = await sender.done;
        await sleep(150);
        const got = await l.stop();
        const delivered = got.unique + got.overflow;
        t.diagnostic(`${step}: sent ${sent}, delivered ${delivered} (${got.overflow} to a full socket buffer)`);
        assert.equal(got.bad, 0);
        assert.ok(sent > 500, `traffic across the crash and the restart (${sent})`);
        assert.equal(sent - delivered, 0, 'no sequence number lost');
        const p1 = await packets();
        assert.ok(p1 > p0, `r0's counter goes on (${p0} -> ${p1})`);
      });
    }

    it('killed before the switch, after restore attached the new program to an ingress that ran none: completed, not dropped', async (t) => {
      // Restore attaches the migration's program at once to an ingress without an XDP program (the others wait for
      // the switch). Its pin is made at load, so a start after a crash here knows it as this datapath's, without
      // having to open programs by id (which needs CAP_SYS_ADMIN); before, it was pinned at the switch only.
      const target = size === SMALL ? LARGE : SMALL;
      await d.stop('SIGKILL');
      for (const mode of ['xdpgeneric', 'xdpdrv']) {
        try {
          sh('ip', ['link', 'set', 'dev', v2.hostIf, mode, 'off']);
        } catch {
          // not attached in that mode
        }
      }
      assert.equal(progOn(v2.hostIf), 0, `${v2.hostIf} runs no XDP program`);
      const killed = await lab
        .start(['--log-level', 'info', '--max-rules', target], { XDPCTL_TEST_MIGRATION_KILL: 'before-attach' })
        .then(
          () => assert.fail('the daemon was not killed at before-attach'),
          (e: Error) => e.message,
        );
      assert.match(killed, /exited null/, 'killed, not exited');
      const bare = progOn(v2.hostIf);
      t.diagnostic(`after the kill: ${vm.hostIf} runs ${progOn(vm.hostIf)}, ${v2.hostIf} ${bare}`);
      assert.ok(bare !== 0 && bare !== progOn(vm.hostIf), 'restore attached the new program to the bare ingress');
      assert.ok(existsSync(`${pinRoot}/progs/next_xdpctl_main`), 'the new program pinned before its first attach');
      ({ d, c } = await lab.start(['--log-level', 'info', '--max-rules', target]));
      size = target;
      await lab.untilActive('r0');
      const programId = (await c.daemon.getStatus({})).datapath!.programId;
      assert.equal(progOn(vm.hostIf), programId, `${vm.hostIf} runs the daemon's program`);
      assert.equal(progOn(v2.hostIf), programId, `${v2.hostIf} runs the daemon's program`);
      assert.match(d.output, /left unfinished by a stopped daemon had switched .*completed from the pins/);
      assert.doesNotMatch(d.output, /another xdpctld|left alone/);
      assert.ok(!existsSync(`${pinRoot}/maps_next`), 'no maps_next left');
    });
  },
);
