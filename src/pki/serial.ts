import { randomBytes } from 'node:crypto';

/**
 * A random, positive, 128-bit certificate serial as hex.
 *
 * Why not let @peculiar/x509 pick one: it strips leading zero bytes, so its
 * serials are sometimes shorter than 16 bytes. We fix the top two bits to
 * 0b01 so the DER INTEGER is always exactly 16 bytes, positive (no 0x00 pad,
 * no sign bit), with 126 bits of CSPRNG entropy (CA/B asks for >= 64).
 */
export function randomSerialHex(): string {
  const bytes = randomBytes(16);
  bytes[0] = ((bytes[0] ?? 0) & 0x3f) | 0x40;
  return bytes.toString('hex');
}
