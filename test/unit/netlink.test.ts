/**
 * netlink.ts requests through one kept socket per protocol: each answer is
 * the kernel's to that request (its own copy, not overwritten by the next),
 * a missing device is undefined, and requests open no descriptor each;
 * the same for interface names and indexes (ioctls on the kept socket).
 * RTM_GETLINK about the loopback device needs no privilege.
 */
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { describe, it } from 'node:test';

import { ifindexOf, nameOf } from '../../src/server/dataplane/netdev.js';
import { NETLINK_ROUTE, nlRequest } from '../../src/server/dataplane/netlink.js';

const RTM_GETLINK = 18;
const getLink = (ifindex: number) => {
  const ifinfo = Buffer.alloc(16); // struct ifinfomsg
  ifinfo.writeInt32LE(ifindex, 4);
  return nlRequest(NETLINK_ROUTE, RTM_GETLINK, ifinfo, Buffer.alloc(0), `look up ifindex ${ifindex}`);
};
const fds = () => readdirSync('/proc/self/fd').length;

describe('netlink requests on a kept socket', () => {
  it("answers each request with the kernel's reply, kept intact by the requests after it", () => {
    const lo = getLink(1);
    assert.ok(lo && lo.length > 16, 'RTM_NEWLINK about lo');
    assert.equal(lo.readInt32LE(4), 1, 'ifinfomsg.ifi_index of the reply is 1');
    const copy = Buffer.from(lo);
    assert.equal(getLink(0x7ffffff0), undefined, 'no such device: undefined');
    getLink(1);
    assert.deepEqual(lo, copy, 'the first answer is unchanged');
  });

  it('opens no descriptor per request', () => {
    getLink(1);
    const before = fds();
    for (let i = 0; i < 200; i++) getLink(i % 2 ? 1 : 0x7ffffff0);
    assert.equal(fds(), before);
  });

  it('interface names and indexes through the kept ioctl socket, as if_nametoindex(3) and if_indextoname(3)', () => {
    assert.equal(ifindexOf('lo'), 1);
    assert.equal(nameOf(1), 'lo');
    assert.equal(nameOf(0x7ffffff0), undefined);
    assert.equal(nameOf(0), undefined);
    assert.throws(() => ifindexOf('xdpctl-none0'), /no such interface/);
    const before = fds();
    for (let i = 0; i < 100; i++) assert.equal(nameOf(ifindexOf('lo')), 'lo');
    assert.equal(fds(), before);
  });
});
