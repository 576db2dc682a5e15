/**
 * Why a TCP connection to xdpctld failed, when TLS is the reason. grpc-js
 * reports a refused handshake only as "Failed to connect" or "read
 * ECONNRESET", which reads like a daemon that is not running. On such a
 * failure the CLI makes one TLS handshake of its own with the same files and
 * names the problem: a TLS port dialled in plaintext, a client certificate
 * that has expired or is not yet valid, or one the server closes the
 * connection on (not signed by a CA it trusts), a server certificate outside
 * its validity period (with its date). Uses node:tls only.
 */
import { X509Certificate } from 'node:crypto';
import { connect } from 'node:tls';

export interface TlsFiles {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

/** The client certificate's own validity problem, if any (checked locally, RFC 5280 4.1.2.5). */
export function clientCertProblem(cert: Buffer | undefined, now = Date.now()): string | undefined {
  if (!cert) return undefined;
  let x: X509Certificate;
  try {
    x = new X509Certificate(cert);
  } catch (e) {
    return `the client certificate (--tls-cert) does not parse: ${(e as Error).message}`;
  }
  if (now > Date.parse(x.validTo)) {
    return `the client certificate (--tls-cert) expired on ${new Date(Date.parse(x.validTo)).toISOString()}`;
  }
  if (now < Date.parse(x.validFrom)) {
    return `the client certificate (--tls-cert) is not valid before ${new Date(Date.parse(x.validFrom)).toISOString()}`;
  }
  return undefined;
}

type Outcome = { kind: 'handshake-failed'; message: string } | { kind: 'closed-after-handshake' } | { kind: 'ok' };

/** One TLS handshake to host:port; then waits briefly to see whether the server keeps the connection. */
function probe(host: string, port: number, files: TlsFiles | undefined, timeoutMs: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket = connect({
      host,
      port,
      servername: /^[\d.]+$|:/.test(host) ? undefined : host,
      ALPNProtocols: ['h2'],
      ca: files?.ca,
      cert: files?.cert,
      key: files?.key,
      rejectUnauthorized: files !== undefined, // plaintext callers: only "does it speak TLS?"
    });
    let secured = false;
    const done = (o: Outcome) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(o);
    };
    const timer = setTimeout(
      () => done(secured ? { kind: 'ok' } : { kind: 'handshake-failed', message: 'timed out' }),
      timeoutMs,
    );
    socket.once('secureConnect', () => {
      secured = true;
      // TLS 1.3: the server checks the client certificate after the client's handshake is done and
      // closes the connection when it refuses it; a server that accepted sends its HTTP/2 SETTINGS.
      socket.once('data', () => done({ kind: 'ok' }));
    });
    socket.once('error', (e) =>
      done(secured ? { kind: 'closed-after-handshake' } : { kind: 'handshake-failed', message: e.message }),
    );
    socket.once('close', () =>
      done(secured ? { kind: 'closed-after-handshake' } : { kind: 'handshake-failed', message: 'connection closed' }),
    );
  });
}

/**
 * What {@link diagnoseTls} found: the one-line explanation, and whether the server refused this client's
 * credentials (no client certificate, one expired or not yet valid, or not signed by a CA it trusts): the
 * connection was refused for who the client is, not because xdpctld is unreachable, so the CLI exits as for
 * UNAUTHENTICATED (9), not UNAVAILABLE (10).
 */
export interface TlsDiagnosis {
  message: string;
  clientRefused: boolean;
}

/**
 * A one-line explanation when TLS is why `host:port` refused the connection,
 * or undefined when it is not (or cannot tell): then the caller's own message
 * stands.
 */
export async function diagnoseTls(
  address: string,
  files: TlsFiles | undefined,
  timeoutMs = 3000,
): Promise<TlsDiagnosis | undefined> {
  const d = await diagnose(address, files, timeoutMs);
  return d === undefined ? undefined : typeof d === 'string' ? { message: d, clientRefused: false } : d;
}

async function diagnose(
  address: string,
  files: TlsFiles | undefined,
  timeoutMs: number,
): Promise<string | TlsDiagnosis | undefined> {
  const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(address);
  if (!m || address.startsWith('unix:')) return undefined;
  const [host, port] = [m[1], Number(m[2])];
  if (!files) {
    const o = await probe(host, port, undefined, timeoutMs);
    if (o.kind === 'handshake-failed') return undefined; // not a TLS port (or not reachable at all)
    return `xdpctld at ${address} speaks TLS and this client plaintext: give --tls-ca (and --tls-cert, --tls-key if it requires client certificates)`;
  }
  const local = clientCertProblem(files.cert);
  if (local) return { message: `TLS with xdpctld at ${address} failed: ${local}`, clientRefused: true };
  const o = await probe(host, port, files, timeoutMs);
  if (o.kind === 'closed-after-handshake') {
    return {
      message:
        `TLS with xdpctld at ${address} failed: the server closed the connection after the handshake, refusing the ` +
        `client certificate${files.cert ? ' (--tls-cert): it is not signed by a CA the server trusts (--tls-client-ca)' : ': it requires one (--tls-cert, --tls-key)'}`,
      clientRefused: true,
    };
  }
  if (o.kind === 'handshake-failed' && /wrong version number|packet length too long/i.test(o.message)) {
    return `TLS with xdpctld at ${address} failed: the server does not speak TLS on this port (drop --tls-*)`;
  }
  if (o.kind === 'handshake-failed' && /(?<!alert )certificate (has expired|is not yet valid)/i.test(o.message)) {
    // The server's certificate is outside its validity period: read it (without trusting it) for its dates.
    const v = await serverValidity(host, port, timeoutMs).catch(() => undefined);
    const when = (ms: number) => new Date(ms).toISOString();
    const why = !v
      ? o.message
      : Date.now() > v.notAfter
        ? `expired on ${when(v.notAfter)}`
        : `is not valid before ${when(v.notBefore)}`;
    return `TLS with xdpctld at ${address} failed: the server's certificate (xdpctld --tls-cert) ${why}: xdpctld must be given a valid one (its files rotated)`;
  }
  if (o.kind === 'handshake-failed' && /certificate|self[- ]signed|issuer/i.test(o.message)) {
    return `TLS with xdpctld at ${address} failed: the server certificate is not trusted (--tls-ca): ${o.message}`;
  }
  return undefined;
}

/** The validity period of the certificate the server presents (read without verifying it, for its dates only). */
function serverValidity(
  host: string,
  port: number,
  timeoutMs: number,
): Promise<{ notBefore: number; notAfter: number }> {
  return new Promise((resolve, reject) => {
    const socket = connect({
      host,
      port,
      servername: /^[\d.]+$|:/.test(host) ? undefined : host,
      ALPNProtocols: ['h2'],
      rejectUnauthorized: false,
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('timed out'));
    }, timeoutMs);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      const c = socket.getPeerCertificate();
      socket.destroy();
      if (!c?.valid_to) return reject(new Error('no certificate'));
      resolve({ notBefore: Date.parse(c.valid_from), notAfter: Date.parse(c.valid_to) });
    });
    socket.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}
