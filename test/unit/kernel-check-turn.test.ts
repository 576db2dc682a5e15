/**
 * A reconciler pass gives its turn to a waiting change only until it has written something (controller.ts
 * resyncPass): a pass that gives its turn logs nothing of what it did. The kernel comparison (kernel-check.ts)
 * rewrites what another tool changed and only then says it: a turn given between its first write and its line
 * would leave an entry rewritten that no line, counter or fight ever names (the next comparison finds nothing
 * differing). Over modelled maps: a rule entry's flags changed as bpftool would, the rewrite made slow (20 ms,
 * more than a pass's longest slice) and a change always waiting.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Controller } from '../../src/server/core/controller.js';
import type { RuleSpec } from '../../src/server/core/model.js';
import { captureLog, type LogLine } from '../helpers/log-capture.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';
import { confirmPeers, twoBackends, udpSpec } from '../helpers/rule-spec.js';

const rule = (name: string, port: number, extra: Partial<RuleSpec> = {}): RuleSpec =>
  udpSpec(name, port, twoBackends(port), extra);

/**
 * The rule entry's rewrite, while `slow`, queues a change (`during`) and busies the CPU for 20 ms (a pass's slice is
 * at most 16 ms): the pass's next chance to give its turn comes after a write, with a change waiting.
 */
class SlowRepairs extends ModelDataplane {
  slow = false;
  cfgWrites = 0;
  during?: () => void;
  override writeRuleCfg(slot: number, flags: number, statsId: number, srcFilter: boolean): void {
    if (this.slow) {
      this.cfgWrites++;
      this.during?.();
      const until = performance.now() + 20;
      while (performance.now() < until);
    }
    super.writeRuleCfg(slot, flags, statsId, srcFilter);
  }
}

describe('kernel comparison: what it rewrote is said, even with changes waiting', () => {
  it('a pass that rewrote an entry does not give its turn before it logs the line', async () => {
    const dp = new SlowRepairs();
    confirmPeers(dp);
    const lines: LogLine[] = [];
    const c = new Controller(dp, { mode: 'native', fixVethPeers: true, log: captureLog(lines) });
    await c.applyRules([rule('a', 5000), rule('z', 5002, { udpChecksum: 'zero' })], false);
    const slot = c.storedState().rules.find((r) => r.name === 'z')!.kernel!.slot;
    // Another tool clears the zero-checksum flag of z's rule entry.
    const m = dp.model.maps;
    m.ruleCfg.put(slot, { ...m.ruleCfg.get(slot)!, flags: m.ruleCfg.get(slot)!.flags & ~0x4 });
    dp.slow = true;
    let change: Promise<unknown> | undefined;
    dp.during = () => (change ??= c.updateRule(rule('a', 41_000), 0));
    await c.resync();
    assert.ok(change, 'premise: a change was queued during the rewrite');
    await change;
    assert.equal(c.getRule('a').port, 41_000);
    assert.equal(dp.cfgWrites, 1, 'premise: the pass rewrote the rule entry once');
    assert.equal(m.ruleCfg.get(slot)!.flags & 0x4, 0x4, 'premise: rewritten');
    const said = lines.filter((l) => l.msg === 'kernel entries differed from the desired state: rewritten');
    assert.deepEqual(
      said.flatMap((l) => (l.fields.repaired as string[] | undefined) ?? []),
      [`rule z: rule entry (map rule_cfg, rule slot ${slot}): flags: kernel 0x1, desired 0x5`],
      'the rewrite is said',
    );
  });

  it('rule_gen flipped by another tool is put back at the next pass and said; the generation made active is kept', async () => {
    const dp = new ModelDataplane();
    dp.vethPeers.set('b0', { name: 'b0p', mac: '02:00:00:00:01:01', takesOthers: false });
    dp.vethPeers.set('b1', { name: 'b1p', mac: '02:00:00:00:01:02', takesOthers: false });
    const lines: LogLine[] = [];
    const c = new Controller(dp, { mode: 'native', fixVethPeers: true, log: captureLog(lines) });
    await c.applyRules([rule('a', 5000), rule('z', 5002)], false);
    const m = dp.model.maps;
    assert.equal(m.ruleGen.get(0), 1, 'premise: the many-rule change switched to generation 1');
    const entries = () =>
      [...m.ruleMatch.entries()].map(([k]) => `${(k as { gen?: number }).gen ?? 0}:${k.dport}`).sort();
    const before = entries();
    assert.deepEqual(before, ['1:5000', '1:5002']);
    for (let pass = 0; pass < 2; pass++) {
      // Another tool (bpftool map update ... rule_gen key 0 0 0 0 value 0 0 0 0) switches to the empty generation.
      m.ruleGen.put(0, 0);
      lines.length = 0;
      await c.resync();
      assert.equal(m.ruleGen.get(0), 1, `pass ${pass}: rule_gen written back`);
      assert.deepEqual(entries(), before, `pass ${pass}: the generation this daemon made active is kept whole`);
      const said = lines.flatMap((l) => (l.fields.repaired as string[] | undefined) ?? []);
      assert.ok(
        said.includes('rule_gen (the active rule generation): kernel 0, desired 1: rewritten'),
        `pass ${pass}: said: ${JSON.stringify(lines.map((l) => l.msg))}`,
      );
    }
  });
});
