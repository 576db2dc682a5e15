/**
 * The library client over TLS to an IP address (`127.0.0.1:9091`, the default) prints no DeprecationWarning:
 * grpc-js sent the address as the TLS server name (SNI), which Node 24 reports as DEP0123 in the program of
 * whoever uses the client (the CLI hid it with process.noDeprecation; a library must not). The certificate is
 * still checked against the address: one for another address is refused. A TLS HTTP/2 server of node:http2
 * answers every call with UNIMPLEMENTED, so a call that gets that far went through the handshake.
 */
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { ClientError, Status } from 'nice-grpc';

import { createXdpctlClient } from '../../src/client/index.js';
import { makePki } from '../helpers/pki.js';

const dir = mkdtempSync(join(tmpdir(), 'xdpctl-tls-ip-'));
const warnings: string[] = [];
process.on('warning', (w: Error & { code?: string }) => warnings.push(`${w.code ?? w.name}: ${w.message}`));

async function serve(name: string): Promise<http2.Http2SecureServer> {
  const server = http2.createSecureServer({
    key: readFileSync(join(dir, `${name}.key`)),
    cert: readFileSync(join(dir, `${name}.pem`)),
  });
  server.on('stream', (s) =>
    s.respond(
      { ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '12', 'grpc-message': 'test' },
      {
        endStream: true,
      },
    ),
  );
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return server;
}

async function call(server: http2.Http2SecureServer): Promise<ClientError> {
  const port = (server.address() as AddressInfo).port;
  const c = createXdpctlClient({ address: `127.0.0.1:${port}`, tls: { ca: readFileSync(join(dir, 'ca.pem')) } });
  try {
    await c.daemon.getStatus({}, { retry: false, deadline: new Date(Date.now() + 5000) });
    assert.fail('the test server answers UNIMPLEMENTED');
  } catch (e) {
    assert.ok(e instanceof ClientError, String(e));
    return e;
  } finally {
    c.close();
  }
}

describe('the client over TLS to an IP address', () => {
  const servers: http2.Http2SecureServer[] = [];
  before(() => makePki(dir, { ip: ['127.0.0.1', 'IP:127.0.0.1'], other: ['10.9.9.9', 'IP:10.9.9.9'] }));
  after(() => {
    for (const s of servers) s.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('connects to a certificate for that address without a DeprecationWarning', async () => {
    servers.push(await serve('ip'));
    const e = await call(servers.at(-1)!);
    assert.equal(e.code, Status.UNIMPLEMENTED, e.message);
    await new Promise((r) => setImmediate(r)); // warnings are emitted on the next tick
    assert.deepEqual(warnings, []);
  });

  it('refuses a certificate for another address', async () => {
    servers.push(await serve('other'));
    const e = await call(servers.at(-1)!);
    assert.equal(e.code, Status.UNAVAILABLE, e.message);
    assert.match(e.message, /127\.0\.0\.1.*not in the cert's list|ERR_TLS_CERT_ALTNAME_INVALID/);
  });
});
