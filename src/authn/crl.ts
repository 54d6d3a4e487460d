// Certificate revocation lists: the serials a CA has revoked. The CRL's signature is
// checked against the trust bundle before any of it is believed.
import 'reflect-metadata';
import { readFileSync } from 'node:fs';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import type { TrustBundle } from './x509.js';

x509.cryptoProvider.set(webcrypto);

/** Serial numbers as Node prints them: upper-case hex without leading zeros. */
export function normalizeSerial(serial: string): string {
  return serial.toUpperCase().replace(/^0+(?=.)/, '');
}

export async function loadRevokedSerials(file: string, trust: TrustBundle): Promise<ReadonlySet<string>> {
  const pem = readFileSync(file, 'utf8');
  const crl = new x509.X509Crl(pem);
  let verified = false;
  for (const ca of trust.authorities) {
    const issuer = new x509.X509Certificate(ca.raw);
    if (issuer.subject !== crl.issuer) continue;
    if (await crl.verify({ publicKey: issuer.publicKey })) {
      verified = true;
      break;
    }
  }
  if (!verified) throw new Error(`CRL ${file} is not signed by a CA in the trust bundle`);
  return new Set(crl.entries.map((entry) => normalizeSerial(entry.serialNumber)));
}
