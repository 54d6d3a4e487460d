// The CA bundle a certificate must chain to, and the chain check itself: used to verify
// client certificates (src/authn/x509.ts) and the daemon's own renewed identity (monitor.ts).
import { X509Certificate } from 'node:crypto';

const MAX_CHAIN_DEPTH = 8;

/** The CA certificates clients must chain to. Replaced as a whole on reload. */
export class TrustBundle {
  constructor(readonly authorities: readonly X509Certificate[]) {}

  static fromPem(pem: string | Buffer): TrustBundle {
    const blocks = pem.toString().match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
    if (blocks.length === 0) throw new Error('CA bundle holds no PEM certificate');
    const certs = blocks.map((block) => new X509Certificate(block));
    for (const cert of certs) {
      if (!cert.ca) throw new Error(`CA bundle entry "${cert.subject.replace(/\n/g, ', ')}" is not a CA certificate`);
    }
    return new TrustBundle(certs);
  }
}

function withinValidity(cert: X509Certificate, now: number): boolean {
  return now >= cert.validFromDate.getTime() && now <= cert.validToDate.getTime();
}

function isSelfSigned(cert: X509Certificate): boolean {
  return cert.checkIssued(cert) && cert.verify(cert.publicKey);
}

/** Returns why the chain fails, or undefined when it reaches a trusted root. */
export function chainProblem(leaf: X509Certificate, trust: TrustBundle, now: number): string | undefined {
  let current = leaf;
  for (let depth = 0; depth < MAX_CHAIN_DEPTH; depth++) {
    const issuer = trust.authorities.find((ca) => current.checkIssued(ca) && current.verify(ca.publicKey));
    if (!issuer) return depth === 0 ? 'certificate is not issued by a trusted CA' : 'chain does not reach a trusted root';
    if (!withinValidity(issuer, now)) return `issuing CA "${issuer.subject.replace(/\n/g, ', ')}" is outside its validity period`;
    if (isSelfSigned(issuer)) return undefined;
    current = issuer;
  }
  return 'certificate chain is too long';
}
