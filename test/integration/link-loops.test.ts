/**
 * A link set that would forward frames in a loop forever is refused before anything is written: veth
 * pairs whose both ends are in the daemon's namespace, linked so that a frame sent out of one end comes
 * back in on the other and is forwarded again (a review built one with ApplyLinks: 11.7 million
 * redirects in 10 s from one frame). Real veths and a real daemon; no frame is sent.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sh, shQuiet } from '../helpers/env.js';
import { deleteLinks, framesFromOneBroadcast, makeBridgeLayout } from '../helpers/loop-layouts.js';

describe('forwarding loops are refused', kernelOnly(), () => {
  const id = runId();
  // Two veth pairs with both ends here: p0 <-> p1 and q0 <-> q1.
  const [p0, p1, q0, q1] = ['p0', 'p1', 'q0', 'q1'].map((n) => `xl${id}${n}`);
  let d: DaemonProcess;
  let c: Clients;

  before(async () => {
    sh('ip', ['link', 'add', p0, 'type', 'veth', 'peer', 'name', p1]);
    sh('ip', ['link', 'add', q0, 'type', 'veth', 'peer', 'name', q1]);
    for (const n of [p0, p1, q0, q1]) sh('ip', ['link', 'set', n, 'up']);
    d = await DaemonProcess.start(id, ['--xdp-mode', 'native']);
    c = d.clients();
  });
  after(async () => {
    await d?.destroy();
    shQuiet('ip', ['link', 'del', p0]);
    shQuiet('ip', ['link', 'del', q0]);
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  const refused = (field: string, path: RegExp) => (e: { code: Status; details: string }) => {
    assert.equal(e.code, Status.FAILED_PRECONDITION, e.details);
    assert.match(
      e.details,
      new RegExp(`^${field.replace(/[[\]]/g, '\\$&')}: these links would forward frames in a loop forever: `),
    );
    assert.match(e.details, path);
    return true;
  };
  const nothingApplied = async () => {
    assert.deepEqual((await c.links.listLinks({})).links, [], 'no link stored');
    const attached = (n: string) => JSON.parse(sh('ip', ['-j', 'link', 'show', n]))[0].xdp;
    assert.deepEqual(
      [p0, p1, q0, q1].map(attached),
      [undefined, undefined, undefined, undefined],
      'no program attached',
    );
  };

  it('Connect of the two ends of one veth pair', async () => {
    await assert.rejects(
      c.links.connect({ link: { a: p0, b: p1, direction: LinkDirection.LINK_DIRECTION_BOTH } }),
      refused('link', new RegExp(`${p0} -> ${p1} \\(whose veth peer is ${p0}\\): back to ${p0}`)),
    );
    await nothingApplied();
  });

  it('ApplyLinks of one-way links that close a circle through two veth pairs names the link that closes it', async () => {
    const links = [
      { a: p1, b: q0, direction: LinkDirection.LINK_DIRECTION_A_TO_B },
      { a: q1, b: p0, direction: LinkDirection.LINK_DIRECTION_A_TO_B },
    ];
    await assert.rejects(
      c.links.applyLinks({ links }),
      refused('links[1]', new RegExp(`${p1} -> ${q0}.*, then ${q1} -> ${p0}`)),
    );
    await assert.rejects(c.links.applyLinks({ links, validateOnly: true }), refused('links[1]', /back to/));
    await nothingApplied();
    // Either one alone ends (its frames leave through a veth whose other end does not forward).
    await c.links.applyLinks({ links: [links[0]] });
    assert.equal((await c.links.listLinks({})).links.length, 1);
    // Then Connect of the second closes the circle: refused, the first one stays.
    await assert.rejects(c.links.connect({ link: links[1] }), refused('link', /back to/));
    assert.deepEqual(
      (await c.links.listLinks({})).links.map((l) => [l.a, l.b]),
      [[p1, q0]],
    );
    await c.links.applyLinks({ links: [] });
  });

  it('Connect of two interfaces whose veth peers are ports of one bridge (it forwards every frame back): refused', async () => {
    // Before: accepted, and one broadcast frame went round sa -> sb -> sbp -> bridge -> sap -> sa ... (and the other
    // way) until the bridge was taken down: a review counted 14 million frames a direction in 40 s.
    const [sa, sap, sb, sbp, br] = ['sa', 'sap', 'sb', 'sbp', 'br'].map((n) => `xl${id}${n}`);
    const made = makeBridgeLayout({
      bridge: br,
      pairs: [
        [sa, sap],
        [sb, sbp],
      ],
      ports: [sap, sbp],
    });
    try {
      const link = { a: sa, b: sb, direction: LinkDirection.LINK_DIRECTION_BOTH };
      let err: { code: Status; details: string } | undefined;
      try {
        await c.links.connect({ link });
      } catch (e) {
        err = e as typeof err;
      }
      if (!err) {
        // The old verdict, bounded: one broadcast frame into sa, what sa receives in a second, then the bridge down.
        const n = await framesFromOneBroadcast(sa, sap, '02:5e:00:49:00:09', '198.18.49.9', 1000);
        deleteLinks(made);
        await c.links.disconnect({ a: sa, b: sb });
        assert.fail(`connected; one broadcast frame into ${sa} made it receive ${n} frames in 1 s`);
      }
      refused(
        'link',
        new RegExp(
          `${sa} -> ${sb} \\(whose veth peer is ${sbp}, a port of bridge ${br}, which forwards frames out of its ` +
            `port ${sap}, whose veth peer is ${sa}\\): back to ${sa}`,
        ),
      )(err);
      await assert.rejects(
        c.links.applyLinks({
          links: [{ ...link, direction: LinkDirection.LINK_DIRECTION_A_TO_B }],
          validateOnly: true,
        }),
        refused('links[0]', /back to/),
      );
      assert.deepEqual((await c.links.listLinks({})).links, [], 'no link stored');
    } finally {
      deleteLinks(made);
    }
  });

  it("Connect of a link whose egress's peer and a macvlan on the ingress's peer are ports of one bridge: refused", async () => {
    // Before: accepted, and one broadcast frame went round ma -> mb -> mbp -> bridge -> mv (a macvlan: out of its
    // lower mlo) -> ma ... (the walk followed a bridge's forward only to ports that are veths).
    const [ma, mlo, mb, mbp, mv, br] = ['ma', 'mlo', 'mb', 'mbp', 'mv', 'mbr'].map((n) => `xl${id}${n}`);
    sh('ip', ['link', 'add', br, 'type', 'bridge']);
    try {
      sh('ip', ['link', 'add', ma, 'type', 'veth', 'peer', 'name', mlo]);
      sh('ip', ['link', 'add', mb, 'type', 'veth', 'peer', 'name', mbp]);
      sh('ip', ['link', 'add', mv, 'link', mlo, 'type', 'macvlan', 'mode', 'bridge']);
      sh('ip', ['link', 'set', mbp, 'master', br]);
      sh('ip', ['link', 'set', mv, 'master', br]);
      for (const n of [br, ma, mlo, mb, mbp, mv]) sh('ip', ['link', 'set', n, 'up']);
      const link = { a: ma, b: mb, direction: LinkDirection.LINK_DIRECTION_A_TO_B };
      let err: { code: Status; details: string } | undefined;
      try {
        await c.links.connect({ link });
      } catch (e) {
        err = e as typeof err;
      }
      if (!err) {
        // The old verdict, bounded: one broadcast frame into ma, what ma receives in a second, then the bridge down.
        const n = await framesFromOneBroadcast(ma, mlo, '02:5e:00:4a:00:09', '198.18.49.9', 1000);
        shQuiet('ip', ['link', 'del', br]);
        await c.links.disconnect({ a: ma, b: mb });
        assert.fail(`connected; one broadcast frame into ${ma} made it receive ${n} frames in 1 s`);
      }
      refused(
        'link',
        new RegExp(
          `${ma} -> ${mb} \\(whose veth peer is ${mbp}, a port of bridge ${br}, which forwards frames out of its ` +
            `port ${mv}, a macvlan \\(mode bridge\\) that sends them out of its lower device ${mlo}, whose veth ` +
            `peer is ${ma}\\): back to ${ma}`,
        ),
      )(err);
      assert.deepEqual((await c.links.listLinks({})).links, [], 'no link stored');
    } finally {
      shQuiet('ip', ['link', 'del', br]);
      shQuiet('ip', ['link', 'del', ma]);
      shQuiet('ip', ['link', 'del', mb]);
    }
  });
});

describe(
  'forwarding loops through macvlans are refused (generic mode: a macvlan has no native XDP)',
  kernelOnly(),
  () => {
    const id = runId();
    const [lo, lop, ma, mb] = ['lo', 'lop', 'ma', 'mb'].map((n) => `xg${id}${n}`);
    let d: DaemonProcess;
    let c: Clients;

    before(async () => {
      sh('ip', ['link', 'add', lo, 'type', 'veth', 'peer', 'name', lop]);
      sh('ip', ['link', 'add', ma, 'link', lo, 'type', 'macvlan', 'mode', 'bridge']);
      sh('ip', ['link', 'add', mb, 'link', lo, 'type', 'macvlan', 'mode', 'bridge']);
      for (const n of [lo, lop, ma, mb]) sh('ip', ['link', 'set', n, 'up']);
      d = await DaemonProcess.start(id, ['--xdp-mode', 'generic']);
      c = d.clients();
    });
    after(async () => {
      shQuiet('ip', ['link', 'del', lo]); // first (its macvlans with it): a loop left would starve the machine
      await d?.destroy();
      XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
      rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
      removeIproute2BpffsDirs();
    });

    it('Connect of one bridge-mode macvlan to another on the same lower (it hands every frame back): refused', async () => {
      // Before: accepted, and one broadcast frame went round mb -> ma -> (a receive on lo) -> mb ... for ever.
      const link = { a: mb, b: ma, direction: LinkDirection.LINK_DIRECTION_A_TO_B };
      let err: { code: Status; details: string } | undefined;
      try {
        await c.links.connect({ link });
      } catch (e) {
        err = e as typeof err;
      }
      if (!err) {
        const n = await framesFromOneBroadcast(mb, lop, '02:5e:00:4b:00:09', '198.18.49.9', 1000);
        shQuiet('ip', ['link', 'del', lo]);
        await c.links.disconnect({ a: mb, b: ma });
        assert.fail(`connected; one broadcast frame into ${mb} made it receive ${n} frames in 1 s`);
      }
      assert.equal(err.code, Status.FAILED_PRECONDITION, err.details);
      assert.match(
        err.details,
        new RegExp(
          `^link: these links would forward frames in a loop forever: ${mb} -> ${ma} \\(which is a macvlan \\(mode ` +
            `bridge\\) that hands a frame to a macvlan in bridge mode on its lower device ${lo} as a receive on ${lo}, ` +
            `itself the lower device of macvlan ${mb} \\(mode bridge\\)\\): back to ${mb}`,
        ),
      );
      assert.deepEqual((await c.links.listLinks({})).links, [], 'no link stored');
    });
  },
);
