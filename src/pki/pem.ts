// PEM encoding/decoding of keys and certificates.
//
// Why Node's KeyObject instead of hand-rolled PEM: Node's encoder emits the
// exact PKCS#8 form OpenSSL (and therefore grpc-js) reads, and its decoder
// accepts every PEM flavour OpenSSL writes (PKCS#8, SEC1 "EC PRIVATE KEY",
// PKCS#1 "RSA PRIVATE KEY"), so operator-supplied CA keys also load.
import { KeyObject, createPrivateKey, type webcrypto } from 'node:crypto';
import { x509 } from './x509.js';

/** Export a private CryptoKey as PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----"). */
export function privateKeyToPem(key: webcrypto.CryptoKey): string {
  const pem = KeyObject.from(key).export({ type: 'pkcs8', format: 'pem' });
  return typeof pem === 'string' ? pem : pem.toString('utf8');
}

/** Standard certificate PEM with LF line endings and a trailing newline. */
export function certificateToPem(cert: x509.X509Certificate): string {
  const pem = cert.toString('pem').replace(/\r\n/g, '\n');
  return pem.endsWith('\n') ? pem : `${pem}\n`;
}

/** Parse the first certificate in a PEM string. */
export function parseCertificatePem(pem: string): x509.X509Certificate {
  return new x509.X509Certificate(pem);
}

/**
 * Load a PEM private key as a non-extractable WebCrypto signing key.
 * Supports the two CA key types we generate: EC P-256 and RSA (signs with
 * SHA-256 / PKCS#1 v1.5, which every TLS stack accepts).
 */
export function importSigningKey(keyPem: string): webcrypto.CryptoKey {
  const key = createPrivateKey(keyPem);
  switch (key.asymmetricKeyType) {
    case 'ec': {
      const curve = key.asymmetricKeyDetails?.namedCurve;
      if (curve !== 'prime256v1') throw new Error(`unsupported EC curve for signing key: ${String(curve)}`);
      return key.toCryptoKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']);
    }
    case 'rsa':
      return key.toCryptoKey({ name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, false, ['sign']);
    default:
      throw new Error(`unsupported signing key type: ${String(key.asymmetricKeyType)}`);
  }
}
