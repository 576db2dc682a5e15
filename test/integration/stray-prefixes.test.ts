/**
 * Source-prefix entries (map src_allow) that no rule holds, written by another tool through the pins
 * (`bpftool map update pinned PIN/maps/src_allow ...` for a rule slot no rule uses): no packet reaches them, but
 * they take the room our rules need. Before, they went unseen: a change needing that room was refused
 * "update map src_allow: no space left (map full)" while our rules held 2 of the map's 64 entries, with nothing
 * saying what filled it, and the entries stayed for ever. Now the refusal says what fills the map (its entries,
 * ours, and those of no rule), the reconciler's full comparison deletes them and says so in one line per slot
 * (core/kernel-check.ts sweepStrayPrefixes), and the change then succeeds.
 */
import assert from 'node:assert/strict';
import { writeFileSync, rmSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';

import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, runId, sh, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';

const STRAY_SLOT = 999;
const STRAY = 60;

describe('source-prefix entries of no rule, written by another tool', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const dir = mkdtempSync(join(tmpdir(), `xdpctl-stray-${id}-`));
  let d: DaemonProcess;
  let c: Clients;
  let vm: Host, b1: Host;

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    // --max-rules 4: room for 16 x 4 = 64 source prefixes.
    d = await DaemonProcess.start(`spx${id}`, ['--max-rules', '4']);
    c = d.clients();
  });
  after(async () => {
    await d?.destroy();
    topo.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  const srcAllow = () => `${d.pinRoot}/maps/src_allow`;
  /** The src_allow keys as bpftool dumps them: slot -> entries. */
  const bySlot = (): Map<number, number> => {
    const dump = JSON.parse(sh('bpftool', ['-j', 'map', 'dump', 'pinned', srcAllow()])) as { key: string[] }[];
    const m = new Map<number, number>();
    for (const e of dump) {
      const slot = Buffer.from(e.key.slice(4, 8).map((b) => parseInt(b, 16))).readUInt32LE(0);
      m.set(slot, (m.get(slot) ?? 0) + 1);
    }
    return m;
  };
  /** Another tool: STRAY /32 entries for a rule slot no rule uses, in one bpftool batch. */
  const fill = () => {
    const lines: string[] = [];
    for (let i = 0; i < STRAY; i++) {
      const key = [64, 0, 0, 0, STRAY_SLOT & 0xff, STRAY_SLOT >> 8, 0, 0, 10, 200, 0, i, ...Array<number>(12).fill(0)];
      lines.push(`map update pinned ${srcAllow()} key ${key.join(' ')} value 1`);
    }
    const f = join(dir, 'batch');
    writeFileSync(f, lines.join('\n') + '\n');
    sh('bpftool', ['batch', 'file', f]);
  };
  const prefixes = (n: number) => Array.from({ length: n }, (_, i) => `10.77.${i}.0/24`);
  const rule = (name: string, port: number, n: number) => ({
    name,
    match: { port, sourcePrefixes: prefixes(n) },
    ingressInterfaces: [vm.hostIf],
    backends: [{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf }],
  });

  it('a refusal says what fills the map; the reconciler deletes them and says so; the change then lands', async () => {
    await c.rules.createRule({ rule: rule('keep', 7411, 2) });
    assert.equal(bySlot().size, 1, 'our one rule slot');
    // The reconciler's full comparison may delete the entries between the fill and the change (it runs every
    // second): then the change lands, is undone here, and the fill is made again.
    let refusal: { code: Status; details: string } | undefined;
    for (let attempt = 0; attempt < 5 && !refusal; attempt++) {
      fill();
      try {
        await c.rules.createRule({ rule: rule('wide', 7412, 10) });
        await c.rules.deleteRule({ name: 'wide' });
      } catch (e) {
        refusal = e as { code: Status; details: string };
      }
    }
    assert.ok(refusal, 'the change was refused at least once while the entries were there');
    assert.equal(refusal.code, Status.RESOURCE_EXHAUSTED, refusal.details);
    assert.match(refusal.details, /update map src_allow: no space left/);
    assert.match(
      refusal.details,
      new RegExp(`the map holds \\d+ entries: \\d+ of them this daemon's rules', ${STRAY} of no rule`),
    );
    // Nothing of the refused change stayed.
    assert.deepEqual(
      (await c.rules.listRules({})).rules.map((r) => r.name),
      ['keep'],
    );
    // Said and deleted by the reconciler, one line for the slot.
    const line = new RegExp(
      `source prefixes of no rule \\(map src_allow, rule slot ${STRAY_SLOT}: ${STRAY} entries\\)`,
    );
    await until('the stray entries deleted and said', () => line.test(d.output), 10_000);
    await until('src_allow holds only our rule', () => !bySlot().has(STRAY_SLOT), 5000);
    const created = await c.rules.createRule({ rule: rule('wide', 7412, 10) });
    assert.equal(created.rule?.status?.state, RuleState.RULE_STATE_ACTIVE, created.rule?.status?.message);
    const slots = bySlot();
    assert.deepEqual(
      [...slots.values()].sort((a, b) => a - b),
      [2, 10],
    );
  });
});
