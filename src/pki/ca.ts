// Self-signed root CA creation.
import { x509, nodeCrypto } from './x509.js';
import { generateKeyPair } from './keys.js';
import { commonNameOnly } from './name.js';
import { certificateToPem, privateKeyToPem } from './pem.js';
import { randomSerialHex } from './serial.js';
import type { CaKeyAlgorithm, PemPair } from './types.js';
import { resolveValidity } from './validity.js';

export interface CreateCaOptions {
  commonName: string;
  /** Default 3650 (10 years). */
  validityDays?: number;
  /** Default 'ecdsa-p256'. */
  algorithm?: CaKeyAlgorithm;
  notBefore?: Date;
  notAfter?: Date;
}

/**
 * Create a self-signed CA certificate and its key.
 *
 * pathLen 0: this CA signs leaf certificates only, so a leaked leaf key can
 * never be used to mint a subordinate CA that chains to us.
 */
export async function createCa(opts: CreateCaOptions): Promise<PemPair> {
  const algorithm = opts.algorithm ?? 'ecdsa-p256';
  const { notBefore, notAfter } = resolveValidity({
    validityDays: opts.validityDays ?? 3650,
    notBefore: opts.notBefore,
    notAfter: opts.notAfter,
  });
  const keys = await generateKeyPair(algorithm);
  const name = commonNameOnly(opts.commonName);

  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: randomSerialHex(),
      subject: name,
      issuer: name,
      notBefore,
      notAfter,
      publicKey: keys.publicKey,
      signingKey: keys.privateKey,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, nodeCrypto),
      ],
    },
    nodeCrypto,
  );

  return { certPem: certificateToPem(cert), keyPem: privateKeyToPem(keys.privateKey) };
}
