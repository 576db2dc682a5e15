/**
 * TLS server credentials that follow their files: a service mesh (SPIRE,
 * cert-manager's csi-driver-spiffe, Istio) rotates short-lived certificates
 * by rewriting them in place, and a daemon that read them once at start
 * would serve an expired certificate within the hour.
 *
 * The files are read again every --tls-refresh-seconds (regular files only,
 * never waiting on a FIFO or a device: regular-file.ts); this module checks
 * every new set before it is used (key matches
 * certificate, PEM parses) and keeps the last good set otherwise: a rotation
 * caught half-written (new certificate, old key) must not take the listener
 * down. Files are read and checked once synchronously at start, so a wrong
 * path or a broken pair stops the start with a precise message.
 */
import { createHash, X509Certificate } from 'node:crypto';
import http2 from 'node:http2';
import type { Socket } from 'node:net';
import { createSecureContext, type TLSSocket } from 'node:tls';

import { experimental, type ServerCredentials } from '@grpc/grpc-js';

import { monotonicMs } from './core/clock.js';
import type { Logger } from './log.js';
import { formatPeer } from './net/addr.js';
import { readRegularFileSync } from './regular-file.js';

export interface TlsFiles {
  certFile: string;
  keyFile: string;
  /** With it, clients must present a certificate this CA signed (mutual TLS). */
  clientCaFile?: string;
  /** How often the files are re-read (default 60 s). */
  refreshMs?: number;
}

/** The TCP listeners' certificate in use, as GetStatus (daemon.proto TlsStatus) and the metrics say it. */
export interface TlsCertificateStatus {
  certFile: string;
  /** Validity of the certificate in use (ms since the epoch). */
  notBefore: number;
  notAfter: number;
  /** Client certificates are required (--tls-client-ca). */
  mutual: boolean;
  /** Why clients refuse it now (expired, not yet valid); absent while valid. */
  problem?: string;
  /** What the last read of the files found ("in use", "rejected ...", "unreadable: ..."). */
  filesState: string;
  /** The client CA in use (--tls-client-ca): its file and each certificate in it. */
  clientCa?: { file: string; certificates: CaCertificateFacts[] };
}

/** One certificate of a client CA file, as the status and the reload log line say it. */
export interface CaCertificateFacts {
  /** The subject, one line: "CN=test-ca, O=Example". */
  subject: string;
  /** SHA-256 fingerprint of the DER, colon-separated hex ("AB:CD:..."). */
  sha256: string;
  notBefore: number;
  notAfter: number;
}

/** The certificates of a PEM bundle (a client CA file may hold several); one that does not parse is skipped. */
export function caCertificates(pem: Buffer): CaCertificateFacts[] {
  const out: CaCertificateFacts[] = [];
  for (const block of pem.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ??
    []) {
    try {
      const x = new X509Certificate(block);
      out.push({
        subject: x.subject.split('\n').join(', '),
        sha256: x.fingerprint256,
        notBefore: Date.parse(x.validFrom),
        notAfter: Date.parse(x.validTo),
      });
    } catch {
      /* createSecureContext accepted the file: a block it skipped is not one it trusts */
    }
  }
  return out;
}

/** A CA certificate in a log line: subject, fingerprint, expiry. */
const caLogFacts = (c: CaCertificateFacts) => ({
  subject: c.subject,
  sha256: c.sha256,
  notAfter: new Date(c.notAfter).toISOString(),
});

type IdentityListener = experimental.IdentityCertificateUpdateListener;
type CaListener = experimental.CaCertificateUpdateListener;

/** Thrown at start when the files are unreadable or do not form a valid set. */
export class TlsFilesError extends Error {
  override readonly name = 'TlsFilesError';
}

/**
 * Why a certificate, key and CA cannot serve now, or undefined: they must
 * form a secure context, and the certificate (the first of the chain) must be
 * within its validity period and, if it has an extended key usage, allow
 * serverAuth: otherwise every client's handshake fails (RFC 5280 4.1.2.5,
 * 4.2.1.12).
 */
