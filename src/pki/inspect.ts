// Read-only views of certificates and keys: what `pki status`, renewal and the
// daemon's certificate monitor need to know about a PEM file.
import { X509Certificate as NodeX509, createPrivateKey, createPublicKey } from 'node:crypto';
import { x509 } from './x509.js';
import type { CertificateProfile } from './types.js';
import { formatSans, sanListsOf, type SanLists } from './san.js';

export interface CertificateInfo {
  /** The subject CommonName, or '' if it has none. */
  commonName: string;
  subject: string;
  issuer: string;
  /** Upper-case hex, as Node prints it. */
  serialNumber: string;
  notBefore: Date;
  notAfter: Date;
  isCa: boolean;
  /** 'server' / 'client' from the EKU (serverAuth wins when both are present). */
  profile: CertificateProfile | undefined;
  sans: SanLists;
  /** "DNS:x", "IP:y", "URI:z" strings. */
  sanStrings: string[];
  fingerprint256: string;
}

const EKU_SERVER = '1.3.6.1.5.5.7.3.1';
const EKU_CLIENT = '1.3.6.1.5.5.7.3.2';

/** Every certificate in a PEM string (a bundle yields several). */
export function splitPemCertificates(pem: string): string[] {
  return pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)?.map((block) => `${block}\n`) ?? [];
}

export function describeCertificate(pem: string | Buffer): CertificateInfo {
  const node = new NodeX509(pem);
  const cert = new x509.X509Certificate(node.raw);
  const sans = sanListsOf(cert.getExtension(x509.SubjectAlternativeNameExtension)?.names);
  const ekus = Array.isArray(node.keyUsage) ? node.keyUsage : [];
  const profile: CertificateProfile | undefined = ekus.includes(EKU_SERVER) ? 'server' : ekus.includes(EKU_CLIENT) ? 'client' : undefined;
  const cn = /^CN=(.*)$/m.exec(node.subject)?.[1] ?? '';
  return {
    commonName: cn,
    subject: node.subject.replace(/\n/g, ', '),
    issuer: node.issuer.replace(/\n/g, ', '),
    serialNumber: node.serialNumber.toUpperCase(),
    notBefore: node.validFromDate,
    notAfter: node.validToDate,
    isCa: node.ca,
    profile,
    sans,
    sanStrings: formatSans(sans),
    fingerprint256: node.fingerprint256,
  };
}

/** True when `keyPem` is the private key of `certPem`. Never throws. */
export function keyMatchesCertificate(certPem: string | Buffer, keyPem: string | Buffer): boolean {
  try {
    return new NodeX509(certPem).checkPrivateKey(createPrivateKey(keyPem));
  } catch {
    return false;
  }
}

/** True when the certificate's public key is the public half of `keyPem`. */
export function publicKeyMatches(cert: NodeX509, keyPem: string | Buffer): boolean {
  try {
    const pub = createPublicKey(createPrivateKey(keyPem));
    return cert.publicKey.export({ type: 'spki', format: 'der' }).equals(pub.export({ type: 'spki', format: 'der' }));
  } catch {
    return false;
  }
}
