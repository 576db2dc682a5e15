/**
 * Interface names that are not UTF-8 (core/non-utf8.ts, shared/visible.ts nameText): the name shown with its other
 * bytes as \xNN (never U+FFFD), and the forms of it a client may give matched to the device, nothing else.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { nonUtf8Meant, nonUtf8Text } from '../../src/server/core/non-utf8.js';
import { nameText } from '../../src/shared/visible.js';

describe('names that are not UTF-8', () => {
  it('nameText: UTF-8 as it is, other bytes as \\xNN', () => {
    assert.equal(nameText(Buffer.from('eth0')), 'eth0');
    assert.equal(nameText(Buffer.from('vé\u001b[2J')), 'vé\u001b[2J', 'controls are left to visible()');
    assert.equal(nameText(Buffer.from([0x78, 0xff, 0x31])), 'x\\xff1');
    assert.equal(nameText(Buffer.from([0x78, 0xc3, 0x31])), 'x\\xc31', 'a lead byte without its continuation');
    assert.equal(nameText(Buffer.from([0xc0, 0xaf])), '\\xc0\\xaf', 'an overlong form');
    assert.equal(nameText(Buffer.from([0xed, 0xa0, 0x80])), '\\xed\\xa0\\x80', 'a surrogate');
  });

  it('nonUtf8Meant: the escaped, U+FFFD and Latin-1 forms of the name, nothing else', () => {
    const d = { ifindex: 7, bytes: Buffer.from([0x78, 0xff, 0x31]), name: 'x\\xff1' };
    for (const given of ['x\\xff1', 'x\ufffd1', 'x\u00ff1']) assert.equal(nonUtf8Meant(given, [d]), d, given);
    for (const given of ['x1', 'xff1', 'x\ufffd2']) assert.equal(nonUtf8Meant(given, [d]), undefined, given);
    assert.match(
      nonUtf8Text('x\ufffd1', d),
      /ifindex 7, named x\\xff1, a name that is not UTF-8 .*ip link set dev "\$\(printf 'x\\3771'\)" name NEWNAME$/,
    );
  });
});
