/**
 * TLS server credentials that follow their files: a service mesh (SPIRE,
 * cert-manager's csi-driver-spiffe, Istio) rotates short-lived certificates
 * by rewriting them in place, and a daemon that read them once at start
 * would serve an expired certificate within the hour.
 *
 * grpc-js's FileWatcherCertificateProvider re-reads the files; on top of it
 * this module checks every new set before it is used (key matches
 * certificate, PEM parses) and keeps the last good set otherwise: a rotation
 * caught half-written (new certificate, old key) must not take the listener
 * down. Files are read and checked once synchronously at start, so a wrong
 * path or a broken pair stops the start with a precise message.
 */
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';

import { experimental, type ServerCredentials } from '@grpc/grpc-js';

import type { Logger } from './log.js';

export interface TlsFiles {
  certFile: string;
  keyFile: string;
  /** With it, clients must present a certificate this CA signed (mutual TLS). */
  clientCaFile?: string;
  /** How often the files are re-read (default 60 s). */
  refreshMs?: number;
}

type IdentityListener = experimental.IdentityCertificateUpdateListener;
type CaListener = experimental.CaCertificateUpdateListener;

/** Thrown at start when the files are unreadable or do not form a valid set. */
export class TlsFilesError extends Error {
  override readonly name = 'TlsFilesError';
}

function check(cert: Buffer, key: Buffer, ca?: Buffer): string | undefined {
  try {
    createSecureContext({ cert, key, ca });
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}

/**
 * A CertificateProvider that forwards the file watcher's updates only when
 * the certificate, key and CA are valid together.
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
  private readonly onIdentity: IdentityListener = (u) => this.update({ identity: u });
  private readonly onCa: CaListener = (u) => this.update({ ca: u });
  private watching = false;
  /** Number of rotations applied (tests, logs). */
  rotations = 0;

  constructor(
    private readonly files: TlsFiles,
    private readonly watcher: experimental.FileWatcherCertificateProvider,
    initial: { cert: Buffer; key: Buffer; ca?: Buffer },
    private readonly log: Logger,
  ) {
    this.identity = { certificate: initial.cert, privateKey: initial.key };
    if (initial.ca) this.ca = { caCertificate: initial.ca };
  }

  private update(u: typeof this.pending): void {
    Object.assign(this.pending, u);
    // The watcher reports identity then CA for one read: apply once both are in.
    if (this.files.clientCaFile && this.pending.ca === undefined) return;
    if (this.pending.identity === undefined) return;
    const { identity, ca } = this.pending;
    this.pending = {};
    if (!identity || (this.files.clientCaFile && !ca)) {
      this.log.warn({ cert: this.files.certFile }, 'TLS files unreadable: keeping the certificate in use');
      return;
    }
    const same =
      identity.certificate.equals(this.identity.certificate) &&
      identity.privateKey.equals(this.identity.privateKey) &&
      (!ca || (this.ca !== undefined && ca.caCertificate.equals(this.ca.caCertificate)));
    if (same) return;
    const bad = check(identity.certificate, identity.privateKey, ca?.caCertificate);
    if (bad) {
      this.log.warn({ cert: this.files.certFile, err: bad }, 'new TLS files rejected: keeping the certificate in use');
      return;
    }
    this.identity = identity;
    if (ca) this.ca = ca;
    this.rotations++;
    this.log.info({ cert: this.files.certFile, rotations: this.rotations }, 'TLS certificate reloaded');
    for (const l of this.identityListeners) l(this.identity);
    if (this.ca) for (const l of this.caListeners) l(this.ca);
  }

  private watch(): void {
    const want = this.identityListeners.size + this.caListeners.size > 0;
    if (want && !this.watching) {
      this.watcher.addIdentityCertificateListener(this.onIdentity);
      if (this.files.clientCaFile) this.watcher.addCaCertificateListener(this.onCa);
    } else if (!want && this.watching) {
      this.watcher.removeIdentityCertificateListener(this.onIdentity);
      if (this.files.clientCaFile) this.watcher.removeCaCertificateListener(this.onCa);
    }
    this.watching = want;
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

/** Server credentials for TCP listeners that reload rotated certificates. */
export function reloadingServerCredentials(
  files: TlsFiles,
  log: Logger,
): { credentials: ServerCredentials; provider: { rotations: number } } {
  const read = (what: string, file: string) => {
    try {
      return readFileSync(file);
    } catch (e) {
      throw new TlsFilesError(`read ${what} ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  };
  const cert = read('TLS certificate', files.certFile);
  const key = read('TLS key', files.keyFile);
  const ca = files.clientCaFile ? read('client CA', files.clientCaFile) : undefined;
  const bad = check(cert, key, ca);
  if (bad) throw new TlsFilesError(`TLS files ${files.certFile} and ${files.keyFile}: ${bad}`);
  const watcher = new experimental.FileWatcherCertificateProvider({
    certificateFile: files.certFile,
    privateKeyFile: files.keyFile,
    caCertificateFile: files.clientCaFile,
    refreshIntervalMs: files.refreshMs ?? 60_000,
  });
  const provider = new CheckedProvider(files, watcher, { cert, key, ca }, log);
  // grpc-js 1.14 passes its first argument to the identity role and its second
  // (nullable) to the CA role, whatever the declared parameter names say; one
  // provider serving both roles is right either way.
  const credentials = experimental.createCertificateProviderServerCredentials(
    provider,
    ca ? provider : null,
    ca !== undefined,
  );
  return { credentials, provider };
}
