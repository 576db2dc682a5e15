/**
 * A start with --xdp-mode auto over a program an earlier start attached in generic mode keeps it (a switch
 * drops what arrives while it happens) and says so on the interface: its status, its ProgramAttached
 * condition. Before, auto kept it silently. --xdp-mode native still switches where native forwards
 * (core/keep-mode.ts; test/integration/mode-restart.test.ts proves both against the kernel).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Controller } from '../../src/server/core/controller.js';
import type { XdpModeName } from '../../src/server/core/dataplane.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';

async function generic() {
  const dp = new ModelDataplane();
  const c = new Controller(dp, { mode: 'generic', fixVethPeers: false });
  await c.connect({ a: 'in0', b: 'b0', direction: 'both' });
  assert.equal(dp.model.attached.get('in0'), 'generic');
  return { dp, stored: c.storedState() };
}

async function restart(mode: XdpModeName) {
  const { dp, stored } = await generic();
  const next = ModelDataplane.adopt(dp);
  const c = new Controller(next, { mode, fixVethPeers: false });
  await c.restore(stored);
  return { dp: next, c };
}

describe('a restart with --xdp-mode auto over a generic attachment', () => {
  it('keeps generic mode and says so, with why and how to switch', async () => {
    const { dp, c } = await restart('auto');
    assert.equal(dp.model.attached.get('in0'), 'generic', 'kept');
    const i = c.listInterfaces().find((x) => x.name === 'in0')!;
    assert.deepEqual([i.requestedMode, i.effectiveMode], ['auto', 'generic']);
    const why = i.warnings.find((w) => /keeps running in generic mode/.test(w));
    assert.match(
      why ?? i.warnings.join(' | '),
      /^our program keeps running in generic mode, the mode an earlier start attached it in: --xdp-mode auto does not switch a program that forwards .*; a start with --xdp-mode native switches it$/,
    );
    const pa = i.conditions.find((x) => x.type === 'ProgramAttached')!;
    assert.deepEqual([pa.status, pa.reason], ['True', 'Attached']);
    assert.equal(pa.message, `our XDP program runs in generic mode: ${why}`);
  });

  it('--xdp-mode native switches it where native forwards (as before)', async () => {
    const { dp, c } = await restart('native');
    assert.equal(dp.model.attached.get('in0'), 'native');
    const i = c.listInterfaces().find((x) => x.name === 'in0')!;
    assert.equal(i.effectiveMode, 'native');
    assert.deepEqual(
      i.warnings.filter((w) => /generic/.test(w)),
      [],
    );
  });
});
