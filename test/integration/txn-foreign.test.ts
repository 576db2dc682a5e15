/**
 * The many-rule transaction (rule generations) against another tool and a kill, in the real kernel (twenty-first
 * review; the fixes were unit-tested on model maps only). Real daemons, real `bpftool` writes into the pins, real
 * datagrams through namespaces:
 *  - a rule_ports entry (folded: it names a slot itself) and a rule_match entry written by bpftool into the inactive
 *    generation are zeroed/deleted and said by the next many-rule ApplyRules before it switches: no datagram to
 *    their ports is redirected (the backend receives none, the kernel counts none for the slot's rule). Before:
 *    staging trusted a generation this daemon had left empty, and the foreign port went live at the switch;
 *  - rule_gen flipped by bpftool is written back by the reconciler and said; the rules deliver again;
 *  - kill -9 after a many-rule ApplyRules staged its match entries and before its switch: the next start clears the
 *    rule slots no stored rule holds, names the first 20 and counts them all in one more line (the default log
 *    buffer drops nothing); `rules list` is the stored set and an old rule delivers. Before: the staged rules' slots
 *    (tables, backend entries) stayed written, unheld; then one error line per slot (3 000: more than the buffer).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { setImmediate as tick } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';

import { openPinnedMap } from '../../src/server/dataplane/bpf-map.js';
import {
  AF_INET,
  backendEntry,
  matchKey,
  portUse,
  PORTS_PER_GEN,
  ruleEntry,
  u32,
} from '../../src/server/dataplane/codec.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import type { Clients, DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import type { Host } from '../helpers/topology.js';

/**
 * Rules of case (c): N old ones, then ADDED new ones by the change killed before its switch (its staging takes the
 * longer the more it adds: a kill that follows the first staged entry lands before the switch on a loaded machine;
 * with 1 500 added, up to 573 were staged when the kill landed).
 */
const N = 1000;
const ADDED = 3000;
const MAX_RULES = N + ADDED;
const OLD = 10000;
const NEW = 30000;
/** The ports another tool points at a slot in the inactive generation (case a). */
const FOREIGN_FOLD = 20000;
const FOREIGN_MATCH = 20001;

const args = (b: Buffer) => [...b].map(String);
const u32le = (n: number) => args(u32.encode(n));

