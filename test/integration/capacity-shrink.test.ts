/**
 * A restart with a `--max-rules` too small for the stored rules never drops a rule from the datapath (docs/architecture.md,
 * a review's finding): it migrated to maps that held one of two rules, logged "restored: 1 of 2 rules ...
 * failed 0", health SERVING, and the other rule went from 20/20 to 0/20 delivered; ListRules then failed
 * INTERNAL. Here two rules forward, the daemon stops, a start with --max-rules 1 must be refused before
 * anything in the kernel changes (the error names what the store holds, the asked value and the smallest that
 * fits), both rules keep forwarding real datagrams, and a start with the old value serves both rules again.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, sleep } from '../helpers/env.js';
import { backendOf, Lab, NOWHERE } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';
const PORTS = [7421, 7422];

describe('a --max-rules too small for the stored rules is refused at start', kernelOnly(), () => {
  const lab = new Lab();
  const { id, listeners } = lab;
  let d: DaemonProcess | undefined;
  let vm: Host, b1: Host, b2: Host;

  before(() => {
    ({ vm, b1, b2 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', b2: '198.18.3.1/24' }));
  });
  after(() => lab.destroy());

  const rule = (name: string, port: number, b: Host) => lab.apiRule(name, port, [backendOf(b)]);

  /** Datagrams delivered to each backend out of 20 sent to each rule's port. */
  async function probe(): Promise<number[]> {
    const got: number[] = [];
    for (const [i, b] of [b1, b2].entries()) {
      const l = await UdpListener.start(b.netns, b.ip!, PORTS[i]);
      listeners.push(l);
      await sendUdp(vm.netns, NOWHERE, PORTS[i], 20, { flows: 20 }).done;
      await sleep(200);
      got.push((await l.stop()).unique);
    }
    return got;
  }

  const matchEntries = () =>
    (JSON.parse(sh('bpftool', ['-j', 'map', 'dump', 'pinned', `${d!.pinRoot}/maps/rule_match`])) as unknown[]).length;

  it('refuses, changes nothing, and both rules keep forwarding', async () => {
    ({ d } = await lab.start([]));
    const c = d.clients();
    await c.rules.createRule({ rule: rule('web', PORTS[0], b1) });
    await c.rules.createRule({ rule: rule('web2', PORTS[1], b2) });
    assert.deepEqual(await probe(), [20, 20], 'both rules forward before');
    assert.equal(await d.stop(), 0);
    assert.equal(matchEntries(), 2);

    await assert.rejects(DaemonProcess.start(id, ['--max-rules', '1']), (e: Error) => {
      assert.match(e.message, /state store \S+state\.db holds 2 rules \(room for 1\)/);
      assert.match(e.message, /--max-rules 1 is too small/);
      assert.match(e.message, /Start with --max-rules 2 or more/);
      assert.doesNotMatch(e.message, /migrat/, 'nothing was migrated');
      return true;
    });
    assert.equal(matchEntries(), 2, 'the pinned match entries are as they were');
    assert.deepEqual(await probe(), [20, 20], 'both rules still forward after the refused start');

    // The way out named by the error: the old --max-rules starts and serves both (reads never INTERNAL).
    ({ d } = await lab.start([]));
    const c2 = d.clients();
    const list = await c2.rules.listRules({ pageSize: 0, pageToken: '' });
    assert.deepEqual(
      list.rules.map((r) => r.name),
      ['web', 'web2'],
    );
    assert.deepEqual(await probe(), [20, 20], 'both rules forward after the start with the old value');
  });
});
