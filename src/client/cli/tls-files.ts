/**
 * The CLI's TLS files (--tls-ca, --tls-cert, --tls-key) checked before any connection, each problem naming its
 * flag and file: a CA file without a certificate, a certificate file that holds a key (or nothing), a key file
 * that holds a certificate (or nothing), a key that is not the certificate's. Before (a review's finding), a
 * CA file without a certificate was reported as "the server certificate is not trusted (--tls-ca)", a mismatched
 * key as OpenSSL's "key values mismatch", a key given as --tls-cert as "PEM routines::no start line". Reads
 * nothing but the buffers it is given; opens no connection.
 */
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';

import { CliError, EXIT } from './errors.js';

const CERT_BLOCK = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;
const KEY_BEGIN = /-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----/;
const ENCRYPTED_KEY = /-----BEGIN ENCRYPTED PRIVATE KEY-----|^Proc-Type:[ \t]*4,[ \t]*ENCRYPTED/m;
const ENCRYPTED_WHY = 'the private key is encrypted (a passphrase is not supported): give an unencrypted key';

/** What a PEM file holds that is not what its flag wants, for the message. */
function holds(pem: string): string {
  if (KEY_BEGIN.test(pem)) return 'it holds a private key';
  if (pem.includes('-----BEGIN CERTIFICATE-----')) return 'it holds a certificate';
  if (pem.includes('-----BEGIN '))
    return `it holds a PEM block "${/-----BEGIN ([^-\n]{1,40})-----/.exec(pem)?.[1] ?? '?'}"`;
  return 'it holds no PEM block';
}

const fail = (flag: string, file: string, why: string) => new CliError(`${flag} ${file}: ${why}`, EXIT.LOCAL);

/** The certificates of a --tls-ca or --tls-cert file; none, or one that does not parse, is refused naming the flag. */
function certificates(flag: string, file: string, buf: Buffer): X509Certificate[] {
  const pem = buf.toString('latin1');
  const blocks = pem.match(CERT_BLOCK) ?? [];
  if (!blocks.length) throw fail(flag, file, `no PEM certificate in it (-----BEGIN CERTIFICATE-----): ${holds(pem)}`);
  return blocks.map((b, i) => {
    try {
      return new X509Certificate(b);
    } catch (e) {
      throw fail(flag, file, `certificate ${i + 1} does not parse: ${(e as Error).message}`);
    }
  });
}

/**
 * Check the TLS files given to the CLI (their contents, already read): throws a CliError (exit 1) naming the flag
 * and the file of the first problem.
 */
export function checkTlsFiles(files: {
  ca?: { file: string; buf: Buffer };
  cert?: { file: string; buf: Buffer };
  key?: { file: string; buf: Buffer };
}): void {
  if (files.ca) certificates('--tls-ca', files.ca.file, files.ca.buf);
  const leaf = files.cert && certificates('--tls-cert', files.cert.file, files.cert.buf)[0];
  if (!files.key) return;
  const { file, buf } = files.key;
  const pem = buf.toString('latin1');
  if (!KEY_BEGIN.test(pem))
    throw fail('--tls-key', file, `no PEM private key in it (-----BEGIN PRIVATE KEY-----): ${holds(pem)}`);
  // An encrypted key (PKCS#8 ENCRYPTED PRIVATE KEY, or a traditional one with Proc-Type: 4,ENCRYPTED) is said
  // so before OpenSSL is asked: without a passphrase it answered "interrupted or cancelled".
  if (ENCRYPTED_KEY.test(pem)) throw fail('--tls-key', file, ENCRYPTED_WHY);
  let key: KeyObject;
  try {
    key = createPrivateKey(buf);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why =
      /passphrase/i.test(err.message) || err.code === 'ERR_OSSL_CRYPTO_INTERRUPTED_OR_CANCELLED'
        ? ENCRYPTED_WHY
        : `the private key does not parse: ${err.message}`;
    throw fail('--tls-key', file, why);
  }
  if (leaf && files.cert && !leaf.checkPrivateKey(key)) {
    throw fail(
      '--tls-key',
      file,
      `the private key is not the key of the certificate in --tls-cert ${files.cert.file} (${leaf.subject.split('\n').join(', ')})`,
    );
  }
}
