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
});
