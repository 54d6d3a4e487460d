// Leaf (server/client) certificate issuance from our CA, plus a self-signed
// variant for negative tests.
import { X509Certificate as NodeX509, createPrivateKey, type webcrypto } from 'node:crypto';
import { isIP } from 'node:net';
import { x509, nodeCrypto } from './x509.js';
import { generateKeyPair } from './keys.js';
import { commonNameOnly } from './name.js';
import { certificateToPem, importSigningKey, parseCertificatePem, privateKeyToPem } from './pem.js';
import { randomSerialHex } from './serial.js';
import type { CertificateProfile, PemPair } from './types.js';
import { resolveValidity } from './validity.js';

/** EKU names we accept, or a dotted OID for anything else. */
export type ExtendedKeyUsageName =
  | 'serverAuth'
  | 'clientAuth'
  | 'codeSigning'
  | 'emailProtection'
  | 'timeStamping'
  | 'ocspSigning';
export type ExtendedKeyUsageOid = `${number}.${number}.${string}`;

const EKU_OIDS: Record<ExtendedKeyUsageName, string> = {
  serverAuth: x509.ExtendedKeyUsage.serverAuth,
  clientAuth: x509.ExtendedKeyUsage.clientAuth,
  codeSigning: x509.ExtendedKeyUsage.codeSigning,
  emailProtection: x509.ExtendedKeyUsage.emailProtection,
  timeStamping: x509.ExtendedKeyUsage.timeStamping,
  ocspSigning: x509.ExtendedKeyUsage.ocspSigning,
};

const PROFILE_EKU: Record<CertificateProfile, ExtendedKeyUsageName> = {
  server: 'serverAuth',
  client: 'clientAuth',
};

export interface SubjectAltNames {
  dnsNames?: readonly string[];
  /** IPv4 or IPv6 literals. */
  ipAddresses?: readonly string[];
  /** e.g. 'spiffe://debvisor/admin/admin' — how clients are identified. */
  uris?: readonly string[];
}

export interface IssueCertificateOptions extends SubjectAltNames {
  ca: PemPair;
  profile: CertificateProfile;
  commonName: string;
  /** Default 365. Ignored for whichever of notBefore/notAfter is given. */
  validityDays?: number;
  /** Override, e.g. for expired or not-yet-valid test certs. */
  notBefore?: Date;
  /** Override; otherwise capped at the CA's notAfter. */
  notAfter?: Date;
  /**
   * Override the profile's EKU (e.g. a client cert lacking clientAuth, for a
   * negative test). An empty array omits the EKU extension entirely.
   */
  extendedKeyUsages?: readonly (ExtendedKeyUsageName | ExtendedKeyUsageOid)[];
}

export interface SelfSignedCertificateOptions extends SubjectAltNames {
  commonName: string;
  profile: CertificateProfile;
  validityDays?: number;
  notBefore?: Date;
  notAfter?: Date;
}

/** Issue an ECDSA P-256 leaf certificate signed by `ca`, with a fresh key. */
export async function issueCertificate(opts: IssueCertificateOptions): Promise<PemPair> {
  const keys = await generateKeyPair('ecdsa-p256');
  const certPem = await signLeaf(opts, keys.publicKey);
  return { certPem, keyPem: privateKeyToPem(keys.privateKey) };
}

/**
 * Sign a leaf certificate for `publicKey` (a key we did not generate, e.g. from a
 * CSR). Same profile rules as issueCertificate.
 */
export async function signLeaf(opts: IssueCertificateOptions, publicKey: webcrypto.CryptoKey): Promise<string> {
  const caCert = parseCertificatePem(opts.ca.certPem);
  assertUsableCa(opts.ca, caCert);
  const signingKey = importSigningKey(opts.ca.keyPem);

  const validity = resolveValidity({
    validityDays: opts.validityDays ?? 365,
    notBefore: opts.notBefore,
    notAfter: opts.notAfter,
  });
  // Why cap: a leaf outliving its CA fails verification anyway, and an honest
  // notAfter makes "renew before expiry" logic look at the real deadline.
  if (opts.notAfter === undefined && validity.notAfter > caCert.notAfter) {
    validity.notAfter = caCert.notAfter;
  }

  const caSki = caCert.getExtension(x509.SubjectKeyIdentifierExtension);
  const aki = caSki
    ? new x509.AuthorityKeyIdentifierExtension(caSki.keyId) // must equal the CA's SKI byte-for-byte
    : await x509.AuthorityKeyIdentifierExtension.create(caCert.publicKey, false, nodeCrypto);

  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: randomSerialHex(),
      subject: commonNameOnly(opts.commonName),
      // Copy the CA subject as DER so issuer matches it exactly.
      issuer: caCert.subjectName,
      ...validity,
      publicKey,
      signingKey,
      extensions: [...(await leafExtensions(opts, publicKey, opts.extendedKeyUsages)), aki],
    },
    nodeCrypto,
  );
  return certificateToPem(cert);
}