describe(
  'the many-rule transaction against another tool and a kill (rule generations, real kernel)',
  kernelOnly(),
  () => {
    const lab = new Lab();
    let d: DaemonProcess;
    let c: Clients;
    let b1: Host, b2: Host;
    let ifindex: number;

    before(async () => {
      ({ b1, b2 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', b2: '198.18.3.1/24' }));
      ({ d, c } = await lab.start(['--log-level', 'info', '--max-rules', String(MAX_RULES)]));
      ifindex = Number(readFileSync(`/sys/class/net/${lab.vm.hostIf}/ifindex`, 'utf8'));
    });
    after(() => lab.destroy());

    const maps = () => XdpDatapath.mapPinDir(d.pinRoot);
    /** `bpftool map update` of rule_ports[index] = value, as another tool writes it. */
    const putPort = (index: number, value: Buffer) =>
      sh('bpftool', [
        'map',
        'update',
        'pinned',
        `${maps()}/rule_ports`,
        'key',
        ...u32le(index),
        'value',
        ...args(value),
      ]);
    /** rule_gen's value (bpftool's view). */
    const ruleGen = (): number => {
      const [e] = JSON.parse(sh('bpftool', ['-j', 'map', 'dump', 'pinned', `${maps()}/rule_gen`])) as {
        value: string[];
      }[];
      return Buffer.from(e.value.map((x) => parseInt(x, 16))).readUInt32LE(0);
    };
    /** The active generation's match entries' slots by port. */
    const slotsByPort = (): Map<number, number> => {
      const gen = ruleGen() & 1;
      const m = openPinnedMap(`${maps()}/rule_match`, matchKey, u32);
      try {
        return new Map(m.entriesBatch().flatMap(([k, s]) => ((k.gen ?? 0) === gen ? [[k.dport, s] as const] : [])));
      } finally {
        m.close();
      }
    };
    /** How many of `n` datagrams to `port` each of `to` received. */
    const delivered = async (port: number, to: Host[], n = 100) => (await lab.send(port, to, n, 10)).got;
    const ruleCounters = async (name: string) => {
      const { counters } = await c.counters.getCounters({ filter: { rules: [name] } });
      const r = counters!.rules.find((x) => x.rule === name)!;
      return { matched: r.matchedPackets, redirected: r.redirectedPackets };
    };

    it('(a) a rule_ports and a rule_match entry bpftool wrote into the inactive generation: zeroed and said before a many-rule switch; no datagram to their ports redirected', async () => {
      await c.rules.applyRules({
        rules: [lab.apiRule('a0', 7001, [backendOf(b1)]), lab.apiRule('a1', 7002, [backendOf(b1)])],
        validateOnly: false,
      });
      await lab.untilActive('a0');
      await lab.untilActive('a1');
      assert.deepEqual(await delivered(7001, [b1]), [100], 'premise: a0 delivers');
      const slot = slotsByPort().get(7001)!;
      assert.ok(slot !== undefined, 'a0 has a match entry in the active generation');
      const inactive = (ruleGen() & 1) ^ 1;

      // Another tool: port FOREIGN_FOLD's index entry of the inactive generation names a0's slot itself (one
      // any-destination entry on vm's ingress: the datapath takes the slot from the fold, no match lookup), and
      // port FOREIGN_MATCH has an index entry counting two (no fold: rule_match is looked up) and an entry there,
      // pointing at a0's slot.
      const at = d.output.length;
      const fold = portUse.encode({ any: 1, dst: 0, xorIfindex: ifindex, xorSlot: slot });
      putPort(inactive * PORTS_PER_GEN + FOREIGN_FOLD, fold);
      const counted = portUse.encode({ any: 2, dst: 0 }); // a count of 2: no fold, the match entry is looked up
      putPort(inactive * PORTS_PER_GEN + FOREIGN_MATCH, counted);
      const key = matchKey.encode({
        ifindex,
        dport: FOREIGN_MATCH,
        proto: 17,
        family: AF_INET,
        daddr: new Uint8Array(4),
        gen: inactive,
      });
      sh('bpftool', ['map', 'update', 'pinned', `${maps()}/rule_match`, 'key', ...args(key), 'value', ...u32le(slot)]);

      // A change of two rules: one kernel transaction, switched to the generation bpftool wrote into.
      await c.rules.applyRules({
        rules: [
          lab.apiRule('a0', 7001, [backendOf(b1)]),
          lab.apiRule('a1', 7002, [backendOf(b1)]),
          lab.apiRule('a2', 7003, [backendOf(b1)]),
          lab.apiRule('a3', 7004, [backendOf(b1)]),
        ],
        validateOnly: false,
      });
      assert.equal(ruleGen() & 1, inactive, 'premise: the change switched to the generation bpftool wrote into');
      await lab.untilActive('a3');
      assert.deepEqual(await delivered(7004, [b1]), [100], 'the change holds: a3 delivers');

      const before = await ruleCounters('a0');
      const got = [...(await delivered(FOREIGN_FOLD, [b1])), ...(await delivered(FOREIGN_MATCH, [b1]))];
      const afterSend = await ruleCounters('a0');
      assert.deepEqual(
        got,
        [0, 0],
        `datagrams to ports ${FOREIGN_FOLD} and ${FOREIGN_MATCH} redirected to a0's backend`,
      );
      assert.deepEqual(afterSend, before, "the kernel counted none of them for a0's slot");
      assert.deepEqual(await delivered(7001, [b1]), [100], 'a0 still delivers');

      // Said: each entry found in the inactive generation, with the map, the key and the value read.
      const text = d
        .logLines(at)
        .map((l) => l.msg)
        .join('\n');
      assert.match(
        text,
        new RegExp(
          `port index \\(map rule_ports, port ${FOREIGN_FOLD}, inactive generation ${inactive}: index ${inactive * PORTS_PER_GEN + FOREIGN_FOLD}\\): ` +
            `kernel \\{"any":1,"dst":0,"xorIfindex":${ifindex},"xorSlot":${slot}\\}, zeroed`,
        ),
      );
      assert.match(
        text,
        new RegExp(
          `port index \\(map rule_ports, port ${FOREIGN_MATCH}, inactive generation ${inactive}: [^)]*\\): kernel \\{"any":2,"dst":0\\}, zeroed`,
        ),
      );
      // The match entry: deleted by the staging (named), or before it by a full comparison of the reconciler.
      assert.match(
        text,
        new RegExp(
          `match entry \\(map rule_match, generation ${inactive}: ifindex ${ifindex}, UDP port ${FOREIGN_MATCH}, any destination\\): kernel rule slot ${slot}, deleted|` +
            `deleted \\d+ match entries of the inactive rule generation ${inactive}`,
        ),
      );
      // Nothing of it is left in either generation's half of the index.
      const ports = openPinnedMap(`${maps()}/rule_ports`, u32, portUse);
      try {
        for (const g of [0, 1])
          for (const p of [FOREIGN_FOLD, FOREIGN_MATCH])
            assert.deepEqual(
              ports.get(g * PORTS_PER_GEN + p),
              { any: 0, dst: 0 },
              `rule_ports generation ${g} port ${p}`,
            );
      } finally {
        ports.close();
      }
    });

    it('(b) rule_gen flipped by bpftool: written back by the reconciler within 10 s and said; the rules deliver again', async (t) => {
      assert.deepEqual(await delivered(7001, [b1]), [100], 'premise: a0 delivers');
      const made = ruleGen();
      const at = d.output.length;
      sh('bpftool', ['map', 'update', 'pinned', `${maps()}/rule_gen`, 'key', ...u32le(0), 'value', ...u32le(made ^ 1)]);
      const flippedAt = Date.now();
      await until(
        () => `rule_gen still ${ruleGen()}, not ${made}`,
        () => ruleGen() === made,
        10_000,
      );
      const backIn = Date.now() - flippedAt;
      const line = `rule_gen (the active rule generation): kernel ${made ^ 1}, desired ${made}: rewritten`;
      await until(`the daemon says "${line}"`, () => d.output.slice(at).includes(line), 5000);
      const said = d
        .logLines<{ level: number; msg: string; repaired?: string[] }>(at)
        .find((l) => (l.repaired ?? []).includes(line));
      assert.ok(said, `a line whose repaired list holds "${line}"`);
      assert.equal(said.level, 40, "a warning, as every repair of another tool's write");
      assert.deepEqual(await delivered(7001, [b1]), [100], 'a0 delivers again');
      assert.deepEqual(await delivered(7004, [b1]), [100], 'a3 delivers again');
      // The generation this daemon made active is kept whole: its entries are those looked up, nothing in the other.
      assert.deepEqual([...slotsByPort().keys()].sort(), [7001, 7002, 7003, 7004]);
      assert.equal(ruleGen(), made, 'and stays');
      t.diagnostic(`rule_gen written back ${backIn} ms after bpftool flipped it`);
    });

    it('(c) kill -9 after a many-rule ApplyRules staged its match entries, before its switch: the start clears the slots no stored rule holds, names and counts them; the stored set forwards', async (t) => {
      const old = Array.from({ length: N }, (_, i) => lab.apiRule(`o${i}`, OLD + i, [backendOf(b1)]));
      const added = Array.from({ length: ADDED }, (_, i) => lab.apiRule(`n${i}`, NEW + i, [backendOf(b2)]));
      let active: number;
      let oldSlots: Set<number>;
      let answer: string;
      for (let attempt = 1; ; attempt++) {
        await c.rules.applyRules({ rules: old, validateOnly: false });
        assert.deepEqual(await delivered(OLD, [b1]), [100], 'premise: o0 delivers');
        active = ruleGen() & 1;
        oldSlots = new Set(slotsByPort().values());
        assert.equal(oldSlots.size, N, 'premise: one slot per old rule');

        // The change adds ADDED rules: their slots are written first, then their match entries staged in the
        // inactive generation (with a yield between slices), then rule_gen switched. Killed as soon as a staged entry
        // of a new rule is in the kernel: staging has begun, the switch (after the last of ADDED rules) has not.
        const match = openPinnedMap(`${maps()}/rule_match`, matchKey, u32);
        const keys = added.map((r) => ({
          ifindex,
          dport: r.match!.port,
          proto: 17,
          family: AF_INET,
          daddr: new Uint8Array(4),
          gen: active ^ 1,
        }));
        let stagedAtKill: number;
        try {
          const pending = c.rules.applyRules({ rules: [...old, ...added], validateOnly: false }).then(
            () => 'acknowledged',
            (e: Error) => `failed: ${e.message}`,
          );
          // The change's rules are written in the request's order: its first new rules are staged first. A few key
          // lookups per turn (not all of them), so that the kill follows the first staged entry closely.
          const first = keys.slice(0, 8);
          const deadline = Date.now() + 120_000;
          while (!first.some((k) => match.get(k) !== undefined)) {
            assert.ok(Date.now() < deadline, 'no staged entry of a new rule in 120 s');
            await tick();
          }
          d.child.kill('SIGKILL');
          answer = await pending;
          await d.stop('SIGKILL'); // reaped
          d.closeClients();
          stagedAtKill = keys.filter((k) => match.get(k) !== undefined).length;
        } finally {
          match.close();
        }
        t.diagnostic(
          `attempt ${attempt}: killed with ${stagedAtKill} of ${ADDED} new rules staged; the client was told: ${answer}`,
        );
        if (ruleGen() === active) break;
        // A loaded machine gave the daemon the whole window before the kill landed (seen once in 20 runs): the
        // premise did not hold, so nothing is judged; the stored set is put back and the kill tried again.
        assert.ok(attempt < 3, 'the kill landed after the switch 3 times: rule_gen switched');
        ({ d, c } = await lab.start(['--log-level', 'info', '--max-rules', String(MAX_RULES)]));
      }
      assert.match(answer, /^failed/, 'premise: the change was not acknowledged');
      // What the kill left: the new rules' slots written (rule entry active, backend table), held by no stored rule
      // and looked up by no active match entry.
      const cfg = openPinnedMap(`${maps()}/rule_cfg`, u32, ruleEntry);
      const written = () => {
        const out: number[] = [];
        for (const [slot, v] of cfg.entriesBatch()) if ((v.flags || v.statsId) && !oldSlots.has(slot)) out.push(slot);
        return out.sort((x, y) => x - y);
      };
      // Backend entries egressing to b2 (only the killed change's new rules have b2 as their backend).
      const b2Index = Number(readFileSync(`/sys/class/net/${b2.hostIf}/ifindex`, 'utf8'));
      const toB2 = () => {
        const m = openPinnedMap(`${maps()}/backends`, u32, backendEntry);
        try {
          return m.entriesBatch().filter(([, e]) => e.ifindex === b2Index).length;
        } finally {
          m.close();
        }
      };
      let left: number[];
      try {
        left = written();
        assert.ok(left.length > 0, "premise: the kill left new rules' slots written");
        const b2Entries = toB2();
        assert.ok(b2Entries > 0, "premise: the kill left the new rules' backend entries written");
        t.diagnostic(
          `${left.length} slots and ${b2Entries} backend entries written by the killed change, none looked up`,
        );
        // Before the start: the old rules deliver (the kernel never switched), the new ones do not.
        assert.deepEqual(await delivered(OLD + N - 1, [b1]), [100], 'the last old rule delivers from the pins');
        assert.deepEqual(await delivered(NEW, [b2]), [0], 'no new rule delivers: the change never switched');

        // The default log buffer (1 MiB of lines that may wait for a slow reader): one error line per slot (3 000 of
        // ~430 bytes) overflowed it and lines were dropped (the test ran with 64 MiB); now 20 named and one summary.
        ({ d, c } = await lab.start(['--log-level', 'info', '--max-rules', String(MAX_RULES)]));
        const still = written();
        assert.equal(
          still.length,
          0,
          `${still.length} slots left written that no stored rule holds (${still.slice(0, 5).join(', ')}…)`,
        );
        assert.equal(toB2(), 0, "the killed change's backend entries emptied");
        const lines = d.logLines<{
          level: number;
          msg: string;
          slot?: number;
          count?: number;
          total?: number;
          slots?: string;
          orphans?: number;
          unheldSlots?: number;
        }>();
        // The first 20 named, each at error level; the rest in one error line: their exact count and their slots.
        const cleared = lines.filter((l) => l.msg.startsWith('restore cleared rule slot '));
        const summary = lines.filter((l) => /^restore cleared \d+ more rule slots /.test(l.msg));
        const errors = lines.filter((l) => l.level === 50 && l.msg.startsWith('restore cleared '));
        t.diagnostic(
          `${left.length} slots cleared: ${errors.length} error lines about them (was one per slot: ${left.length}); ` +
            (d.output
              .split('\n')
              .filter((l) => /dropped/.test(l))
              .join(' ') || 'no log line dropped'),
        );
        assert.equal(cleared.length, Math.min(20, left.length), 'the first 20 named');
        for (const l of cleared) {
          assert.equal(l.level, 50, 'at error level');
          assert.match(
            l.msg,
            /^restore cleared rule slot \d+ \(map rule_cfg: kernel flags word 0x[0-9a-f]+, stats id \d+; map rule_ring: 1 backend ids; map backends: 1 entries emptied\)/,
          );
        }
        assert.equal(summary.length, left.length > 20 ? 1 : 0, 'one summary line');
        const inSummary = (summary[0]?.slots ?? '')
          .split(', ')
          .filter(Boolean)
          .flatMap((r) => {
            const [a, b = a] = r.split('-').map(Number);
            return Array.from({ length: b - a + 1 }, (_, i) => a + i);
          });
        if (summary.length) {
          assert.equal(summary[0].level, 50, 'at error level');
          assert.equal(summary[0].count, left.length - 20, 'the exact count of the rest');
          assert.equal(summary[0].total, left.length);
        }
        assert.deepEqual(
          [...cleared.map((l) => l.slot!), ...inSummary].sort((x, y) => x - y),
          left,
          'each slot the kill left is named, or in the summary line',
        );
        assert.equal(errors.length, Math.min(21, left.length), `20 + 1 error lines (was ${left.length})`);
        const restored = lines.find((l) => l.msg.startsWith('restored: '));
        assert.equal(restored?.unheldSlots, left.length, 'counted: unheldSlots');
        assert.equal(restored?.orphans, left.length, 'counted with the orphans');
      } finally {
        cfg.close();
      }
      // The stored set is what runs: the old rules, all of them forwarding.
      const names: string[] = [];
      let pageToken = '';
      do {
        const page = await c.rules.listRules({ pageToken, pageSize: 1000 });
        names.push(...page.rules.map((r) => r.name));
        pageToken = page.nextPageToken;
      } while (pageToken);
      assert.deepEqual(names.sort(), old.map((r) => r.name).sort(), 'rules list: the stored set');
      assert.deepEqual(await delivered(OLD, [b1]), [100], 'o0 delivers after the start');
      assert.deepEqual(await delivered(OLD + N - 1, [b1]), [100], `o${N - 1} delivers after the start`);
      assert.deepEqual(await delivered(NEW, [b2]), [0], 'n0 does not');
    });
  },
);
