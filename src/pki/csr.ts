// PKCS#10 certificate signing requests: a host keeps its private key and sends
// only a CSR. Of the CSR we use its public key and its self-signature (proof of
// possession), nothing else: the subject and SANs come from the signer, never from
// the requester, who could otherwise ask for any identity (an admin's, say). Our own
// profile decides the extensions (no CA:true, no other key usages).
import type { webcrypto } from 'node:crypto';
import { x509, nodeCrypto } from './x509.js';
import { generateKeyPair } from './keys.js';
import { commonNameOnly } from './name.js';
import { signLeaf, type SubjectAltNames } from './issue.js';
import { privateKeyToPem } from './pem.js';
import type { CertificateProfile, PemPair } from './types.js';
import { sanListsOf, type SanLists } from './san.js';

const OID_SUBJECT_ALT_NAME = '2.5.29.17';
const ECDSA_SHA256: { name: string; hash: string } = { name: 'ECDSA', hash: 'SHA-256' };

export interface SignCsrOptions extends SubjectAltNames {
  ca: PemPair;
  csrPem: string;
  profile: CertificateProfile;
  /** The subject CN: the signer's choice (the CSR's subject is ignored). */
  commonName: string;
  /** Default 365. */
  validityDays?: number;
}

export interface CsrInfo {
  commonName: string | undefined;
  sans: SanLists;
}

/** Parse and verify a CSR; returns what it asks for (shown to the signer, never signed as such). */
export async function inspectCsr(csrPem: string): Promise<{ csr: x509.Pkcs10CertificateRequest; info: CsrInfo }> {
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(csrPem);
  } catch (err) {
    throw new Error(`not a PKCS#10 certificate request: ${(err as Error).message}`, { cause: err });
  }
  if (!(await csr.verify(nodeCrypto))) throw new Error('CSR signature does not verify (proof of possession failed)');
  const ext = csr.getExtension(OID_SUBJECT_ALT_NAME);
  const sans = sanListsOf(ext ? new x509.SubjectAlternativeNameExtension(ext.rawData).names : undefined);
  const cn = csr.subjectName.getField('CN')[0];
  return { csr, info: { commonName: cn, sans } };
}

/**
 * Sign a CSR's public key with the subject CN and SANs in `opts` only: the CSR's
 * own subject and SANs are ignored. Returns the certificate PEM.
 */
export async function signCsr(opts: SignCsrOptions): Promise<string> {
  const { csr } = await inspectCsr(opts.csrPem);
  const publicKey = (await csr.publicKey.export(nodeCrypto)) as unknown as webcrypto.CryptoKey;
  return signLeaf(
    {
      ca: opts.ca,
      profile: opts.profile,
      commonName: opts.commonName,
      dnsNames: opts.dnsNames ?? [],
      ipAddresses: opts.ipAddresses ?? [],
      uris: opts.uris ?? [],
      ...(opts.validityDays !== undefined && { validityDays: opts.validityDays }),
    },
    publicKey,
  );
}

/** Make a key and a CSR for it (ECDSA P-256): what a host or a test does before asking for a cert. */
export async function createCsr(opts: { commonName: string } & SubjectAltNames): Promise<{ csrPem: string; keyPem: string }> {
  const keys = await generateKeyPair('ecdsa-p256');
  const names: x509.JsonGeneralNames = [
    ...(opts.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
    ...(opts.ipAddresses ?? []).map((value) => ({ type: 'ip' as const, value })),
    ...(opts.uris ?? []).map((value) => ({ type: 'url' as const, value })),
  ];
  const csr = await x509.Pkcs10CertificateRequestGenerator.create(
    {
      name: commonNameOnly(opts.commonName),
      keys,
      signingAlgorithm: ECDSA_SHA256,
      extensions: names.length > 0 ? [new x509.SubjectAlternativeNameExtension(names)] : [],
    },
    nodeCrypto,
  );
  return { csrPem: csr.toString('pem').replace(/\r\n/g, '\n'), keyPem: privateKeyToPem(keys.privateKey) };
}
