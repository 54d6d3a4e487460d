// Certificate revocation lists: the serials a CA has revoked. The CRL's signature is
// checked against the trust bundle before any of it is believed.
import { readFileSync } from 'node:fs';
import { parseCrl, verifyCrl } from '../pki/index.js';
import type { TrustBundle } from './x509.js';

export async function loadRevokedSerials(file: string, trust: TrustBundle): Promise<ReadonlySet<string>> {
  const pem = readFileSync(file, 'utf8');
  const crl = parseCrl(pem);
  let verified = false;
  for (const ca of trust.authorities) {
    if (await verifyCrl(pem, ca.toString())) {
      verified = true;
      break;
    }
  }
  if (!verified) throw new Error(`CRL ${file} is not signed by a CA in the trust bundle`);
  // Serials as normalizeSerialHex spells them, the same form x509.ts compares against.
  return new Set(crl.entries.map((entry) => entry.serialNumber));
}
