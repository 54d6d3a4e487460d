// Development PKI: a local CA plus server and admin certificates, created on
// first use and reused afterwards.
import { X509Certificate as NodeX509, createPrivateKey } from 'node:crypto';
import { chmod, mkdir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createCa } from './ca.js';
import { CERTIFICATE_MODE, PRIVATE_KEY_MODE, writeFileAtomic, writeNewFileExclusive } from './files.js';
import { issueCertificate } from './issue.js';
import type { CaKeyAlgorithm, PemPair } from './types.js';
import { daysToMs } from './validity.js';

export const DEV_CA_COMMON_NAME = 'DebVisor Dev CA';
export const DEV_ADMIN_PRINCIPAL = 'spiffe://debvisor/admin/admin';

export interface DevPkiOptions {
  /** Only used when the CA is first created. Default 'ecdsa-p256'. */
  caAlgorithm?: CaKeyAlgorithm;
  /** Only used when the CA is first created. Default 3650. */
  caValidityDays?: number;
  /** Validity of (re)issued server/admin certs. Default 365. */
  leafValidityDays?: number;
  /** Re-issue a server/admin cert expiring within this many days. Default 7. */
  renewBeforeDays?: number;
  /** Clock, for tests. */
  now?: Date;
}

export interface DevPkiPaths {
  dir: string;
  caCert: string;
  caKey: string;
  serverCert: string;
  serverKey: string;
  adminCert: string;
  adminKey: string;
  adminPrincipal: typeof DEV_ADMIN_PRINCIPAL;
}

/**
 * Ensure `dir` holds a usable dev PKI and return the file paths.
 *
 * The CA is never regenerated: regenerating would silently invalidate every
 * client cert already handed out. A missing, expiring, mismatched, or
 * foreign-signed server/admin cert is re-issued from the existing CA.
 */
export async function ensureDevPki(dir: string, opts: DevPkiOptions = {}): Promise<DevPkiPaths> {
  const abs = resolve(dir);
  // Why serialize per directory: two overlapping calls could each re-issue a
  // leaf and interleave their key/cert writes, leaving a mismatched pair.
  // (Cross-process races are not covered; the next call repairs a mismatch.)
  const prev = inFlight.get(abs) ?? Promise.resolve();
  const next = prev.catch(() => undefined).then(() => ensureDevPkiUnlocked(abs, opts));
  inFlight.set(abs, next);
  try {
    return await next;
  } finally {
    if (inFlight.get(abs) === next) inFlight.delete(abs);
  }
}

const inFlight = new Map<string, Promise<DevPkiPaths>>();

async function ensureDevPkiUnlocked(abs: string, opts: DevPkiOptions): Promise<DevPkiPaths> {
  const created = await mkdir(abs, { recursive: true, mode: 0o700 });
  // mkdir's mode is filtered by the umask; only tighten a dir we created.
  if (created !== undefined) await chmod(abs, 0o700);

  const paths: DevPkiPaths = {
    dir: abs,
    caCert: join(abs, 'ca-cert.pem'),
    caKey: join(abs, 'ca-key.pem'),
    serverCert: join(abs, 'server-cert.pem'),
    serverKey: join(abs, 'server-key.pem'),
    adminCert: join(abs, 'admin-cert.pem'),
    adminKey: join(abs, 'admin-key.pem'),
    adminPrincipal: DEV_ADMIN_PRINCIPAL,
  };
  const now = opts.now ?? new Date();
  const ca = await ensureCa(paths, opts, now);
  const leafOpts = {
    validityDays: opts.leafValidityDays ?? 365,
    renewBeforeMs: daysToMs(opts.renewBeforeDays ?? 7),
    now,
  };

  await ensureLeaf(paths.serverCert, paths.serverKey, ca, leafOpts, () =>
    issueCertificate({
      ca,
      profile: 'server',
      commonName: 'localhost',
      dnsNames: ['localhost'],
      ipAddresses: ['127.0.0.1'],
      validityDays: leafOpts.validityDays,
    }),
  );
  await ensureLeaf(paths.adminCert, paths.adminKey, ca, leafOpts, () =>
    issueCertificate({
      ca,
      profile: 'client',
      commonName: 'admin',
      uris: [DEV_ADMIN_PRINCIPAL],
      validityDays: leafOpts.validityDays,
    }),
  );
  return paths;
}