/**
 * A leaf-shaped self-signed certificate (CA:false) that is NOT issued by our
 * CA. For tests: it can name a real principal yet must be rejected.
 */
export async function selfSignedCertificate(opts: SelfSignedCertificateOptions): Promise<PemPair> {
  const validity = resolveValidity({
    validityDays: opts.validityDays ?? 365,
    notBefore: opts.notBefore,
    notAfter: opts.notAfter,
  });
  const keys = await generateKeyPair('ecdsa-p256');
  const cert = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: randomSerialHex(),
      name: commonNameOnly(opts.commonName),
      ...validity,
      keys,
      extensions: await leafExtensions(opts, keys.publicKey, undefined),
    },
    nodeCrypto,
  );
  return { certPem: certificateToPem(cert), keyPem: privateKeyToPem(keys.privateKey) };
}

async function leafExtensions(
  opts: SubjectAltNames & { profile: CertificateProfile },
  publicKey: webcrypto.CryptoKey,
  ekuOverride: readonly (ExtendedKeyUsageName | ExtendedKeyUsageOid)[] | undefined,
): Promise<x509.Extension[]> {
  const ekus = (ekuOverride ?? [PROFILE_EKU[opts.profile]]).map(ekuOid);
  const exts: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    // EC keys do ECDHE + signatures only, so keyEncipherment is not needed.
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
  ];
  // An empty EKU SEQUENCE is invalid DER; "no EKU" means omit the extension.
  if (ekus.length > 0) exts.push(new x509.ExtendedKeyUsageExtension(ekus, false));
  const san = subjectAltNames(opts);
  if (san.length > 0) exts.push(new x509.SubjectAlternativeNameExtension(san, false));
  exts.push(await x509.SubjectKeyIdentifierExtension.create(publicKey, false, nodeCrypto));
  return exts;
}

function ekuOid(eku: ExtendedKeyUsageName | ExtendedKeyUsageOid): string {
  if (Object.hasOwn(EKU_OIDS, eku)) return EKU_OIDS[eku as ExtendedKeyUsageName];
  if (/^\d+(\.\d+)+$/.test(eku)) return eku;
  throw new Error(`unknown extended key usage: ${eku}`);
}

function subjectAltNames(opts: SubjectAltNames): x509.JsonGeneralNames {
  const names: x509.JsonGeneralNames = [];
  for (const dns of opts.dnsNames ?? []) {
    if (!/^(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$/.test(dns)) throw new Error(`invalid DNS SAN: ${dns}`);
    names.push({ type: 'dns', value: dns });
  }
  for (const ip of opts.ipAddresses ?? []) {
    if (isIP(ip) === 0) throw new Error(`invalid IP SAN: ${ip}`);
    names.push({ type: 'ip', value: ip });
  }
  for (const uri of opts.uris ?? []) {
    if (!URL.canParse(uri)) throw new Error(`invalid URI SAN: ${uri}`);
    names.push({ type: 'url', value: uri });
  }
  return names;
}

/** Fail early on a mismatched or non-CA pair rather than mint unverifiable certs. */
function assertUsableCa(ca: PemPair, caCert: x509.X509Certificate): void {
  const bc = caCert.getExtension(x509.BasicConstraintsExtension);
  if (!bc?.ca) throw new Error('CA certificate lacks BasicConstraints CA:true');
  if (!new NodeX509(ca.certPem).checkPrivateKey(createPrivateKey(ca.keyPem))) {
    throw new Error('CA private key does not match CA certificate');
  }
}
