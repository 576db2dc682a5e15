import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { errnoKind, errnoName, KernelError } from '../../src/server/dataplane/errors.js';

describe('kernel errors', () => {
  it('names errnos, including kernel-only ones', () => {
    assert.equal(errnoName(2), 'ENOENT');
    assert.equal(errnoName(16), 'EBUSY');
    assert.equal(errnoName(524), 'ENOTSUPP');
    assert.equal(errnoName(99999), 'E99999');
  });

  it('classifies errnos for the status mapping', () => {
    const table: [number, string][] = [
      [2, 'not-found'], // ENOENT
      [19, 'not-found'], // ENODEV
      [17, 'exists'], // EEXIST
      [16, 'busy'], // EBUSY
      [22, 'invalid'], // EINVAL
      [7, 'exhausted'], // E2BIG
      [28, 'exhausted'], // ENOSPC
      [12, 'exhausted'], // ENOMEM
      [95, 'unsupported'], // EOPNOTSUPP
      [524, 'unsupported'], // ENOTSUPP
      [1, 'permission'], // EPERM
      [13, 'permission'], // EACCES
      [5, 'internal'], // EIO
    ];
    for (const [errno, kind] of table) assert.equal(errnoKind(errno), kind, errnoName(errno));
  });

  it('reads "verb object: cause (CODE)" and keeps the log', () => {
    const e = new KernelError('attach xdp to veth3', 16, ['libbpf: something']);
    assert.equal(e.message, 'attach xdp to veth3: device busy (EBUSY)');
    assert.equal(e.code, 'EBUSY');
    assert.equal(e.kind, 'busy');
    assert.deepEqual(e.log, ['libbpf: something']);
  });
});