export function check(cert: Buffer, key: Buffer, ca?: Buffer, now = Date.now()): string | undefined {
  try {
    createSecureContext({ cert, key, ca });
  } catch (e) {
    return (e as Error).message;
  }
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(cert);
  } catch (e) {
    return `certificate does not parse: ${(e as Error).message}`;
  }
  const from = Date.parse(leaf.validFrom);
  const to = Date.parse(leaf.validTo);
  if (now > to)
    return `certificate expired on ${new Date(to).toISOString()} (valid from ${new Date(from).toISOString()})`;
  if (now < from) return `certificate is not valid before ${new Date(from).toISOString()}`;
  // Extended key usage (RFC 5280 4.2.1.12): when present, it must allow TLS server authentication, or
  // every client refuses the handshake ("unsuitable certificate purpose").
  const eku = leaf.keyUsage; // Node: the extended key usage OIDs, undefined when the extension is absent
  if (eku && !eku.includes(SERVER_AUTH) && !eku.includes(ANY_EXTENDED_KEY_USAGE)) {
    return `certificate's extended key usage (${eku.map((o) => EKU_NAMES[o] ?? o).join(', ')}) does not allow TLS server authentication (serverAuth, RFC 5280 4.2.1.12)`;
  }
  return undefined;
}

const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const ANY_EXTENDED_KEY_USAGE = '2.5.29.37.0';
const EKU_NAMES: Record<string, string> = {
  [SERVER_AUTH]: 'serverAuth',
  '1.3.6.1.5.5.7.3.2': 'clientAuth',
  '1.3.6.1.5.5.7.3.3': 'codeSigning',
  '1.3.6.1.5.5.7.3.4': 'emailProtection',
};

/**
 * A CertificateProvider that reads the files periodically and forwards a new set only when the
 * certificate, key and CA are valid together.
 */
class CheckedProvider implements experimental.CertificateProvider {
  private identity: experimental.IdentityCertificateUpdate;
  private ca?: experimental.CaCertificateUpdate;
  private readonly identityListeners = new Set<IdentityListener>();
  private readonly caListeners = new Set<CaListener>();
  private pending: {
    identity?: experimental.IdentityCertificateUpdate | null;
    ca?: experimental.CaCertificateUpdate | null;
  } = {};
  /**
   * The periodic read of the files while a listener wants them ({@link TlsFiles.refreshMs}): {@link reload} on
   * a timer. Not grpc-js's FileWatcherCertificateProvider: it reads with fs.promises.readFile, which on a FIFO
   * at a file's path waits for a writer in a libuv worker for good (one more at every refresh, until every
   * worker waits and the process cannot even exit); this one reads only regular files (regular-file.ts).
   */
  private timer?: NodeJS.Timeout;
  /** Number of rotations applied (tests, logs). */
  rotations = 0;
  /** The validity of the certificate in use, parsed once per set. */
  private validity?: { cert: Buffer; notBefore: number; notAfter: number };

  /**
   * The certificate in use as the daemon knows it now (GetStatus, metrics, refused handshakes' reasons):
   * its file, validity, and why it cannot serve now (expired, not yet valid), checked at each call.
   */
  status(now = Date.now()): TlsCertificateStatus {
    const cert = this.identity.certificate;
    if (this.validity?.cert !== cert) {
      const x = new X509Certificate(cert);
      this.validity = { cert, notBefore: Date.parse(x.validFrom), notAfter: Date.parse(x.validTo) };
    }
    const { notBefore, notAfter } = this.validity;
    const problem =
      now > notAfter
        ? `certificate expired at ${new Date(notAfter).toISOString()}`
        : now < notBefore
          ? `certificate is not valid before ${new Date(notBefore).toISOString()}`
          : undefined;
    const ca = this.ca?.caCertificate;
    if (ca && this.caFacts?.ca !== ca) this.caFacts = { ca, certificates: caCertificates(ca) };
    return {
      certFile: this.files.certFile,
      notBefore,
      notAfter,
      mutual: this.files.clientCaFile !== undefined,
      ...(problem ? { problem } : {}),
      filesState: this.filesState,
      ...(this.files.clientCaFile && this.caFacts
        ? { clientCa: { file: this.files.clientCaFile, certificates: this.caFacts.certificates } }
        : {}),
    };
  }

  /** The client CA in use's certificates, parsed once per set. */
  private caFacts?: { ca: Buffer; certificates: CaCertificateFacts[] };

  constructor(
    private readonly files: TlsFiles,
    initial: { cert: Buffer; key: Buffer; ca?: Buffer },
    private readonly log: Logger,
  ) {
    this.identity = { certificate: initial.cert, privateKey: initial.key };
    if (initial.ca) this.ca = { caCertificate: initial.ca };
  }

