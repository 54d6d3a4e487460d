// Client-certificate authentication. The port requests but does not require a
// client certificate (API-key clients share it). OpenSSL verifies the chain at the
// handshake and grpc-js (1.14.7) hides unverified certificates, but that is not a
// documented guarantee, and a connection opened before a CA-bundle reload keeps its
// old verdict. So the daemon verifies the leaf itself as well, against the current
// bundle: chain, dates, EKU clientAuth. Defence in depth, at one check per certificate.
import { X509Certificate } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import { UnauthenticatedError } from '../rpc/errors.js';
import type { Principal } from '../rpc/principal.js';
import { impersonatedKindOf } from '../rpc/impersonation-names.js';
import type { RevocationCheck } from './crl.js';
import { normalizeSerialHex } from '../pki/index.js';
import { chainProblem, type TrustBundle } from '../pki/trust.js';

const EKU_CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
const MAX_CACHED = 10_000;

interface SubjectAltNames {
  readonly uri: string[];
  readonly dns: string[];
}

// Node renders SANs as `DNS:a, URI:b`; values with special characters are JSON-quoted.
const SAN_ENTRY = /(DNS|URI|IP Address|email|othername|DirName|Registered ID):("(?:[^"\\]|\\.)*"|[^,]*)(?:, |$)/g;

export function parseSubjectAltNames(text: string | undefined): SubjectAltNames {
  const names: SubjectAltNames = { uri: [], dns: [] };
  if (!text) return names;
  for (const [, kind, raw = ''] of text.matchAll(SAN_ENTRY)) {
    const value = raw.startsWith('"') ? (JSON.parse(raw) as string) : raw;
    if (kind === 'URI') names.uri.push(value);
    else if (kind === 'DNS') names.dns.push(value);
  }
  return names;
}

function commonName(subject: string): string | undefined {
  for (const line of subject.split('\n')) {
    if (line.startsWith('CN=')) return line.slice(3);
  }
  return undefined;
}

/**
 * Principal precedence: the URI SAN (spiffe://…), then the first DNS SAN, then the CN.
 * Shared with `debvisorctl pki sign-csr`, which must predict the principal it signs.
 */
export function principalOfNames(names: { readonly uris: readonly string[]; readonly dnsNames: readonly string[]; readonly commonName: string | undefined }): string | undefined {
  return names.uris[0] ?? names.dnsNames[0] ?? names.commonName;
}

/** `user:` and `group:` ids belong to impersonated users; a certificate naming one would pose as a user. */
export function reservedPrincipalProblem(id: string): string | undefined {
  const kind = impersonatedKindOf(id);
  return kind === undefined ? undefined : `client certificate principal ${JSON.stringify(id.slice(0, 300))} is in the ${kind}: namespace, which is reserved for impersonated users and groups`;
}

/** Several URI SANs would make the identity ambiguous; SPIFFE allows exactly one per certificate. */
export function uriSanProblem(uris: readonly string[]): string | undefined {
  return uris.length > 1 ? `client certificate has ${uris.length} URI SANs; exactly one is allowed (SPIFFE): ${uris.join(', ').slice(0, 300)}` : undefined;
}

interface Verified {
  readonly principal: Principal;
  readonly serial: string;
  readonly notBefore: number;
  readonly notAfter: number;
  readonly trust: TrustBundle;
}

export class CertificateAuthenticator {
  // Verification costs ~200 µs; it is done once per distinct certificate, and only
  // the validity dates are checked per call.
  private readonly verified = new Map<string, Verified>();

  constructor(
    private trust: TrustBundle,
    /** The CRL in force (see crl.ts): revoked serials, and a stale CRL refuses everyone. */
    private readonly revocation?: RevocationCheck,
  ) {}

  /** Swaps the CA bundle (SIGHUP or rollover); cached results of the old bundle die with it. */
  setTrust(trust: TrustBundle): void {
    this.trust = trust;
    this.verified.clear();
  }

  authenticate(peer: PeerCertificate, now = Date.now()): Principal {
    const key = peer.fingerprint256;
    let entry = this.verified.get(key);
    if (!entry || entry.trust !== this.trust) {
      entry = this.verify(peer.raw, now);
      if (this.verified.size >= MAX_CACHED) this.verified.delete(this.verified.keys().next().value as string);
      this.verified.set(key, entry);
    }
    if (now < entry.notBefore || now > entry.notAfter) {
      throw new UnauthenticatedError('client certificate is outside its validity period');
    }
    const refusal = this.revocation?.refusal(entry.serial, now);
    if (refusal !== undefined) throw new UnauthenticatedError(refusal);
    return entry.principal;
  }

  private verify(raw: Buffer, now: number): Verified {
    let leaf: X509Certificate;
    try {
      leaf = new X509Certificate(raw);
    } catch {
      throw new UnauthenticatedError('client certificate cannot be parsed');
    }
    if (leaf.ca) throw new UnauthenticatedError('client certificate is a CA certificate');
    // keyUsage (Node's name for the EKU list) is undefined when the extension is absent.
    if (!Array.isArray(leaf.keyUsage) || !leaf.keyUsage.includes(EKU_CLIENT_AUTH)) {
      throw new UnauthenticatedError('client certificate lacks extended key usage clientAuth');
    }
    const problem = chainProblem(leaf, this.trust, now);
    if (problem) throw new UnauthenticatedError(problem);
    const san = parseSubjectAltNames(leaf.subjectAltName);
    const ambiguous = uriSanProblem(san.uri);
    if (ambiguous) throw new UnauthenticatedError(ambiguous);
    const id = principalOfNames({ uris: san.uri, dnsNames: san.dns, commonName: commonName(leaf.subject) });
    if (!id) throw new UnauthenticatedError('client certificate names no principal (no URI SAN, DNS SAN or CN)');
    const reserved = reservedPrincipalProblem(id);
    if (reserved) throw new UnauthenticatedError(reserved);
    const notAfter = leaf.validToDate;
    return {
      principal: {
        id,
        kind: 'certificate',
        certificate: { fingerprintSha256: leaf.fingerprint256.replaceAll(':', '').toLowerCase(), serialNumber: leaf.serialNumber, notAfter },
      },
      serial: normalizeSerialHex(leaf.serialNumber),
      notBefore: leaf.validFromDate.getTime(),
      notAfter: notAfter.getTime(),
      trust: this.trust,
    };
  }
}
