// Certificate revocation lists signed by our CA. The CRL file is the whole state:
// revoking reads the current list, adds the serial and re-signs it with the next
// CRL number. The daemon reads it with src/authn/crl.ts.
import { X509Certificate as NodeX509, type webcrypto } from 'node:crypto';
import { x509, nodeCrypto } from './x509.js';
import { importSigningKey, parseCertificatePem } from './pem.js';
import type { PemPair } from './types.js';
import { daysToMs } from './validity.js';

export const REVOCATION_REASONS = [
  'unspecified',
  'keyCompromise',
  'cACompromise',
  'affiliationChanged',
  'superseded',
  'cessationOfOperation',
  'certificateHold',
  'privilegeWithdrawn',
] as const;
export type RevocationReason = (typeof REVOCATION_REASONS)[number];

export interface RevokedEntry {
  /** Upper-case hex without leading zeros (see normalizeSerialHex). */
  serialNumber: string;
  revocationDate: Date;
  reason?: RevocationReason | undefined;
}

export interface CrlInfo {
  issuer: string;
  thisUpdate: Date;
  nextUpdate: Date | undefined;
  crlNumber: bigint | undefined;
  entries: RevokedEntry[];
}

const OID_CRL_NUMBER = '2.5.29.20';

/**
 * Accepts the spellings operators paste: "4A:0B:...", "0x4a0b...", "4a 0b".
 * Returns upper-case hex without leading zeros, as Node and src/authn/crl.ts print serials.
 */
export function normalizeSerialHex(serial: string): string {
  const hex = serial.trim().replace(/^0x/i, '').replace(/[:\s]/g, '');
  if (!/^[0-9a-fA-F]+$/.test(hex)) throw new Error(`invalid serial number "${serial}": expected hex`);
  if (hex.length > 40) throw new Error(`invalid serial number "${serial}": longer than 20 bytes`);
  return hex.toUpperCase().replace(/^0+(?=.)/, '');
}

export interface CreateCrlOptions {
  ca: PemPair;
  entries: readonly RevokedEntry[];
  /** Monotonic CRL number (RFC 5280 §5.2.3). */
  crlNumber: bigint;
  /** nextUpdate = thisUpdate + this many days. Default 30. */
  validityDays?: number;
  now?: Date;
}

/** Sign a CRL over `entries` with the CA key. */
export async function createCrl(opts: CreateCrlOptions): Promise<string> {
  const caCert = parseCertificatePem(opts.ca.certPem);
  if (!new NodeX509(opts.ca.certPem).ca) throw new Error('CRL issuer is not a CA certificate');
  const signingKey = importSigningKey(opts.ca.keyPem);
  const now = opts.now ?? new Date();
  const caSki = caCert.getExtension(x509.SubjectKeyIdentifierExtension);
  const extensions: x509.Extension[] = [new x509.Extension(OID_CRL_NUMBER, false, derInteger(opts.crlNumber))];
  if (caSki) extensions.push(new x509.AuthorityKeyIdentifierExtension(caSki.keyId));
  const crl = await x509.X509CrlGenerator.create(
    {
      issuer: caCert.subjectName,
      thisUpdate: now,
      nextUpdate: new Date(now.getTime() + daysToMs(opts.validityDays ?? 30)),
      signingKey,
      signingAlgorithm: signingAlgorithmFor(signingKey),
      extensions,
      entries: opts.entries.map((entry) => ({
        serialNumber: evenHex(entry.serialNumber),
        revocationDate: entry.revocationDate,
        ...(entry.reason !== undefined && entry.reason !== 'unspecified' && { reason: x509.X509CrlReason[entry.reason] }),
      })),
    },
    nodeCrypto,
  );
  // OpenSSL (and so nginx, curl, `openssl crl`) only reads the "X509 CRL" PEM label.
  const pem = crl.toString('pem').replace(/\r\n/g, '\n').replace(/-----(BEGIN|END) CRL-----/g, '-----$1 X509 CRL-----');
  return pem.endsWith('\n') ? pem : `${pem}\n`;
}

/** Parse a CRL without checking its signature (see verifyCrl). */
export function parseCrl(pem: string): CrlInfo {
  const crl = new x509.X509Crl(pem);
  const numberExt = crl.extensions.find((ext) => ext.type === OID_CRL_NUMBER);
  return {
    issuer: crl.issuer,
    thisUpdate: crl.thisUpdate,
    nextUpdate: crl.nextUpdate,
    crlNumber: numberExt ? parseDerInteger(new Uint8Array(numberExt.value)) : undefined,
    entries: crl.entries.map((entry) => ({
      serialNumber: normalizeSerialHex(entry.serialNumber),
      revocationDate: entry.revocationDate,
      reason: reasonName(entry.reason),
    })),
  };
}

