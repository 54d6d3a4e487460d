/** A certificate and its private key, both PEM encoded. */
export interface PemPair {
  /** "-----BEGIN CERTIFICATE-----" PEM. */
  certPem: string;
  /** PKCS#8 "-----BEGIN PRIVATE KEY-----" PEM. */
  keyPem: string;
}

export type CaKeyAlgorithm = 'ecdsa-p256' | 'rsa-4096';

export type CertificateProfile = 'server' | 'client';
