/**
 * Test PKIs made with openssl (no fixed keys in the repository): a CA, a key with its certificate request, and a
 * certificate issued from the request. Every file is `<dir>/<name>.<ext>`: `ca.key` + `ca.pem` for a CA named
 * "ca", `server.key` + `server.csr` for a request named "server", then `server.pem` for its certificate.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from 'node:tls';

import { sh } from './env.js';

/** A self-signed CA, valid for a day: `<name>.key` and `<name>.pem` in `dir`, subject CN `cn`. */
export function makeCa(dir: string, name = 'ca', cn = 'test-ca'): void {
  const f = (ext: string) => join(dir, `${name}.${ext}`);
  sh(
    'openssl',
    ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-keyout', f('key')].concat([
      '-out',
      f('pem'),
      '-subj',
      `/CN=${cn}`,
    ]),
  );
}

/** A new RSA key and a certificate request for it: `<name>.key` and `<name>.csr` in `dir`, subject CN `cn`. */
export function makeRequest(dir: string, name: string, cn = name): void {
  const f = (ext: string) => join(dir, `${name}.${ext}`);
  sh('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('key'), '-out', f('csr'), '-subj', `/CN=${cn}`]);
}

/** How {@link issue} makes a certificate. */
export interface IssueOptions {
  /** The issuing CA's name (made by {@link makeCa} in the same dir); default "ca". */
  ca?: string;
  /** One extension line, as `subjectAltName=IP:127.0.0.1`; empty or absent: `basicConstraints=CA:FALSE`. */
  ext?: string;
  /** Valid from now for this many days; -1 gives a certificate that expired yesterday. Default 1. */
  days?: number;
  /**
   * Valid exactly from `notBefore` until `notAfter` (ms since the epoch, whole seconds; `openssl ca`), instead
   * of `days`.
   */
  validity?: { notBefore: number; notAfter: number };
}

/** openssl ca's date format (GeneralizedTime): YYYYMMDDHHMMSSZ. */
const asn1 = (ms: number) =>
  new Date(ms)
    .toISOString()
    .replace(/\.\d+Z$/, 'Z')
    .replace(/[-:T]/g, '');

/** The certificate `<name>.pem` for the request `<name>.csr` (see {@link makeRequest}), issued by a CA in `dir`. */
export function issue(dir: string, name: string, opts: IssueOptions = {}): void {
  const f = (n: string) => join(dir, n);
  const ca = opts.ca ?? 'ca';
  const ext = opts.ext || 'basicConstraints=CA:FALSE';
  if (opts.validity) {
    // openssl x509 -req takes a number of days only; openssl ca takes dates (and wants a database).
    writeFileSync(f(`${ca}.index.txt`), '');
    writeFileSync(f(`${ca}.serial`), '01\n');
    writeFileSync(
      f(`${ca}.cnf`),
      [
        '[ca]',
        'default_ca = own',
        '[own]',
        `dir = ${dir}`,
        `database = $dir/${ca}.index.txt`,
        'new_certs_dir = $dir',
        `serial = $dir/${ca}.serial`,
        'default_md = sha256',
        'policy = any',
        'x509_extensions = ext',
        '[any]',
        'commonName = supplied',
        '[ext]',
        ext,
        '',
      ].join('\n'),
    );
    sh(
      'openssl',
      ['ca', '-batch', '-notext', '-config', f(`${ca}.cnf`), '-cert', f(`${ca}.pem`)].concat([
        '-keyfile',
        f(`${ca}.key`),
        '-in',
        f(`${name}.csr`),
        '-out',
        f(`${name}.pem`),
        '-startdate',
        asn1(opts.validity.notBefore),
        '-enddate',
        asn1(opts.validity.notAfter),
      ]),
    );
    return;
  }
  writeFileSync(f(`${name}.ext`), `${ext}\n`);
  sh(
    'openssl',
    ['x509', '-req', '-in', f(`${name}.csr`), '-CA', f(`${ca}.pem`), '-CAkey', f(`${ca}.key`)].concat([
      '-CAcreateserial',
      '-days',
      String(opts.days ?? 1),
      '-out',
      f(`${name}.pem`),
      '-extfile',
      f(`${name}.ext`),
    ]),
  );
}

/** A CA ("ca", CN test-ca) and certificates it issues, valid for a day: name -> [subject CN, SAN extension or ""]. */
export function makePki(dir: string, certs: Record<string, [string, string]>): void {
  makeCa(dir);
  for (const [name, [cn, san]] of Object.entries(certs)) {
    makeRequest(dir, name, cn);
    issue(dir, name, { ext: san ? `subjectAltName=${san}` : '' });
  }
}

/**
 * The subject CN of the certificate the TLS server at `address` ("host:port") presents to a new connection (ALPN
 * h2, server name "localhost"), trusting the CA in the file `ca`; with `client`, the files of the certificate and
 * key it presents in turn. The files are read at each call.
 */
export function servedCnAt(address: string, ca: string, client?: { cert: string; key: string }): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const at = address.lastIndexOf(':');
    const s = connect({
      host: address.slice(0, at),
      port: Number(address.slice(at + 1)),
      ca: readFileSync(ca),
      ...(client ? { cert: readFileSync(client.cert), key: readFileSync(client.key) } : {}),
      ALPNProtocols: ['h2'],
      servername: 'localhost',
    });
    s.once('secureConnect', () => {
      resolve(String(s.getPeerCertificate().subject.CN));
      s.destroy();
    });
    s.once('error', reject);
  });
}