/** True when `pem` is a CRL signed by the CA certificate `caCertPem`. */
export async function verifyCrl(pem: string, caCertPem: string): Promise<boolean> {
  const crl = new x509.X509Crl(pem);
  const ca = parseCertificatePem(caCertPem);
  if (crl.issuer !== ca.subject) return false;
  return crl.verify({ publicKey: ca.publicKey }, nodeCrypto);
}

export interface RevokeOptions {
  ca: PemPair;
  /** The current CRL, if there is one; it must be signed by `ca`. */
  crlPem?: string | undefined;
  serials: readonly string[];
  reason?: RevocationReason;
  validityDays?: number;
  now?: Date;
}

export interface RevokeResult {
  crlPem: string;
  added: string[];
  alreadyRevoked: string[];
  info: CrlInfo;
}

/** Add serials to the CRL (or start one) and re-sign it with the next CRL number. */
export async function revokeSerials(opts: RevokeOptions): Promise<RevokeResult> {
  const now = opts.now ?? new Date();
  const current = opts.crlPem ? await checkedCrl(opts.crlPem, opts.ca.certPem) : undefined;
  const entries = [...(current?.entries ?? [])];
  const known = new Set(entries.map((entry) => entry.serialNumber));
  const added: string[] = [];
  const alreadyRevoked: string[] = [];
  for (const raw of opts.serials) {
    const serial = normalizeSerialHex(raw);
    if (known.has(serial)) {
      alreadyRevoked.push(serial);
      continue;
    }
    known.add(serial);
    added.push(serial);
    entries.push({ serialNumber: serial, revocationDate: now, reason: opts.reason });
  }
  const crlPem = await createCrl({
    ca: opts.ca,
    entries,
    crlNumber: (current?.crlNumber ?? 0n) + 1n,
    now,
    ...(opts.validityDays !== undefined && { validityDays: opts.validityDays }),
  });
  return { crlPem, added, alreadyRevoked, info: parseCrl(crlPem) };
}

/** Re-sign the CRL with the same entries, a new thisUpdate/nextUpdate and the next number. */
export async function refreshCrl(opts: Omit<RevokeOptions, 'serials' | 'reason'>): Promise<string> {
  const current = opts.crlPem ? await checkedCrl(opts.crlPem, opts.ca.certPem) : undefined;
  return createCrl({
    ca: opts.ca,
    entries: current?.entries ?? [],
    crlNumber: (current?.crlNumber ?? 0n) + 1n,
    ...(opts.now !== undefined && { now: opts.now }),
    ...(opts.validityDays !== undefined && { validityDays: opts.validityDays }),
  });
}

async function checkedCrl(pem: string, caCertPem: string): Promise<CrlInfo> {
  if (!(await verifyCrl(pem, caCertPem))) throw new Error('the existing CRL is not signed by this CA; refusing to extend it');
  return parseCrl(pem);
}

function signingAlgorithmFor(key: webcrypto.CryptoKey): { name: string; hash: string } {
  return { name: key.algorithm.name === 'ECDSA' ? 'ECDSA' : 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
}

function reasonName(reason: x509.X509CrlReason | undefined): RevocationReason | undefined {
  if (reason === undefined) return undefined;
  const name = x509.X509CrlReason[reason] as string | undefined;
  return (REVOCATION_REASONS as readonly string[]).includes(name ?? '') ? (name as RevocationReason) : 'unspecified';
}

function evenHex(hex: string): string {
  return hex.length % 2 === 0 ? hex : `0${hex}`;
}

/** DER INTEGER for a non-negative bigint. */
function derInteger(value: bigint): Uint8Array {
  if (value < 0n) throw new Error('CRL number must be non-negative');
  let hex = value.toString(16);
  if (hex.length % 2 === 1) hex = `0${hex}`;
  const bytes = Buffer.from(hex, 'hex');
  const body = (bytes[0] ?? 0) & 0x80 ? Buffer.concat([Buffer.from([0]), bytes]) : bytes;
  if (body.length > 20) throw new Error('CRL number longer than 20 octets');
  return Uint8Array.from([0x02, body.length, ...body]);
}

function parseDerInteger(der: Uint8Array): bigint | undefined {
  if (der[0] !== 0x02 || der.length < 3 || der[1] !== der.length - 2) return undefined;
  return BigInt(`0x${Buffer.from(der.subarray(2)).toString('hex')}`);
}
