import assert from 'node:assert/strict';
import { isIPv4 } from 'node:net';
import { describe, it } from 'node:test';

import fc from 'fast-check';

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

  it('the fast paths of parseIp, parseMac and formatMac agree with the reference definitions', () => {
    // References: node:net isIPv4 with the dotted parts as bytes; the six-hex-pairs regular expression.
    const refIp4 = (t: string) => (isIPv4(t) ? t.split('.').map(Number) : undefined);
    const MAC =
      /^([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})$/;
    const refMac = (t: string) =>
      MAC.exec(t)
        ?.slice(1, 7)
        .map((h) => parseInt(h, 16));
    const ip4ish = fc
      .array(
        fc.oneof(fc.nat(300).map(String), fc.constantFrom('', '0', '00', '01', '255', '256', '1a', ' 1', '-1', '1e2')),
        {
          minLength: 3,
          maxLength: 5,
        },
      )
      .map((parts) => parts.join('.'));
    const macish = fc
      .array(
        fc.oneof(
          fc.nat(255).map((b) => b.toString(16).padStart(2, '0')),
          fc.constantFrom('AB', 'aG', 'g0', '1', '123', ' a'),
        ),
        {
          minLength: 5,
          maxLength: 7,
        },
      )
      .chain((parts) => fc.constantFrom(':', '-', '.').map((sep) => parts.join(sep)));
    const tryIp = (t: string) => {
      try {
        const p = parseIp(t);
        return p.family === 4 ? Array.from(p.bytes) : 'v6';
      } catch {
        return undefined;
      }
    };
    const tryMac = (t: string) => {
      try {
        return Array.from(parseMac(t));
      } catch {
        return undefined;
      }
    };
    fc.assert(
      fc.property(fc.oneof(ip4ish, fc.string({ maxLength: 16 })), (t) => {
        const got = tryIp(t);
        if (got !== 'v6') assert.deepEqual(got, refIp4(t), t);
      }),
      { numRuns: 5000 },
    );
    fc.assert(
      fc.property(fc.oneof(macish, fc.string({ maxLength: 18 })), (t) => assert.deepEqual(tryMac(t), refMac(t), t)),
      { numRuns: 5000 },
    );
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 6, maxLength: 6 }), (b) =>
        assert.equal(formatMac(b), Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(':')),
      ),
    );
  });
});