async function ensureCa(paths: DevPkiPaths, opts: DevPkiOptions, now: Date): Promise<PemPair> {
  const existing = await readPair(paths.caCert, paths.caKey);
  if (existing.certPem !== undefined && existing.keyPem !== undefined) {
    return validateExistingCa({ certPem: existing.certPem, keyPem: existing.keyPem }, paths, now);
  }
  if (existing.certPem !== undefined || existing.keyPem !== undefined) {
    throw incompleteCaError(paths);
  }

  const ca = await createCa({
    commonName: DEV_CA_COMMON_NAME,
    algorithm: opts.caAlgorithm ?? 'ecdsa-p256',
    validityDays: opts.caValidityDays ?? 3650,
  });
  try {
    // Key first: a crash in between leaves key-without-cert, which we refuse
    // to "repair" (see incompleteCaError) rather than guess.
    await writeNewFileExclusive(paths.caKey, ca.keyPem, PRIVATE_KEY_MODE);
    await writeNewFileExclusive(paths.caCert, ca.certPem, CERTIFICATE_MODE);
    return ca;
  } catch (err) {
    if (!isErrnoCode(err, 'EEXIST')) throw err;
    // Another process created the CA concurrently: use theirs.
    return waitForCa(paths, now);
  }
}

async function waitForCa(paths: DevPkiPaths, now: Date): Promise<PemPair> {
  for (let i = 0; i < 50; i++) {
    const { certPem, keyPem } = await readPair(paths.caCert, paths.caKey);
    if (certPem !== undefined && keyPem !== undefined) return validateExistingCa({ certPem, keyPem }, paths, now);
    await sleep(100);
  }
  throw incompleteCaError(paths);
}

function validateExistingCa(ca: PemPair, paths: DevPkiPaths, now: Date): PemPair {
  const cert = new NodeX509(ca.certPem);
  if (!cert.ca) throw new Error(`${paths.caCert} is not a CA certificate`);
  if (!cert.checkPrivateKey(createPrivateKey(ca.keyPem))) {
    throw new Error(`${paths.caKey} does not match ${paths.caCert}`);
  }
  if (cert.validToDate.getTime() <= now.getTime()) {
    throw new Error(
      `dev CA ${paths.caCert} expired at ${cert.validToDate.toISOString()}; it is never regenerated ` +
        `automatically. Delete ${paths.dir} to start a new dev PKI (all issued certs become invalid).`,
    );
  }
  return ca;
}

function incompleteCaError(paths: DevPkiPaths): Error {
  return new Error(
    `incomplete dev CA in ${paths.dir}: need both ca-cert.pem and ca-key.pem. Refusing to regenerate; ` +
      `remove the remaining CA file to create a new CA.`,
  );
}

interface LeafPolicy {
  renewBeforeMs: number;
  now: Date;
}

async function ensureLeaf(
  certPath: string,
  keyPath: string,
  ca: PemPair,
  policy: LeafPolicy,
  issue: () => Promise<PemPair>,
): Promise<void> {
  const { certPem, keyPem } = await readPair(certPath, keyPath);
  if (certPem !== undefined && keyPem !== undefined && leafIsUsable(certPem, keyPem, ca, policy)) return;

  const leaf = await issue();
  // Key before cert: after a crash between the two writes the pair
  // mismatches, which leafIsUsable detects, so the next run re-issues.
  await writeFileAtomic(keyPath, leaf.keyPem, PRIVATE_KEY_MODE);
  await writeFileAtomic(certPath, leaf.certPem, CERTIFICATE_MODE);
}

function leafIsUsable(certPem: string, keyPem: string, ca: PemPair, policy: LeafPolicy): boolean {
  try {
    const cert = new NodeX509(certPem);
    const caCert = new NodeX509(ca.certPem);
    const now = policy.now.getTime();
    return (
      cert.checkIssued(caCert) &&
      cert.verify(caCert.publicKey) &&
      cert.checkPrivateKey(createPrivateKey(keyPem)) &&
      cert.validFromDate.getTime() <= now &&
      cert.validToDate.getTime() - policy.renewBeforeMs > now
    );
  } catch {
    return false; // unparsable file: treat as missing
  }
}

async function readPair(certPath: string, keyPath: string): Promise<{ certPem?: string; keyPem?: string }> {
  const [certPem, keyPem] = await Promise.all([readOptional(certPath), readOptional(keyPath)]);
  return {
    ...(certPem !== undefined && { certPem }),
    ...(keyPem !== undefined && { keyPem }),
  };
}

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if (isErrnoCode(err, 'ENOENT')) return undefined;
    throw err;
  }
}

function isErrnoCode(err: unknown, code: string): boolean {
  return err instanceof Error && (err as NodeJS.ErrnoException).code === code;
}