  private update(u: typeof this.pending): void {
    Object.assign(this.pending, u);
    // One read gives identity and CA: apply once both are in.
    if (this.files.clientCaFile && this.pending.ca === undefined) return;
    if (this.pending.identity === undefined) return;
    const { identity, ca } = this.pending;
    this.pending = {};
    if (!identity || (this.files.clientCaFile && !ca)) {
      const why = this.unreadable;
      this.observe(
        why ? `unreadable: ${why}` : 'unreadable',
        'warn',
        why ? { err: why } : {},
        'TLS files unreadable: keeping the certificate in use',
      );
      return;
    }
    const same =
      identity.certificate.equals(this.identity.certificate) &&
      identity.privateKey.equals(this.identity.privateKey) &&
      (!ca || (this.ca !== undefined && ca.caCertificate.equals(this.ca.caCertificate)));
    if (same) {
      // The files hold the set in use; that set may have expired meanwhile (no file changed).
      const stale = check(this.identity.certificate, this.identity.privateKey, this.ca?.caCertificate);
      if (stale) {
        this.observe(
          `in use, ${stale}`,
          'warn',
          { err: stale },
          'the TLS certificate in use is no longer valid: new clients refuse it until the files are rotated',
        );
      } else this.observe('in use', 'info', {}, 'TLS files hold the certificate in use');
      return;
    }
    const bad = check(identity.certificate, identity.privateKey, ca?.caCertificate);
    if (bad) {
      // Named by the content and the reason: the same rejected files are logged once, not at every poll.
      const digest = createHash('sha256').update(identity.certificate).update(identity.privateKey);
      if (ca) digest.update(ca.caCertificate);
      this.observe(
        `rejected ${digest.digest('hex')} ${bad}`,
        'warn',
        { err: bad },
        'new TLS files rejected: keeping the certificate in use',
      );
      return;
    }
    // Which files changed: the certificate (and key), the client CA (whom the daemon trusts), or both.
    const identityChanged =
      !identity.certificate.equals(this.identity.certificate) || !identity.privateKey.equals(this.identity.privateKey);
    const caChanged = !!ca && (this.ca === undefined || !ca.caCertificate.equals(this.ca.caCertificate));
    this.identity = identity;
    if (ca) this.ca = ca;
    this.rotations++;
    const what = [identityChanged ? 'certificate' : '', caChanged ? 'client CA' : ''].filter(Boolean).join(' and ');
    this.observe(
      'in use',
      'info',
      {
        rotations: this.rotations,
        changed: [...(identityChanged ? ['certificate'] : []), ...(caChanged ? ['client CA'] : [])],
        ...(caChanged && ca
          ? {
              clientCa: this.files.clientCaFile,
              clientCaCertificates: caCertificates(ca.caCertificate).map(caLogFacts),
            }
          : {}),
      },
      `TLS ${what} reloaded`,
      true,
      identityChanged,
    );
    for (const l of this.identityListeners) l(this.identity);
    if (this.ca) for (const l of this.caListeners) l(this.ca);
  }

  /**
   * Read the files again now (SIGHUP, and every refresh period: {@link watch}; the same checks, the same log
   * lines): returns what is in use then ('in use', or why the files were not taken) and the rotations so far.
   */
  reload(): { state: string; rotations: number } {
    const problems: string[] = [];
    const read = (file: string) => {
      try {
        return readRegularFileSync(file);
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        problems.push(err.name === 'NotARegularFile' ? err.message : `${file}: ${err.code ?? err.message}`);
        return null;
      }
    };
    const cert = read(this.files.certFile);
    const key = read(this.files.keyFile);
    const ca = this.files.clientCaFile ? read(this.files.clientCaFile) : undefined;
    this.pending = {};
    this.unreadable = problems.join('; ');
    this.update({
      identity: cert && key ? { certificate: cert, privateKey: key } : null,
      ...(this.files.clientCaFile ? { ca: ca ? { caCertificate: ca } : null } : {}),
    });
    return { state: this.filesState, rotations: this.rotations };
  }

  /** Why the last read could not read every file ('' when it could), for the "unreadable" line. */
  private unreadable = '';

  /**
   * What the last poll of the files found, as a state: each line is logged at a transition only
   * (the files are read at every refresh: a rejected set used to be logged at every poll).
   */
  private filesState = 'in use';

