/**
 * TLS and mutual TLS on the TCP listener, driven with the CLI's --tls-*
 * options: a client with a certificate from the configured CA gets in; one
 * without, or speaking plaintext, does not. Certificates rotated in place (as
 * a mesh does) are picked up; a half-written rotation is not.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, ROOT, runId, sh, sleep } from '../helpers/env.js';

describe('TLS and mTLS', kernelOnly(), () => {
  const id = runId();
  const dir = mkdtempSync(join(tmpdir(), 'xdpctl-tls-'));
  const f = (n: string) => join(dir, n);
  let d: DaemonProcess | undefined;

  before(async () => {
    const subj = (cn: string) => ['-subj', `/CN=${cn}`];
    sh('openssl', [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '1',
      '-keyout',
      f('ca.key'),
      '-out',
      f('ca.pem'),
      ...subj('test-ca'),
    ]);
    for (const [name, ext] of [
      ['server', 'subjectAltName=IP:127.0.0.1,DNS:localhost'],
      ['rotated', 'subjectAltName=IP:127.0.0.1,DNS:localhost'],
      ['client', 'subjectAltName=URI:spiffe://example.org/ns/ops/sa/admin'],
    ]) {
      sh('openssl', [
        'req',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-keyout',
        f(`${name}.key`),
        '-out',
        f(`${name}.csr`),
        ...subj(name),
      ]);
      sh('bash', ['-c', `printf '%s' '${ext}' > ${f(`${name}.ext`)}`]);
      sh('openssl', [
        'x509',
        '-req',
        '-in',
        f(`${name}.csr`),
        '-CA',
        f('ca.pem'),
        '-CAkey',
        f('ca.key'),
        '-CAcreateserial',
        '-days',
        '1',
        '-out',
        f(`${name}.pem`),
        '-extfile',
        f(`${name}.ext`),
      ]);
    }
    d = await DaemonProcess.start(id, [
      '--tls-cert',
      f('server.pem'),
      '--tls-key',
      f('server.key'),
      '--tls-client-ca',
      f('ca.pem'),
      '--tls-refresh-seconds',
      '1',
    ]);
  });
  after(async () => {
    await d?.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  });

  const cli = (args: string[]) =>
    spawnSync(`${ROOT}bin/xdpctl`, ['--server', d!.tcp, '--timeout', '3s', ...args], { encoding: 'utf8' });

  it('accepts a client certificate from the CA', () => {
    const r = cli(['--tls-ca', f('ca.pem'), '--tls-cert', f('client.pem'), '--tls-key', f('client.key'), 'status']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /serving:\s+yes/);
  });

  it('refuses a client without a certificate, and plaintext', () => {
    const noCert = cli(['--tls-ca', f('ca.pem'), 'status']);
    assert.notEqual(noCert.status, 0);
    assert.equal(noCert.stderr.trim().split('\n').length, 1, `one line: ${noCert.stderr}`);
    assert.match(noCert.stderr, /TLS with xdpctld at .* failed: the server requires a client certificate/);
    const plain = cli(['status']);
    assert.notEqual(plain.status, 0);
  });

  /** The CN of the certificate the daemon presents to a new connection. */
  const servedCn = () =>
    new Promise<string>((resolve, reject) => {
      const [host, port] = [
        d!.tcp.slice(0, d!.tcp.lastIndexOf(':')),
        Number(d!.tcp.slice(d!.tcp.lastIndexOf(':') + 1)),
      ];
      const s = connect({
        host,
        port,
        ca: sh('cat', [f('ca.pem')]),
        cert: sh('cat', [f('client.pem')]),
        key: sh('cat', [f('client.key')]),
        ALPNProtocols: ['h2'],
        servername: 'localhost',
      });
      s.once('secureConnect', () => {
        resolve(String(s.getPeerCertificate().subject.CN));
        s.destroy();
      });
      s.once('error', reject);
    });

  it('follows certificates rotated in place, and keeps the last good set over a half-written one', async () => {
    assert.equal(await servedCn(), 'server');
    // Half-written rotation: the new certificate beside the old key.
    copyFileSync(f('server.pem'), f('server.old.pem'));
    copyFileSync(f('rotated.pem'), f('server.pem'));
    await sleep(2500); // > 2 refresh periods
    assert.equal(await servedCn(), 'server', 'a mismatched pair is not used');
    assert.match(d!.output, /new TLS files rejected: keeping the certificate in use/);
    // The key follows: the new pair is used for new connections.
    copyFileSync(f('rotated.key'), f('server.key'));
    const end = Date.now() + 5000;
    while ((await servedCn()) !== 'rotated' && Date.now() < end) await sleep(200);
    assert.equal(await servedCn(), 'rotated');
    const r = cli(['--tls-ca', f('ca.pem'), '--tls-cert', f('client.pem'), '--tls-key', f('client.key'), 'status']);
    assert.equal(r.status, 0, r.stderr);
  });

  it('keeps the Unix socket usable without TLS', () => {
    const r = spawnSync(`${ROOT}bin/xdpctl`, ['--server', d!.unix, 'status'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
  });
});
