/**
 * The CLI's TLS flags refused before any connection, naming why (twenty-third review): an encrypted --tls-key
 * (PKCS#8 ENCRYPTED PRIVATE KEY, or a traditional key with Proc-Type: 4,ENCRYPTED) said OpenSSL's "interrupted or
 * cancelled"; --tls-* with a unix: address tried the socket and said "the server does not speak TLS on this
 * port", exit 10, while a Unix socket is always plain: now bad usage (exit 2), nothing read.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { describe, it } from 'node:test';

import { CliError, EXIT } from '../../src/client/cli/errors.js';
import { loadTls } from '../../src/client/cli/session.js';
import { checkTlsFiles } from '../../src/client/cli/tls-files.js';

const WHY = 'the private key is encrypted (a passphrase is not supported): give an unencrypted key';

describe('CLI TLS flags refused locally', () => {
  it('an encrypted key, PKCS#8 or traditional, is said to be encrypted', () => {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 1024 });
    const enc = { cipher: 'aes-256-cbc', passphrase: 'secret' };
    const keys = {
      pkcs8: privateKey.export({ type: 'pkcs8', format: 'pem', ...enc }),
      traditional: privateKey.export({ type: 'pkcs1', format: 'pem', ...enc }),
    };
    assert.match(String(keys.pkcs8), /BEGIN ENCRYPTED PRIVATE KEY/);
    assert.match(String(keys.traditional), /Proc-Type: 4,ENCRYPTED/);
    for (const [kind, pem] of Object.entries(keys)) {
      assert.throws(
        () => checkTlsFiles({ key: { file: '/k.pem', buf: Buffer.from(pem) } }),
        (e: unknown) => e instanceof CliError && e.message === `--tls-key /k.pem: ${WHY}` && e.exitCode === EXIT.LOCAL,
        kind,
      );
    }
    // The same key unencrypted passes.
    const plain = privateKey.export({ type: 'pkcs8', format: 'pem' });
    checkTlsFiles({ key: { file: '/k.pem', buf: Buffer.from(plain) } });
  });

  it('--tls-* with a unix: address is bad usage, before any file is read', () => {
    for (const server of ['unix:/run/xdpctl/xdpctl.sock', 'unix:///run/x.sock']) {
      assert.throws(
        () => loadTls({ server, tlsCa: '/nonexistent/ca.pem', output: 'table', timeout: 1000 }),
        (e: unknown) =>
          e instanceof CliError &&
          e.exitCode === EXIT.USAGE &&
          e.message === `--tls-* apply to TCP addresses; ${server} is always plain (drop --tls-*)`,
      );
    }
    assert.equal(loadTls({ server: 'unix:/x.sock', output: 'table', timeout: 1000 }), undefined, 'no --tls-*: plain');
  });
});
