/**
 * The daemon's own certificate must be able to serve TLS: besides its validity period, an extended key
 * usage that does not allow serverAuth is refused at start and on rotation (a review loaded a
 * clientAuth-only certificate and every client then failed its handshake).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { check } from '../../src/server/tls.js';
import { makePki } from '../helpers/pki.js';

describe("TLS: the daemon's own certificate", () => {
  const dir = mkdtempSync(join(tmpdir(), 'xdpctl-test-tls-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  makePki(dir, {
    server: ['xdpctld', 'DNS:localhost\nextendedKeyUsage=serverAuth'],
    both: ['xdpctld', 'DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth'],
    plain: ['xdpctld', 'DNS:localhost'],
    client: ['cli1', 'DNS:localhost\nextendedKeyUsage=clientAuth'],
  });
  const files = (n: string) => [readFileSync(join(dir, `${n}.pem`)), readFileSync(join(dir, `${n}.key`))] as const;

  it('serves with serverAuth, or with no extended key usage at all', () => {
    for (const n of ['server', 'both', 'plain']) assert.equal(check(...files(n)), undefined, n);
  });
  it('refuses a clientAuth-only certificate, saying why', () => {
    assert.match(
      check(...files('client'))!,
      /extended key usage \(clientAuth\) does not allow TLS server authentication/,
    );
  });
});
