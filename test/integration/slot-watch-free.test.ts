/**
 * Another tool's writes into a slot or backend id no rule holds (twenty-third review, LOW-5). Real daemon, real
 * `bpftool` writes into the pins, real datagrams:
 *  - a rule entry (rule_cfg), a backend table entry (rule_ring) of a free slot and a free backend entry (backends)
 *    written by bpftool are zeroed by the running daemon within a few seconds and said once each (map, slot or id,
 *    what was read; the writer is not known). Before: left as written, nothing said (the watcher was told of the
 *    write, but only the rules' slots were compared);
 *  - a free slot written whole by another tool (rule entry ACTIVE and ONE_BACKEND, every table entry an id whose
 *    entry sends to b2), then a CreateRule that takes that slot: its datagrams go to the rule's backend b1, none to
 *    b2 (the daemon writes every byte of a slot it takes: the whole rule entry, the whole table, its backend
 *    entries whole), whether the watcher zeroed the slot first or not.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { openPinnedMap } from '../../src/server/dataplane/bpf-map.js';
import { AF_INET, backendEntry, RING_SIZE, ruleEntry, u32 } from '../../src/server/dataplane/codec.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import type { Clients, DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import type { Host } from '../helpers/topology.js';

const REWRITTEN = 'kernel entries differed from the desired state: rewritten';
type Line = { msg: string; level: number; repaired?: string[] };
/** bpftool's byte list of a buffer. */
const args = (b: Buffer) => [...b].map(String);
const u32le = (n: number) => args(u32.encode(n));
const macBytes = (mac: string) => Uint8Array.from(mac.split(':').map((x) => parseInt(x, 16)));
const ipBytes = (ip: string) => Uint8Array.from(ip.split('.').map(Number));

