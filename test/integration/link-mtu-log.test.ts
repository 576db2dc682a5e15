/**
 * A cross-connect's MTU warning (frames larger than the other end's MTU, which the kernel drops on redirect) comes
 * and goes with the MTUs the operator sets, in the link's status and in one log line each way, saying what was
 * observed: "link A -> B: B has MTU 1280, A 1500 ..." when it starts, and "link A -> B: no MTU warning any more: B
 * has MTU 1500 now, matching A's 1500" when it ends (before: "link: no MTU warning any more", naming neither
 * MTU). A direction that stops forwarding (its egress down) while warned is not said to have lost its MTU problem
 * (before: "no MTU warning any more" while B still had MTU 1280); up again, the warning is said again.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { kernelOnly, sh, sleep, until } from '../helpers/env.js';
import { esc, Lab } from '../helpers/lab.js';
import type { Host } from '../helpers/topology.js';

describe('a link MTU warning comes and goes with the MTUs, one line each way saying them', kernelOnly(), () => {
  const lab = new Lab();
  let h1: Host, h2: Host;
  before(async () => {
    ({ h1, h2 } = lab.addHosts({ h1: '198.18.40.1/24', h2: '198.18.40.2/24' }));
    await lab.start(['--log-level', 'info']);
    await lab.c.links.connect({
      link: { a: h1.hostIf, b: h2.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH, status: undefined },
    });
    await until('h1 reaches h2', () => lab.topo.ping('h1', h2.ip!, 1), 10_000);
  });
  after(() => lab.destroy());

  const mtuWarnings = async () => (await lab.linkStatus(h1.hostIf)).warnings.filter((w) => /MTU/.test(w));
  const mtu = (dev: string, n: number) => sh('ip', ['link', 'set', dev, 'mtu', String(n)]);
  const started = () =>
    lab.count(
      new RegExp(`"msg":"link ${esc(`${h1.hostIf} -> ${h2.hostIf}: ${h2.hostIf} has MTU 1280, ${h1.hostIf} 1500`)}`),
    );
  /** Lines saying a link's MTU warning ended (any wording: the old one named no link). */
  const ended = () => lab.count(/"msg":"link.*no MTU warning any more/);

  it('says when it starts and when it ends, naming the MTUs observed', async () => {
    assert.deepEqual(await mtuWarnings(), []);
    mtu(h2.hostIf, 1280);
    try {
      await until('the warning', async () => (await mtuWarnings()).length === 1);
      assert.match((await mtuWarnings())[0], new RegExp(`${esc(h2.hostIf)} has MTU 1280, ${esc(h1.hostIf)} 1500`));
      assert.equal(lab.topo.pingDf('h1', h2.ip!, 1400), false, 'what it says: a 1428-byte packet is dropped');
      await until('said once', () => started() === 1);
    } finally {
      mtu(h2.hostIf, 1500);
    }
    await until('the warning gone', async () => (await mtuWarnings()).length === 0);
    await until('its end said', () => ended() === 1);
    const line = lab.d!.output.split('\n').find((l) => l.includes('no MTU warning any more'))!;
    assert.match(
      JSON.parse(line).msg,
      new RegExp(
        `^link ${esc(`${h1.hostIf} -> ${h2.hostIf}: no MTU warning any more: ${h2.hostIf} has MTU 1500 now`)}` +
          `.*, matching ${esc(h1.hostIf)}'s 1500$`,
      ),
    );
    assert.equal(lab.topo.pingDf('h1', h2.ip!, 1400), true, 'and a 1428-byte packet passes');
    await sleep(1500);
    assert.deepEqual([started(), ended()], [1, 1], 'each once');
  });

  it('a direction that stops forwarding is not said to have lost its MTU problem; up again, it is said again', async () => {
    const [s0, e0] = [started(), ended()];
    mtu(h2.hostIf, 1280);
    try {
      await until('the warning again', () => started() === s0 + 1);
      sh('ip', ['link', 'set', h2.hostIf, 'down']);
      await until(
        'not forwarding said',
        () => lab.count(new RegExp(`"msg":"link ${esc(`${h1.hostIf} -> ${h2.hostIf}`)} is not forwarding`)) > 0,
      );
      await sleep(1500);
      assert.equal(ended(), e0, 'no "no MTU warning any more" while the MTU is still 1280');
      sh('ip', ['link', 'set', h2.hostIf, 'up']);
      await until('forwarding with the warning: said again', () => started() === s0 + 2, 10_000);
    } finally {
      sh('ip', ['link', 'set', h2.hostIf, 'up']);
      mtu(h2.hostIf, 1500);
    }
    await until('its end said', () => ended() === e0 + 1);
  });

  it("a warning about the egress's veth peer ends naming the peer's MTU, not the link end's", async () => {
    const e0 = ended();
    const peerMtu = (n: number) => sh('ip', ['-n', h2.netns, 'link', 'set', 'eth0', 'mtu', String(n)]);
    const peer = `${h2.hostIf}'s veth peer eth0 in netns ${h2.netns}`;
    peerMtu(1280);
    try {
      await until('the warning', async () => (await mtuWarnings()).length === 1);
      assert.match((await mtuWarnings())[0], new RegExp(`${esc(peer)} has MTU 1280, ${esc(h1.hostIf)} 1500`));
    } finally {
      peerMtu(1500);
    }
    await until('the warning gone', async () => (await mtuWarnings()).length === 0);
    await until('its end said', () => ended() === e0 + 1);
    const line = lab
      .d!.output.split('\n')
      .filter((l) => l.includes('no MTU warning any more'))
      .at(-1)!;
    // Before: "... no MTU warning any more: H2 has MTU 1500 now (its veth peer eth0 ... 1500), matching ..." (H2's MTU
    // had not changed; its peer's had).
    assert.equal(
      JSON.parse(line).msg,
      `link ${h1.hostIf} -> ${h2.hostIf}: no MTU warning any more: ${peer} has MTU 1500 now (${h2.hostIf} itself ` +
        `1500), matching ${h1.hostIf}'s 1500`,
    );
  });
});
