/**
 * The daemon's open-files limit lowered under it (`prlimit --pid ... --nofile=3:`): opening a pin to compare it
 * with what the daemon runs fails (EMFILE). What the pin holds is then not known; before, each pass took it for a
 * missing pin, unlinked every pin and pinned it again, and said "pins removed or replaced under the running daemon:
 * re-pinned 23" (a newcomer counted 59 such lines in 9.4 s): bpffs rewritten, and another tool blamed, for the
 * daemon's own limit. Now a pin it cannot open is left as it is and said as "cannot be verified" (GetStatus), and
 * nothing is re-pinned.
 */
import assert from 'node:assert/strict';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { kernelOnly, sleep, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { openFilesLimit } from '../helpers/nofile.js';
import type { Host } from '../helpers/topology.js';

describe('pins that cannot be opened (EMFILE) are not re-pinned', kernelOnly(), () => {
  const lab = new Lab();
  let b1: Host;
  let limit: ReturnType<typeof openFilesLimit> | undefined;
  before(async () => {
    ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    await lab.start(['--log-level', 'info']);
    limit = openFilesLimit(lab.d!.child.pid!);
    await lab.c.rules.createRule({ rule: lab.rule('web', 7999, [backendOf(b1)]) });
    await lab.untilActive('web', 15_000);
  });
  after(async () => {
    limit?.restore();
    await lab.destroy();
  });

  /** Each pin under maps/ and progs/ with its inode: an unlink and a new pin give another inode. */
  const pins = (): Record<string, number> => {
    const out: Record<string, number> = {};
    for (const dir of ['maps', 'progs']) {
      const d = join(lab.d!.pinRoot, dir);
      for (const f of readdirSync(d)) out[`${dir}/${f}`] = statSync(join(d, f)).ino;
    }
    return out;
  };
  const repinned = () => lab.count(/"msg":"pins removed or replaced under the running daemon/);
  const warnings = async () => (await lab.c.daemon.getStatus({})).datapath?.warnings ?? [];

  it('leaves the pins as they are, says they cannot be verified, and re-pins nothing', async () => {
    const before = pins();
    assert.ok(Object.keys(before).length > 5, `pins found: ${Object.keys(before).join(', ')}`);
    limit!.lower();
    try {
      await until(
        async () => `"cannot be verified" in GetStatus; last: ${JSON.stringify(await warnings())}`,
        async () => (await warnings()).some((w) => /pin cannot be verified: .*EMFILE/.test(w)),
        10_000,
      );
      await sleep(3000); // three passes or more
      assert.equal(repinned(), 0, 'nothing re-pinned under EMFILE');
      assert.deepEqual(pins(), before, 'every pin the same file');
    } finally {
      limit!.restore();
    }
    await until(
      async () => `the warning gone; last: ${JSON.stringify(await warnings())}`,
      async () => !(await warnings()).some((w) => /pin cannot be verified/.test(w)),
      15_000,
    );
    await sleep(1500);
    assert.equal(repinned(), 0, 'nothing re-pinned once the limit is back');
    assert.deepEqual(pins(), before);
    // What the limit kept from being read (the neighbour table, ARP) is read again within a pass or two.
    await until(
      'web ACTIVE again',
      async () => (await lab.status('web')).state === RuleState.RULE_STATE_ACTIVE,
      15_000,
    );
  });
});
