import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  formatIp,
  formatMac,
  formatPeer,
  formatPrefix,
  normalizePeer,
  parseIp,
  parseMac,
  parsePrefix,
} from '../../src/server/net/addr.js';

describe('address parsing', () => {
  it('parses and formats IPv4 and IPv6', () => {
    assert.deepEqual(Array.from(parseIp('192.168.122.10').bytes), [192, 168, 122, 10]);
    assert.equal(formatIp(parseIp('2001:db8::1').bytes), '2001:db8::1');
    assert.equal(formatIp(parseIp('::ffff:1.2.3.4').bytes), '::ffff:102:304');
    assert.equal(formatIp(parseIp('fe80::').bytes), 'fe80::');
    assert.throws(() => parseIp('300.1.1.1'), /not an IP address/);
    assert.throws(() => parseIp(''), /not an IP address/);
  });

  it('parses prefixes strictly', () => {
    assert.equal(formatPrefix(parsePrefix('10.0.0.0/8')), '10.0.0.0/8');
    assert.equal(parsePrefix('192.168.122.10').length, 32);
    assert.equal(parsePrefix('0.0.0.0/0').length, 0);
    assert.throws(() => parsePrefix('10.0.0.0/33'), /between 0 and 32/);
    assert.throws(() => parsePrefix('10.0.0.0/-1'), /between 0 and 32/);
    assert.throws(() => parsePrefix('10.1.2.3/8'), /host bits set \(did you mean 10\.0\.0\.0\/8\?\)/);
    assert.equal(parsePrefix('2001:db8::/32').length, 32);
  });

  it('parses MAC addresses', () => {
    assert.equal(formatMac(parseMac('02:42:AC:11:00:02')), '02:42:ac:11:00:02');
    assert.equal(formatMac(parseMac('02-42-ac-11-00-02')), '02:42:ac:11:00:02');
    assert.throws(() => parseMac('02:42:ac:11:00'), /not a MAC address/);
    assert.throws(() => parseMac('02:42:ac:11:00:02:03'), /not a MAC address/);
  });
});

describe('peers in log lines (RFC 5952 section 6)', () => {
  it('writes IPv4 as addr:port and IPv6 in brackets, grpc-js peers included', () => {
    assert.equal(formatPeer('127.0.0.1', 40312), '127.0.0.1:40312');
    assert.equal(formatPeer('::1', 40312), '[::1]:40312');
    assert.equal(formatPeer('::ffff:127.0.0.1', 5), '[::ffff:127.0.0.1]:5');
    assert.equal(formatPeer('2001:db8::1'), '2001:db8::1');
    assert.equal(normalizePeer('::1:40312'), '[::1]:40312');
    assert.equal(normalizePeer('::ffff:127.0.0.1:40312'), '[::ffff:127.0.0.1]:40312');
    assert.equal(normalizePeer('2001:db8::1:80'), '[2001:db8::1]:80');
    assert.equal(normalizePeer('127.0.0.1:40312'), '127.0.0.1:40312');
    assert.equal(normalizePeer('[::1]:40312'), '[::1]:40312');
    assert.equal(normalizePeer('unknown'), 'unknown');
    assert.equal(normalizePeer('unix:/run/xdpctl/xdpctl.sock'), 'unix:/run/xdpctl/xdpctl.sock');
  });
});