  /** `withCert`: the line names the certificate file (false: a reload of the client CA alone names that file). */
  private observe(
    state: string,
    level: 'info' | 'warn',
    fields: object,
    msg: string,
    always = false,
    withCert = true,
  ): void {
    const changed = state !== this.filesState;
    this.filesState = state;
    // Back to the set in use after a problem is a transition too; "in use" at start is not news.
    if (changed || always) this.log[level]({ ...(withCert ? { cert: this.files.certFile } : {}), ...fields }, msg);
  }

  private watch(): void {
    const want = this.identityListeners.size + this.caListeners.size > 0;
    if (want && !this.timer) {
      this.timer = setInterval(() => this.reload(), this.files.refreshMs ?? 60_000);
      this.timer.unref?.();
    } else if (!want && this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  currentIdentity(): experimental.IdentityCertificateUpdate {
    return this.identity;
  }
  currentCa(): experimental.CaCertificateUpdate | undefined {
    return this.ca;
  }

  addIdentityCertificateListener(l: IdentityListener): void {
    this.identityListeners.add(l);
    this.watch();
    process.nextTick(l, this.identity);
  }
  removeIdentityCertificateListener(l: IdentityListener): void {
    this.identityListeners.delete(l);
    this.watch();
  }
  addCaCertificateListener(l: CaListener): void {
    this.caListeners.add(l);
    this.watch();
    if (this.ca) process.nextTick(l, this.ca);
  }
  removeCaCertificateListener(l: CaListener): void {
    this.caListeners.delete(l);
    this.watch();
  }
}

/**
 * The current checked set as Node's TLS options take it, for listeners that are not grpc-js (the
 * HTTP/JSON listener, http-json.ts): the same files, checks and rotations as the gRPC listeners.
 */
export interface TlsMaterial {
  current(): { cert: Buffer; key: Buffer; ca?: Buffer };
  /** Client certificates signed by the client CA are required (mutual TLS). */
  requireClientCert: boolean;
  /** Called with every new valid set; returns the unsubscribe function. */
  onUpdate(listener: (set: { cert: Buffer; key: Buffer; ca?: Buffer }) => void): () => void;
}

function materialOf(provider: CheckedProvider, mutual: boolean): TlsMaterial {
  let cert: Buffer;
  let key: Buffer;
  let ca: Buffer | undefined;
  const listeners = new Set<(set: { cert: Buffer; key: Buffer; ca?: Buffer }) => void>();
  // The provider announces identity, then CA, for one rotation (both already checked together).
  const onIdentity: IdentityListener = (u) => {
    if (!u) return;
    cert = u.certificate;
    key = u.privateKey;
    if (!mutual) for (const l of listeners) l({ cert, key });
  };
  const onCa: CaListener = (u) => {
    if (!u) return;
    ca = u.caCertificate;
    for (const l of listeners) l({ cert, key, ca });
  };
  ({ certificate: cert, privateKey: key } = provider.currentIdentity());
  ca = provider.currentCa()?.caCertificate;
  return {
    current: () => ({ cert, key, ...(ca ? { ca } : {}) }),
    requireClientCert: mutual,
    onUpdate(l) {
      if (listeners.size === 0) {
        provider.addIdentityCertificateListener(onIdentity);
        if (mutual) provider.addCaCertificateListener(onCa);
      }
      listeners.add(l);
      return () => {
        listeners.delete(l);
        if (listeners.size === 0) {
          provider.removeIdentityCertificateListener(onIdentity);
          if (mutual) provider.removeCaCertificateListener(onCa);
        }
      };
    },
  };
}

/** Server credentials for TCP listeners that reload rotated certificates. */
export function reloadingServerCredentials(
  files: TlsFiles,
  log: Logger,
): {
  credentials: ServerCredentials;
  provider: { rotations: number; reload(): { state: string; rotations: number }; status(): TlsCertificateStatus };
  material: TlsMaterial;
} {
  const read = (what: string, file: string) => {
    try {
      return readRegularFileSync(file);
    } catch (e) {
      throw new TlsFilesError(`read ${what} ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  };
  const cert = read('TLS certificate', files.certFile);
  const key = read('TLS key', files.keyFile);
  const ca = files.clientCaFile ? read('client CA', files.clientCaFile) : undefined;
  const bad = check(cert, key, ca);
  if (bad) throw new TlsFilesError(`TLS files ${files.certFile} and ${files.keyFile}: ${bad}`);
  const provider = new CheckedProvider(files, { cert, key, ca }, log);
  // grpc-js 1.14 passes its first argument to the identity role and its second
  // (nullable) to the CA role, whatever the declared parameter names say; one
  // provider serving both roles is right either way.
  const credentials = experimental.createCertificateProviderServerCredentials(
    provider,
    ca ? provider : null,
    ca !== undefined,
  );
  return { credentials, provider, material: materialOf(provider, ca !== undefined) };
}

/** At most this many refused handshakes are logged per reason and window; the rest are counted. */
export const HANDSHAKE_LOG_BURST = 5;
export const HANDSHAKE_LOG_WINDOW_MS = 10_000;

/**
 * A refused TLS handshake's reason in a few words: the client certificate's
 * verification result (`authorizationError`, an OpenSSL X509_V_ERR name) when
 * there is one, else from OpenSSL's message.
 */
export function handshakeReason(
  err: Error & { code?: string; reason?: string },
  authorizationError?: string,
  ours: OwnCertificate = {},
): string {
  const m = err.message;
  // An alert RECEIVED from the client (OpenSSL: "tlsv1 alert unknown ca", "ssl/tls alert certificate
  // expired ... SSL alert number 45"): the client's verdict on OUR certificate (a client judges only the
  // server's), never a fault of a client certificate; what we know of ours is said with it.
  const alert = /\balert ([a-z][a-z ]*[a-z])/i.exec(err.reason ?? '') ?? /\balert ([a-z][a-z ]*[a-z])/i.exec(m);
  if (alert && !/alert number/i.test(alert[0])) {
    const name = alert[1].toLowerCase().replace(/ /g, '_');
    const ownState = ownCertificateState(ours);
    if (CERTIFICATE_ALERTS.has(name)) return `the client refused our certificate: ${name} (${ownState})`;
    return `the client ended the handshake with alert ${name} (${ownState})`;
  }
  // Without --tls-client-ca no client certificate is asked for: nothing below may blame one.
  if (ours.mutual === false) authorizationError = undefined;
  switch (authorizationError) {
    case undefined:
    case null:
      break;
    case 'CERT_HAS_EXPIRED':
      return 'the client certificate has expired';
    case 'CERT_NOT_YET_VALID':
      return 'the client certificate is not yet valid';
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'CERT_SIGNATURE_FAILURE':
      return `the client certificate is not signed by --tls-client-ca (${authorizationError})`;
    default:
      return `the client certificate was refused (${authorizationError})`;
  }
  if (/wrong version number|http request|packet length too long|unknown protocol/i.test(m)) {
    return 'the client does not speak TLS (plaintext to a TLS port)';
  }
  if (ours.mutual !== false) {
    if (/peer did not return a certificate|certificate required/i.test(m)) return 'the client sent no certificate';
    if (/certificate has expired|certificate expired/i.test(m)) return 'the client certificate has expired';
    if (/certificate is not yet valid/i.test(m)) return 'the client certificate is not yet valid';
    if (/unknown ca|unable to get local issuer|self[- ]signed|certificate verify failed|unable to verify/i.test(m)) {
      return 'the client certificate is not signed by --tls-client-ca';
    }
  }
  if (err.code === 'ERR_TLS_HANDSHAKE_TIMEOUT' || /handshake timeout/i.test(m)) {
    return 'no TLS handshake within --preface-timeout-seconds';
  }
  if (/ECONNRESET|socket hang up|timed out/i.test(m)) {
    // A client that refuses our certificate may close without an alert (Node's TLS client does): when
    // ours is not valid now, that is the likely cause, and the daemon knows it.
    const problem = ours.notAfter === undefined ? undefined : ownCertificateProblem(ours);
    return problem
      ? `the client went away during the handshake (${problem}: clients refuse it)`
      : 'the client went away during the handshake';
  }
  return err.reason ?? err.code ?? m;
}

/** What the daemon knows of the certificate it serves, for a refused handshake's reason. */
export interface OwnCertificate {
  /** Validity of the certificate in use (ms since the epoch). */
  notBefore?: number;
  notAfter?: number;
  /** Whether client certificates are asked for (--tls-client-ca); false: no reason may blame one. */
  mutual?: boolean;
  now?: number;
}

/** TLS alerts (RFC 8446 6.2) a client sends about the server's certificate. */
const CERTIFICATE_ALERTS = new Set([
  'bad_certificate',
  'unsupported_certificate',
  'certificate_revoked',
  'certificate_expired',
  'certificate_unknown',
  'unknown_ca',
]);

/** Why our certificate is not valid now, or undefined (valid, or not known). */
function ownCertificateProblem(o: OwnCertificate): string | undefined {
  const now = o.now ?? Date.now();
  if (o.notAfter !== undefined && now > o.notAfter) return `ours expired at ${new Date(o.notAfter).toISOString()}`;
  if (o.notBefore !== undefined && now < o.notBefore) {
    return `ours is not valid before ${new Date(o.notBefore).toISOString()}`;
  }
  return undefined;
}

function ownCertificateState(o: OwnCertificate): string {
  if (o.notAfter === undefined) return 'ours not known here';
  return ownCertificateProblem(o) ?? `ours is valid until ${new Date(o.notAfter).toISOString()}`;
}

let handshakeLog: ((err: Error, socket: TLSSocket) => void) | undefined;

/**
 * The peer of each TCP connection of a TLS server, written down when it is accepted: a socket refused
 * in or after its handshake (a timeout, a reset, a refused certificate) has lost its address by the time
 * 'tlsClientError' is emitted, and the TLS socket names the accepted one as its `_parent`.
 */
const acceptedPeers = new WeakMap<object, string>();

/** A TLS socket's peer as every log line writes it (addr:port), from the socket or from its accept. */
export function tlsPeer(socket: TLSSocket): string {
  if (socket.remoteAddress) return formatPeer(socket.remoteAddress, socket.remotePort);
  const parent = (socket as unknown as { _parent?: object | null })._parent;
  return (parent && acceptedPeers.get(parent)) ?? acceptedPeers.get(socket) ?? 'unknown (address not recorded)';
}

/**
 * Log every refused TLS handshake on the TCP listeners (peer, reason) at a
 * bounded rate: at most HANDSHAKE_LOG_BURST lines per reason per HANDSHAKE_LOG_WINDOW_MS,
 * then one line with the number left out. grpc-js creates its TLS servers
 * inside and offers no hook for their 'tlsClientError' event, so
 * http2.createSecureServer is wrapped (once per process) to add the listener;
 * the servers are otherwise exactly what grpc-js asked for.
 */
export function logRefusedHandshakes(log: Logger, ours: () => OwnCertificate = () => ({})): void {
  let windowStart = 0;
  // Per reason, so that a flood of one kind (plaintext probes) does not hide another (a bad certificate).
  const logged = new Map<string, number>();
  let suppressed = 0;
  handshakeLog = (err, socket) => {
    const now = monotonicMs(); // a window, not a time: a wall-clock step neither ends nor stretches it
    if (now - windowStart >= HANDSHAKE_LOG_WINDOW_MS) {
      if (suppressed) {
        log.warn(
          { suppressed, windowMs: HANDSHAKE_LOG_WINDOW_MS },
          `${suppressed} more refused TLS handshakes not logged`,
        );
      }
      windowStart = now;
      logged.clear();
      suppressed = 0;
    }
    const authError = socket.authorizationError as unknown as string | undefined; // an X509_V_ERR name, typed as Error
    let own: OwnCertificate = {};
    try {
      own = ours();
    } catch {
      // the certificate in use does not parse here: say nothing of it
    }
    const reason = handshakeReason(err, authError ?? undefined, own);
    const n = logged.get(reason) ?? 0;
    if (n >= HANDSHAKE_LOG_BURST) {
      suppressed++;
      return;
    }
    logged.set(reason, n + 1);
    log.warn({ peer: tlsPeer(socket), reason, err: err.message.trim() }, 'TLS handshake refused');
  };
  const wrapped = http2 as typeof http2 & { xdpctlWrapped?: boolean };
  if (wrapped.xdpctlWrapped) return;
  wrapped.xdpctlWrapped = true;
  const create = http2.createSecureServer;
  http2.createSecureServer = ((...args: Parameters<typeof create>) => {
    const server = create(...args);
    // The peer as accepted, before TLS: the refused socket has lost it by 'tlsClientError'.
    server.prependListener('connection', (raw: Socket) => {
      if (raw.remoteAddress) acceptedPeers.set(raw, formatPeer(raw.remoteAddress, raw.remotePort));
    });
    server.on('tlsClientError', (err: Error, socket: TLSSocket) => handshakeLog?.(err, socket));
    return server;
  }) as typeof create;
}
