// A CA directory on disk, as `debvisorctl pki` and the daemon's local-ca renewal
// use it: ca-cert.pem, ca-key.pem (0600), crl.pem, and <name>-cert.pem /
// <name>-key.pem leaf pairs.
import { X509Certificate as NodeX509, createPrivateKey } from 'node:crypto';
import { chmod, mkdir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { createCa } from './ca.js';
import { refreshCrl } from './crl.js';
import { CERTIFICATE_MODE, PRIVATE_KEY_MODE, writeFileAtomic, writeNewFileExclusive } from './files.js';
import { describeCertificate, publicKeyMatches, splitPemCertificates, type CertificateInfo } from './inspect.js';
import { issueCertificate } from './issue.js';
import type { CaKeyAlgorithm, PemPair } from './types.js';

export interface CaDirectory {
  dir: string;
  caCert: string;
  caKey: string;
  crl: string;
}

export function caDirectory(dir: string): CaDirectory {
  const abs = resolve(dir);
  return { dir: abs, caCert: join(abs, 'ca-cert.pem'), caKey: join(abs, 'ca-key.pem'), crl: join(abs, 'crl.pem') };
}

export class CaExistsError extends Error {
  constructor(readonly path: string) {
    super(`${path} already exists; an existing CA is never overwritten (move it away first if you really mean to replace it)`);
    this.name = 'CaExistsError';
  }
}

export interface InitCaOptions {
  commonName: string;
  algorithm?: CaKeyAlgorithm;
  validityDays?: number;
  /** nextUpdate of the initial (empty) CRL. Default 30 days. */
  crlValidityDays?: number;
}

/** Create a CA (and an empty CRL) in `dir`. Refuses if any CA file is already there. */
export async function initCa(dir: string, opts: InitCaOptions): Promise<{ paths: CaDirectory; ca: PemPair }> {
  const paths = caDirectory(dir);
  const created = await mkdir(paths.dir, { recursive: true, mode: 0o750 });
  if (created !== undefined) await chmod(paths.dir, 0o750);
  for (const file of [paths.caKey, paths.caCert]) {
    if (await exists(file)) throw new CaExistsError(file);
  }
  const ca = await createCa({
    commonName: opts.commonName,
    algorithm: opts.algorithm ?? 'ecdsa-p256',
    validityDays: opts.validityDays ?? 3650,
  });
  try {
    // Key first, both exclusive: a concurrent init or an existing file wins, never us.
    await writeNewFileExclusive(paths.caKey, ca.keyPem, PRIVATE_KEY_MODE);
    await writeNewFileExclusive(paths.caCert, ca.certPem, CERTIFICATE_MODE);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new CaExistsError(paths.dir);
    throw err;
  }
  if (!(await exists(paths.crl))) {
    await writeFileAtomic(paths.crl, await refreshCrl({ ca, ...(opts.crlValidityDays !== undefined && { validityDays: opts.crlValidityDays }) }), CERTIFICATE_MODE);
  }
  return { paths, ca };
}

/** Read and check the CA of a directory (or explicit files). */
export async function loadCa(certFile: string, keyFile: string): Promise<PemPair> {
  let certPem: string;
  let keyPem: string;
  try {
    [certPem, keyPem] = await Promise.all([readFile(certFile, 'utf8'), readFile(keyFile, 'utf8')]);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new Error(`cannot read the CA: ${e.path ?? ''}: ${e.code ?? e.message}`, { cause: err });
  }
  const issuer = issuerForKey(certPem, keyPem);
  if (!issuer) throw new Error(`${keyFile} is not the key of any CA certificate in ${certFile}`);
  return { certPem: issuer, keyPem };
}

/**
 * The CA certificate in `bundlePem` whose public key belongs to `keyPem`. During a
 * CA rollover the bundle holds old and new CA; the key picks the one that signs.
 */
export function issuerForKey(bundlePem: string, keyPem: string): string | undefined {
  createPrivateKey(keyPem); // throws a clear error for a non-key file
  return splitPemCertificates(bundlePem).find((pem) => {
    const cert = new NodeX509(pem);
    return cert.ca && publicKeyMatches(cert, keyPem);
  });
}

/** Write a leaf pair: key first, each file atomically (see ensureDevPki for why this order). */
export async function writeLeafFiles(certFile: string, keyFile: string, pair: PemPair): Promise<void> {
  await writeFileAtomic(keyFile, pair.keyPem, PRIVATE_KEY_MODE);
  await writeFileAtomic(certFile, pair.certPem, CERTIFICATE_MODE);
}

export interface RenewOptions {
  ca: PemPair;
  /** The certificate to renew: its subject CN, SANs and profile are kept. */
  certPem: string;
  validityDays?: number;
}

/** A new certificate with the same CN, SANs and profile as `certPem`, and a fresh key. */
export async function renewCertificate(opts: RenewOptions): Promise<{ pair: PemPair; previous: CertificateInfo; next: CertificateInfo }> {
  const previous = describeCertificate(opts.certPem);
  if (previous.isCa) throw new Error('refusing to renew a CA certificate as a leaf');
  if (!previous.commonName) throw new Error(`certificate ${previous.subject} has no CommonName to keep`);
  const pair = await issueCertificate({
    ca: opts.ca,
    profile: previous.profile ?? 'server',
    commonName: previous.commonName,
    ...previous.sans,
    validityDays: opts.validityDays ?? Math.max(1, Math.round((previous.notAfter.getTime() - previous.notBefore.getTime()) / 86_400_000)),
  });
  return { pair, previous, next: describeCertificate(pair.certPem) };
}

async function exists(file: string): Promise<boolean> {
  try {
    await readFile(file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}
