/**
 * The daemon's own TLS certificate expiring under it (no client certificates: no --tls-client-ca). Every new
 * TLS client then refuses the handshake; what the daemon knows is said: GetStatus and `xdpctl status` name
 * the certificate in use as expired, the gauge xdpctl_tls_certificate_valid is 0, each refused handshake is
 * logged as the client refusing OUR certificate (never as a client certificate's fault: there is none), and
 * the CLI names the server's certificate's expiry with its date. Real certificates (openssl ca -enddate: a
 * notAfter seconds ahead), a real daemon, real clients (the CLI, openssl s_client).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess, metric } from '../helpers/daemon.js';
import { CLI, kernelOnly, runId, sleep } from '../helpers/env.js';
import { issue, makeCa, makeRequest } from '../helpers/pki.js';

describe("the daemon's own TLS certificate expires", kernelOnly(), () => {
  const id = runId();
  const dir = mkdtempSync(join(tmpdir(), 'xdpctl-tls-own-'));
  const f = (n: string) => join(dir, n);
  let d: DaemonProcess | undefined;
  /** The server certificate's notAfter (whole seconds, as the certificate holds it). */
  let notAfter = 0;

  before(async () => {
    makeCa(dir, 'ca', 'own-expiry-ca');
    makeRequest(dir, 'server');
    // Valid from an hour ago until 12 s from now (the daemon refuses an expired one at start).
    notAfter = Math.floor((Date.now() + 12_000) / 1000) * 1000;
    issue(dir, 'server', {
      ext: 'subjectAltName=IP:127.0.0.1,DNS:localhost',
      validity: { notBefore: Date.now() - 3_600_000, notAfter },
    });
    d = await DaemonProcess.start(id, [
      '--tls-cert',
      f('server.pem'),
      '--tls-key',
      f('server.key'),
      '--tls-refresh-seconds',
      '1',
      '--prometheus',
      '127.0.0.1:0',
    ]);
  });
  after(async () => {
    await d?.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  });

  const cli = (server: string, args: string[]) =>
    spawnSync(CLI, ['--server', server, '--timeout', '3s', ...args], { encoding: 'utf8' });
  const iso = () => new Date(notAfter).toISOString();
  const valid = () =>
    metric(d!.prometheus!, 'xdpctl_tls_certificate_valid', { xdpctl_tls_certificate_path: f('server.pem') });

  it('is said in status and metrics while valid, and once expired; refused handshakes blame our certificate, the CLI names its expiry', async () => {
    // While valid: the TCP client gets in; status and the gauges say until when.
    const ok = cli(d!.tcp, ['--tls-ca', f('ca.pem'), 'status']);
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, new RegExp(`tls certificate valid:\\s+yes, until ${iso().replace(/\./g, '\\.')}`));
    assert.equal(await valid(), 1);
    assert.equal(
      await metric(d!.prometheus!, 'xdpctl_tls_certificate_not_after', {
        xdpctl_tls_certificate_path: f('server.pem'),
      }),
      notAfter / 1000,
    );

    await sleep(notAfter - Date.now() + 1500);
    assert.ok(Date.now() > notAfter);

    // The status (over the Unix socket, which has no TLS) and the gauge say it.
    const st = cli(d!.unix, ['status']);
    assert.equal(st.status, 0, st.stderr);
    assert.match(
      st.stdout,
      new RegExp(
        `tls certificate valid:\\s+no: certificate expired at ${iso().replace(/\./g, '\\.')}; new TLS clients refuse`,
      ),
    );
    const json = JSON.parse(cli(d!.unix, ['-o', 'json', 'status']).stdout) as { tls?: Record<string, unknown> };
    assert.equal(json.tls?.valid ?? false, false);
    assert.equal(json.tls?.notAfter, iso());
    assert.equal(await valid(), 0);

    // The CLI names the server's certificate's expiry, with its date.
    const r = cli(d!.tcp, ['--tls-ca', f('ca.pem'), 'status']);
    assert.equal(r.status, 10, r.stderr);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(
      r.stderr,
      new RegExp(`failed: the server's certificate \\(xdpctld --tls-cert\\) expired on ${iso().replace(/\./g, '\\.')}`),
    );

    // openssl s_client refuses it with alert 45 (certificate_expired) about OUR certificate.
    spawnSync(
      'openssl',
      ['s_client', '-verify_return_error', '-CAfile', f('ca.pem'), '-connect', d!.tcp.replace(/^.*?(\d+\.)/, '$1')],
      { input: '', encoding: 'utf8', timeout: 5000 },
    );
    await sleep(500);
    const refused = d!.output.split('\n').filter((l) => l.includes('"msg":"TLS handshake refused"'));
    assert.ok(
      refused.some((l) =>
        l.includes(`"reason":"the client refused our certificate: certificate_expired (ours expired at ${iso()})"`),
      ),
      refused.join('\n'),
    );
    // The CLI's handshakes (Node closes without an alert): the daemon says what it knows of ours.
    assert.ok(
      refused.some((l) => l.includes(`went away during the handshake (ours expired at ${iso()}: clients refuse it)`)),
      refused.join('\n'),
    );
    // No client certificate is asked for: no reason blames one.
    assert.deepEqual(
      refused.filter((l) => /client certificate/.test(l)),
      [],
    );
  });
});
