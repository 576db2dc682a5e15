/** Test PKIs made with openssl (no fixed keys in the repository). */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { sh } from './env.js';

/** A CA and certificates made with openssl: name -> [subject CN, SAN extension or ""]. */
export function makePki(dir: string, certs: Record<string, [string, string]>): void {
  const f = (n: string) => join(dir, n);
  sh(
    'openssl',
    ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-keyout', f('ca.key')].concat([
      '-out',
      f('ca.pem'),
      '-subj',
      '/CN=test-ca',
    ]),
  );
  for (const [name, [cn, san]] of Object.entries(certs)) {
    sh(
      'openssl',
      ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`)].concat([
        '-subj',
        `/CN=${cn}`,
      ]),
    );
    writeFileSync(f(`${name}.ext`), san ? `subjectAltName=${san}\n` : 'basicConstraints=CA:FALSE\n');
    sh(
      'openssl',
      ['x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.pem'), '-CAkey', f('ca.key')].concat([
        '-CAcreateserial',
        '-days',
        '1',
        '-out',
        f(`${name}.pem`),
        '-extfile',
        f(`${name}.ext`),
      ]),
    );
  }
}
