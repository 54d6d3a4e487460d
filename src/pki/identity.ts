// The daemon's own TLS identity, served through grpc-js's certificate-provider
// credentials so a renewed pair can be published without rebinding the port.
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { experimental, type ServerCredentials } from '@grpc/grpc-js';
import { TrustBundle } from './trust.js';

export interface TlsFiles {
  readonly caFile: string;
  readonly certFile: string;
  readonly keyFile: string;
}

export interface LoadedIdentity {
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly trust: TrustBundle;
  readonly leaf: X509Certificate;
}

export class TlsConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TlsConfigError';
  }
}

function read(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new TlsConfigError(`${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}

/** Reads and validates the pair and the CA bundle: only a usable set is ever published. */
export function loadIdentity(files: TlsFiles, now = Date.now()): LoadedIdentity {
  const ca = read(files.caFile, 'CA bundle');
  const cert = read(files.certFile, 'server certificate');
  const key = read(files.keyFile, 'server key');
  let trust: TrustBundle;
  let leaf: X509Certificate;
  try {
    trust = TrustBundle.fromPem(ca);
  } catch (err) {
    throw new TlsConfigError(`CA bundle ${files.caFile}: ${(err as Error).message}`);
  }
  try {
    leaf = new X509Certificate(cert);
  } catch (err) {
    throw new TlsConfigError(`server certificate ${files.certFile}: ${(err as Error).message}`);
  }
  try {
    if (!leaf.checkPrivateKey(createPrivateKey(key))) {
      throw new TlsConfigError(`server key ${files.keyFile} does not match certificate ${files.certFile}`);
    }
  } catch (err) {
    if (err instanceof TlsConfigError) throw err;
    throw new TlsConfigError(`server key ${files.keyFile}: ${(err as Error).message}`);
  }
  if (now < leaf.validFromDate.getTime() || now > leaf.validToDate.getTime()) {
    throw new TlsConfigError(`server certificate ${files.certFile} is outside its validity period (${leaf.validFrom} – ${leaf.validTo})`);
  }
  return { ca, cert, key, trust, leaf };
}

/**
 * Serves one identity and CA bundle to grpc-js. It is passed as both the CA and
 * the identity provider because grpc-js swaps the two arguments internally.
 */
export class IdentityProvider implements experimental.CertificateProvider {
  private current: LoadedIdentity;
  private readonly caListeners = new Set<experimental.CaCertificateUpdateListener>();
  private readonly identityListeners = new Set<experimental.IdentityCertificateUpdateListener>();

  constructor(initial: LoadedIdentity) {
    this.current = initial;
  }

  get identity(): LoadedIdentity {
    return this.current;
  }

  /** Publishes a new validated set if it differs from the one being served. */
  publish(next: LoadedIdentity): boolean {
    const changed = !next.cert.equals(this.current.cert) || !next.key.equals(this.current.key) || !next.ca.equals(this.current.ca);
    if (!changed) return false;
    this.current = next;
    for (const listener of this.caListeners) listener({ caCertificate: next.ca });
    for (const listener of this.identityListeners) listener({ certificate: next.cert, privateKey: next.key });
    return true;
  }

  addCaCertificateListener(listener: experimental.CaCertificateUpdateListener): void {
    this.caListeners.add(listener);
    // Deliver asynchronously: grpc-js subscribes before it registers the watcher that
    // applies updates, so a synchronous first update would be lost.
    queueMicrotask(() => listener({ caCertificate: this.current.ca }));
  }

  removeCaCertificateListener(listener: experimental.CaCertificateUpdateListener): void {
    this.caListeners.delete(listener);
  }

  addIdentityCertificateListener(listener: experimental.IdentityCertificateUpdateListener): void {
    this.identityListeners.add(listener);
    queueMicrotask(() => listener({ certificate: this.current.cert, privateKey: this.current.key }));
  }

  removeIdentityCertificateListener(listener: experimental.IdentityCertificateUpdateListener): void {
    this.identityListeners.delete(listener);
  }
}

/**
 * What the daemon offers: the TLS 1.3 suites (all AEAD) and, for TLS 1.2, only ECDHE with
 * AES-GCM or ChaCha20-Poly1305. Node's default list also offers CBC suites, which HTTP/2
 * forbids (RFC 9113 §9.2.2 / appendix A) and which have a history of padding-oracle attacks.
 */
export const AEAD_CIPHERS = [
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'TLS_AES_128_GCM_SHA256',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

/**
 * grpc-js's own TLS over the provider, requesting but not requiring a client certificate. The
 * daemon terminates TLS itself (src/daemon/connections.ts); the chain benchmark's bare server
 * (bench/bare-server.ts) serves through this.
 */
export function serverCredentials(provider: IdentityProvider): ServerCredentials {
  return experimental.createCertificateProviderServerCredentials(provider, provider, false);
}