describe('writes into free slots and backend ids (real kernel, bpftool)', kernelOnly(), () => {
  const lab = new Lab();
  let d: DaemonProcess;
  let c: Clients;
  let b1: Host, b2: Host;

  before(async () => {
    ({ b1, b2 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', b2: '198.18.3.1/24' }));
    ({ d, c } = await lab.start(['--log-level', 'info', '--max-rules', '64']));
    await c.rules.createRule({ rule: lab.rule('web', 7821, [backendOf(b1)]) });
    await lab.untilActive('web');
    // The watcher's programs count writes from their attach on (a write before it is the start's to clear).
    await until('the watcher started', () => d.logLines<Line>().some((l) => l.msg.startsWith('slot watcher: ')));
  });
  after(() => lab.destroy());

  const pin = (m: string) => `${XdpDatapath.mapPinDir(d.pinRoot)}/${m}`;
  /** Rule slots whose rule entry has the ACTIVE bit, and the backend ids their tables name. */
  const activeSlots = () => {
    const cfg = openPinnedMap(pin('rule_cfg'), u32, ruleEntry);
    const ring = openPinnedMap(pin('rule_ring'), u32, u32);
    try {
      const slots = cfg
        .entriesBatch()
        .filter(([, v]) => v.flags & 1)
        .map(([s]) => s);
      const ids = new Set<number>();
      for (const s of slots) for (const id of ring.getRangeU32(s * RING_SIZE, RING_SIZE)) ids.add(id);
      return { slots, ids };
    } finally {
      cfg.close();
      ring.close();
    }
  };
  /** An entry of backends that sends to b2 (its address, MAC, host-side veth). */
  const toB2 = () => ({
    dmac: macBytes(b2.mac),
    smac: macBytes(b2.hostMac),
    ifindex: Number(readFileSync(`/sys/class/net/${b2.hostIf}/ifindex`, 'utf8')),
    statsId: 60,
    family: AF_INET,
    addr: ipBytes(b2.ip!),
  });
  const lookup = (m: string, key: number): Buffer => {
    const out = execFileSync('bpftool', ['-j', 'map', 'lookup', 'pinned', pin(m), 'key', ...u32le(key)]);
    return Buffer.from((JSON.parse(out.toString()) as { value: string[] }).value.map((x) => parseInt(x, 16)));
  };
  const mentions = (from: number, what: string) =>
    d
      .logLines<Line>(from)
      .filter((l) => l.msg === REWRITTEN)
      .flatMap((l) => l.repaired ?? [])
      .filter((x) => x.startsWith(what));

  it('a rule entry, a table entry of a free slot and a free backend entry written by bpftool: zeroed within 5 s, each said once', async () => {
    const { slots, ids } = activeSlots();
    const slot = Math.max(...slots) + 7; // free, beyond the highest slot in use
    const id = Math.max(...ids) + 40; // free, beyond the highest id in use
    const at = d.output.length;
    const t0 = Date.now();
    sh('bpftool', [
      'map',
      'update',
      'pinned',
      pin('rule_cfg'),
      'key',
      ...u32le(slot),
      'value',
      ...args(ruleEntry.encode({ flags: 0x9, statsId: 7 })),
    ]);
    sh('bpftool', [
      'map',
      'update',
      'pinned',
      pin('rule_ring'),
      'key',
      ...u32le(slot * RING_SIZE + 5),
      'value',
      ...u32le(id),
    ]);
    sh('bpftool', [
      'map',
      'update',
      'pinned',
      pin('backends'),
      'key',
      ...u32le(id),
      'value',
      ...args(backendEntry.encode(toB2())),
    ]);
    const slotLine = `rule slot ${slot} of no rule (maps rule_cfg, rule_ring)`;
    const idLine = `backend entry ${id} of no rule (map backends)`;
    await until(
      `the daemon says it zeroed "${slotLine}" and "${idLine}"`,
      () => mentions(at, slotLine).length > 0 && mentions(at, idLine).length > 0,
      5000,
    );
    const ms = Date.now() - t0;
    // What was read, said: the rule entry's word and stats id, the table entry and its id (one line, or two when the
    // watcher came between two of bpftool's writes: each write seen is said).
    const said = mentions(at, slotLine);
    const rest = '\\(no rule holds it: another tool wrote it \\(writer not known\\)\\): zeroed$';
    for (const l of said) assert.match(l, new RegExp(`^rule slot ${slot} of no rule .*desired zero ${rest}`));
    assert.ok(
      said.some((l) => l.includes('kernel flags word 0x9, stats id 7, ')),
      `the rule entry read: ${said.join(' | ')}`,
    );
    assert.ok(
      said.some((l) => l.includes(`1 of ${RING_SIZE} table entries set (ids ${id})`)),
      `the table entry read: ${said.join(' | ')}`,
    );
    assert.match(mentions(at, idLine)[0], new RegExp(`^${idLine.replace(/[()]/g, '\\$&')}: kernel ifindex \\d+, MAC `));
    assert.ok(lookup('rule_cfg', slot).equals(Buffer.alloc(8)), 'rule entry zero');
    assert.ok(lookup('rule_ring', slot * RING_SIZE + 5).equals(Buffer.alloc(4)), 'table entry zero');
    assert.ok(lookup('backends', id).equals(Buffer.alloc(backendEntry.layout.size)), 'backend entry zero');
    // Said once: our own zeroing moves the counters too, and is read back as zero (nothing said). Passes after it:
    // a later write into another free id, zeroed and said in turn.
    const later = id + 1;
    sh('bpftool', [
      'map',
      'update',
      'pinned',
      pin('backends'),
      'key',
      ...u32le(later),
      'value',
      ...args(backendEntry.encode(toB2())),
    ]);
    const laterLine = `backend entry ${later} of no rule (map backends)`;
    await until(`"${laterLine}" said`, () => mentions(at, laterLine).length > 0, 5000);
    assert.equal(mentions(at, slotLine).length, said.length, 'the slot not said again');
    assert.ok(said.length <= 2, 'at most once per write');
    assert.equal(mentions(at, idLine).length, 1, 'the id said once');
    const line = d
      .logLines<Line>(at)
      .find((l) => l.msg === REWRITTEN && l.repaired?.some((x) => x.startsWith(slotLine)));
    assert.equal(line?.level, 40, 'a warning, as every repair');
    assert.equal((await lab.status('web')).state, RuleState.RULE_STATE_ACTIVE);
    console.log(`zeroed and said ${ms} ms after the writes`);
  });

  it('a free slot written whole by another tool, then a CreateRule taking it: its datagrams go to its backend only', async (t) => {
    // A rule made and deleted: its slot and backend id are the next a CreateRule takes (the pools hand out the most
    // recently released first).
    const before = activeSlots().slots;
    await c.rules.createRule({ rule: lab.rule('tmp', 7822, [backendOf(b1)]) });
    await lab.untilActive('tmp');
    const made = activeSlots();
    const slot = made.slots.find((s) => !before.includes(s))!;
    await c.rules.deleteRule({ name: 'tmp' });
    assert.ok(slot !== undefined, "premise: tmp's slot found");
    // Another tool writes the whole slot: ACTIVE and ONE_BACKEND, every table entry a foreign id sending to b2.
    const foreign = Math.max(...made.ids) + 50;
    const at = d.output.length;
    const cfg = openPinnedMap(pin('rule_cfg'), u32, ruleEntry);
    const ring = openPinnedMap(pin('rule_ring'), u32, u32);
    const backends = openPinnedMap(pin('backends'), u32, backendEntry);
    try {
      backends.put(foreign, toB2());
      for (let i = 0; i < RING_SIZE; i++) ring.put(slot * RING_SIZE + i, foreign);
      cfg.put(slot, { flags: 0x9, statsId: 7 });
    } finally {
      cfg.close();
      ring.close();
      backends.close();
    }
    // At once: the create takes the slot, before or after the watcher zeroed it.
    await c.rules.createRule({ rule: lab.rule('new', 7823, [backendOf(b1)]) });
    await lab.untilActive('new');
    const now = activeSlots().slots;
    assert.ok(now.includes(slot), `premise: new took slot ${slot} (active slots ${now.join(', ')})`);
    const { got } = await lab.send(7823, [b1, b2], 100, 10);
    assert.deepEqual(got, [100, 0], 'every datagram to the new rule went to b1, none to b2');
    const zeroedFirst = mentions(at, `rule slot ${slot} of no rule`).length > 0;
    t.diagnostic(
      zeroedFirst
        ? `the watcher zeroed slot ${slot} before the create took it`
        : `the create took slot ${slot} over the foreign bytes (written whole)`,
    );
    // The foreign backend entry no rule holds: zeroed.
    await until(
      `backend entry ${foreign} zeroed`,
      () => lookup('backends', foreign).equals(Buffer.alloc(backendEntry.layout.size)),
      5000,
    );
  });
});
