/**
 * A refused TLS handshake's reason says what the daemon knows (tls.ts handshakeReason): an alert received
 * from the client is the client's verdict on OUR certificate, never a client certificate's fault; without
 * --tls-client-ca no reason blames a client certificate; a client that went away while our certificate is
 * expired is said with that fact. Messages as OpenSSL 3 / Node give them.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { handshakeReason } from '../../src/server/tls.js';

const err = (message: string, reason?: string) => Object.assign(new Error(message), reason ? { reason } : {});
const expiredAt = Date.parse('2026-12-06T12:34:19Z');
const now = expiredAt + 60_000;
const ours = { notBefore: expiredAt - 86_400_000, notAfter: expiredAt, mutual: false, now };

describe('handshakeReason', () => {
  it('an alert from the client is its verdict on our certificate, with what we know of ours', () => {
    const alert45 = err(
      '406D8FA07A7F0000:error:0A000415:SSL routines:ssl3_read_bytes:ssl/tls alert certificate expired:../deps/openssl/openssl/ssl/record/rec_layer_s3.c:918:SSL alert number 45',
      'ssl/tls alert certificate expired',
    );
    assert.equal(
      handshakeReason(alert45, undefined, ours),
      'the client refused our certificate: certificate_expired (ours expired at 2026-12-06T12:34:19.000Z)',
    );
    // The same alert with mutual TLS is still about our certificate (a client judges only the server's).
    assert.match(handshakeReason(alert45, undefined, { ...ours, mutual: true }), /^the client refused our certificate/);
    const unknownCa = err('error:0A000418:SSL routines::tlsv1 alert unknown ca', 'tlsv1 alert unknown ca');
    assert.equal(
      handshakeReason(unknownCa, undefined, { ...ours, now: expiredAt - 1000 }),
      'the client refused our certificate: unknown_ca (ours is valid until 2026-12-06T12:34:19.000Z)',
    );
  });

  it('without --tls-client-ca no reason names a client certificate', () => {
    for (const m of ['certificate verify failed', 'certificate has expired', 'peer did not return a certificate']) {
      assert.doesNotMatch(
        handshakeReason(err(m), 'CERT_HAS_EXPIRED', ours),
        /client certificate|sent no certificate/,
        m,
      );
    }
    // With it, an expired client certificate is still named.
    assert.equal(
      handshakeReason(err('certificate verify failed'), 'CERT_HAS_EXPIRED', { ...ours, mutual: true }),
      'the client certificate has expired',
    );
  });

  it('a client gone during the handshake is said with our certificate expired, when it is', () => {
    assert.equal(
      handshakeReason(err('socket hang up'), undefined, ours),
      'the client went away during the handshake (ours expired at 2026-12-06T12:34:19.000Z: clients refuse it)',
    );
    assert.equal(
      handshakeReason(err('socket hang up'), undefined, { ...ours, now: expiredAt - 1000 }),
      'the client went away during the handshake',
    );
  });
});
