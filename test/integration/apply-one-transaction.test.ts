/**
 * A many-rule change is one kernel transaction (eighteenth review, HIGH-1): kill -9 while a 3 000-rule
 * ApplyRules writes left the kernel with the first rules new and the last ones old until the next start.
 * Here the daemon is killed as soon as the kernel holds a match entry of the first rule pointing at a new
 * slot (in any generation: the change is being written); with the daemon gone the datapath goes on from
 * its pins, and datagrams to the first and to the last rule's port must go both to the old backend or
 * both to the new one, never one each. A restart then finds one generation, whole.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { setImmediate as tick } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';

import { openPinnedMap } from '../../src/server/dataplane/bpf-map.js';
import { AF_INET, matchKey, u32 } from '../../src/server/dataplane/codec.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import type { DaemonProcess, Clients } from '../helpers/daemon.js';
import { kernelOnly } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import type { Host } from '../helpers/topology.js';

const N = 3000;
const FIRST = 10000;
const LAST = FIRST + N - 1;
const DATAGRAMS = 50;

describe('a many-rule ApplyRules is one kernel transaction', kernelOnly(), () => {
  const lab = new Lab();
  let d: DaemonProcess;
  let c: Clients;
  let b1: Host, b2: Host;

  before(async () => {
    ({ b1, b2 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', b2: '198.18.3.1/24' }));
    ({ d, c } = await lab.start(['--log-level', 'info', '--max-rules', String(N)]));
  });
  after(() => lab.destroy());

  const rules = (b: Host) => Array.from({ length: N }, (_, i) => lab.apiRule(`r${i}`, FIRST + i, [backendOf(b)]));

  /** Which backend took the datagrams to `port`: 'old' (b1), 'new' (b2), or what each got. */
  async function whereTo(port: number): Promise<string> {
    const { sent, got } = await lab.send(port, [b1, b2], DATAGRAMS, 10);
    if (got[0] === sent && got[1] === 0) return 'old';
    if (got[1] === sent && got[0] === 0) return 'new';
    return `b1 ${got[0]}, b2 ${got[1]} of ${sent}`;
  }

  it('kill -9 while it writes: the first and the last rule both old or both new, and a restart keeps one whole set', async (t) => {
    await c.rules.applyRules({ rules: rules(b1), validateOnly: false });
    assert.equal(await whereTo(FIRST), 'old');
    assert.equal(await whereTo(LAST), 'old');

    const pins = XdpDatapath.mapPinDir(d.pinRoot);
    const match = openPinnedMap(`${pins}/rule_match`, matchKey, u32);
    let seen: string;
    try {
      const oldSlots = new Set(match.entriesBatch().map(([, slot]) => slot));
      assert.equal(oldSlots.size, N, 'one slot per rule');
      const ifindex = Number(readFileSync(`/sys/class/net/${lab.vm.hostIf}/ifindex`, 'utf8'));
      const first = { ifindex, dport: FIRST, proto: 17, family: AF_INET, daddr: new Uint8Array(4) };
      const pending = c.rules.applyRules({ rules: rules(b2), validateOnly: false }).then(
        () => 'acknowledged',
        (e: Error) => `failed: ${e.message}`,
      );
      // Poll the first rule's match entry (both generations; one key lookup each, yielding between so that
      // the request goes out) until it points at a slot the old set did not use: the change is being written.
      const deadline = Date.now() + 120_000;
      for (;;) {
        const slots = [match.get(first), match.get({ ...first, gen: 1 })];
        if (slots.some((s) => s !== undefined && !oldSlots.has(s))) break;
        assert.ok(Date.now() < deadline, 'the first rule was never written in 120 s');
        await tick();
      }
      d.child.kill('SIGKILL');
      const answer = await pending;
      await d.stop('SIGKILL'); // reaped
      t.diagnostic(`killed while the change was written; the client was told: ${answer}`);

      // The daemon is gone: the attached program forwards from the pinned maps as the kill left them.
      const early = await whereTo(FIRST);
      const late = await whereTo(LAST);
      t.diagnostic(`after kill -9: port ${FIRST} -> ${early}, port ${LAST} -> ${late}`);
      assert.ok(early === 'old' || early === 'new', `port ${FIRST}: ${early}`);
      assert.equal(late, early, `the first and the last rule of one change: both old or both new`);
      seen = early;
    } finally {
      match.close();
    }

    // A restart adopts the pins: one generation left (the other's entries deleted), the set the store holds.
    ({ d, c } = await lab.start(['--log-level', 'info', '--max-rules', String(N)]));
    const after = openPinnedMap(`${XdpDatapath.mapPinDir(d.pinRoot)}/rule_match`, matchKey, u32);
    try {
      const entries = after.entriesBatch();
      assert.equal(entries.length, N, 'one match entry per rule after the restart');
      assert.equal(new Set(entries.map(([k]) => k.gen ?? 0)).size, 1, 'all of one generation');
    } finally {
      after.close();
    }
    const early = await whereTo(FIRST);
    assert.equal(await whereTo(LAST), early, 'after the restart: both old or both new');
    t.diagnostic(`kernel during the crash: ${seen}; after restart: ${early}`);
  });
});
