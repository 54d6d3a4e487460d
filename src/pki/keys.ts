import type { webcrypto } from 'node:crypto';
import { nodeCrypto } from './x509.js';
import type { CaKeyAlgorithm } from './types.js';

/**
 * Generate a signing key pair. Keys are extractable only so the private key
 * can be written out once as PKCS#8; nothing else reads the raw material.
 */
export async function generateKeyPair(algorithm: CaKeyAlgorithm): Promise<webcrypto.CryptoKeyPair> {
  switch (algorithm) {
    case 'ecdsa-p256':
      return nodeCrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify']);
    case 'rsa-4096':
      return nodeCrypto.subtle.generateKey(
        {
          name: 'RSASSA-PKCS1-v1_5',
          modulusLength: 4096,
          publicExponent: new Uint8Array([0x01, 0x00, 0x01]),
          hash: 'SHA-256',
        },
        true,
        ['sign', 'verify'],
      );
  }
}
