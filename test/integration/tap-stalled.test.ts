/**
 * A backend behind a tap whose reader stops reading (a VM's qemu stopped, a userspace stack stuck): the kernel
 * queues what is redirected to the tap for that process until its queue is full, then drops every further frame
 * and counts it in the tap's tx_dropped, while the tap stays up with carrier. Before: the rule stayed ACTIVE,
 * the backend in its table with an empty message, every datagram past the queue lost unseen. Now each pass
 * reads the tx_dropped of the taps rules name: while it rises, the backend's status says how many frames were
 * dropped and why, the rule is DEGRADED and BackendsReceiving False (FramesDropped); once the reader reads again
 * and nothing is dropped for TAP_DROP_WINDOW_MS, it is as before. Real tap (a Python reader holding
 * /dev/net/tun, IFF_TAP | IFF_NO_PI, answering ARP for the backend), real datagrams through our XDP program.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients } from '../helpers/daemon.js';
import { kernelOnly, sh, shQuiet, until } from '../helpers/env.js';
import { cond, Lab, NOWHERE } from '../helpers/lab.js';
import { sendUdp } from '../helpers/udp.js';

const READER = new URL('../helpers/tap-reader.py', import.meta.url).pathname;

describe('a tap backend whose reader stops reading', kernelOnly(), () => {
  const lab = new Lab();
  const { id, status, rule } = lab;
  const n = parseInt(id.slice(0, 2), 16);
  const tap = `x${id}tap`;
  const ip = `10.${n}.71.2`;
  const mac = `02:71:${id.slice(0, 2)}:${id.slice(2, 4)}:00:02`;
  let c: Clients;
  let reader: ChildProcess | undefined;
  const txDropped = () => BigInt(readFileSync(`/sys/class/net/${tap}/statistics/tx_dropped`, 'utf8').trim());

  before(async () => {
    lab.addHosts({ vm: '198.18.1.1/24' });
    reader = spawn('python3', [READER, tap, ip, mac], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      reader!.stdout!.on('data', (d) => String(d).includes('READY') && resolve());
      reader!.on('exit', (code) => reject(new Error(`tap-reader exited ${code}`)));
    });
    lab.onDestroy(() => {
      if (reader && reader.exitCode === null && reader.signalCode === null) {
        reader.kill('SIGCONT');
        reader.kill('SIGKILL');
      }
      shQuiet('ip', ['link', 'del', tap]);
    });
    sh('ip', ['link', 'set', tap, 'up']);
    sh('ip', ['addr', 'add', `10.${n}.71.1/24`, 'dev', tap]);
    ({ c } = await lab.start(['--log-level', 'info']));
  });
  after(() => lab.destroy());

  it('says the tap drops the frames while its reader is stopped, and is ACTIVE again once it reads', async (t) => {
    await c.rules.createRule({ rule: rule('tapped', 7991, [{ ip, mac, interface: tap }]) });
    let s = await status('tapped');
    await until(
      () => `ACTIVE first: ${s.state} ${s.message} ${s.backendStatus[0]?.message}`,
      async () => (s = await status('tapped')).state === RuleState.RULE_STATE_ACTIVE,
      20_000,
    );
    // Taken while the reader reads: nothing dropped, nothing said.
    await sendUdp(lab.vm.netns, NOWHERE, 7991, 300, { flows: 4, perTick: 30 }).done;
    assert.equal(txDropped(), 0n, 'nothing dropped while the reader reads');
    assert.equal((await status('tapped')).state, RuleState.RULE_STATE_ACTIVE);

    reader!.kill('SIGSTOP');
    const t0 = Date.now();
    try {
      // More than the tap's queue holds: the rest is dropped by the kernel.
      const r = await sendUdp(lab.vm.netns, NOWHERE, 7991, 3000, { flows: 4, perTick: 100 }).done;
      const dropped = txDropped();
      t.diagnostic(`reader stopped: ${r.sent} sent, tx_dropped of ${tap} ${dropped}`);
      assert.ok(dropped > 0n, 'the kernel dropped frames for the stopped reader');
      await until(
        async () => `the status says it: ${JSON.stringify(await status('tapped'))}`,
        async () => (s = await status('tapped')).state === RuleState.RULE_STATE_DEGRADED,
        10_000,
      );
      t.diagnostic(`DEGRADED ${Date.now() - t0} ms after the reader stopped: ${s.backendStatus[0].message}`);
      const b = s.backendStatus[0];
      assert.match(
        b.message,
        new RegExp(
          `^tap ${tap}: \\d+ frames dropped in the last [\\d.]+ s \\(its tx_dropped counter\\): its reader is not reading`,
        ),
      );
      const counted = BigInt(/: (\d+) frames dropped/.exec(b.message)![1]);
      assert.ok(counted > 0n && counted <= txDropped(), `${counted} of tx_dropped ${txDropped()}`);
      assert.equal(b.active, true, 'kept in its table: the tap is up, a reader that reads again takes them');
      assert.match(s.message, new RegExp(`tap ${tap} drops the frames redirected to it`));
      const br = cond(s, 'BackendsReceiving');
      assert.deepEqual([br.status, br.reason], [ConditionStatus.CONDITION_STATUS_FALSE, 'FramesDropped']);
      assert.equal(lab.count(new RegExp(`"msg":"backend egress tap ${tap}: \\d+ frames? dropped`)), 1, 'logged once');
    } finally {
      reader!.kill('SIGCONT');
    }
    const t1 = Date.now();
    await until(
      async () => `ACTIVE again: ${JSON.stringify(await status('tapped'))}`,
      async () => (s = await status('tapped')).state === RuleState.RULE_STATE_ACTIVE,
      20_000,
    );
    t.diagnostic(`ACTIVE again ${Date.now() - t1} ms after the reader went on`);
    assert.equal(s.backendStatus[0].message, '');
    assert.equal(cond(s, 'BackendsReceiving').status, ConditionStatus.CONDITION_STATUS_TRUE);
    assert.equal(lab.count(new RegExp(`"msg":"backend egress tap ${tap}: no frame dropped`)), 1);
    await c.rules.deleteRule({ name: 'tapped', expectedGeneration: 0n });
  });
});
