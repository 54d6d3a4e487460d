// How a principal appears in audit records.
import type { AuditPrincipal } from '../audit/event.js';
import type { Principal } from '../authn/principal.js';

// Certificate principals are cached objects (CertificateAuthenticator), so this runs once per certificate.
const fingerprints = new WeakMap<object, string>();

function fingerprintOf(certificate: NonNullable<Principal['certificate']>): string {
  let hex = fingerprints.get(certificate);
  if (hex === undefined) {
    hex = certificate.fingerprintSha256.replaceAll(':', '').toLowerCase();
    fingerprints.set(certificate, hex);
  }
  return hex;
}

export function auditPrincipal(principal: Principal, roles: readonly string[]): AuditPrincipal {
  // roles is the memoised, never-mutated list of AccessState.roleNamesOf: shared, not copied.
  const out: AuditPrincipal = { id: principal.id, kind: principal.kind, roles };
  if (principal.certificate) out.cert_fingerprint = fingerprintOf(principal.certificate);
  if (principal.apiKey) out.key_id = principal.apiKey.id;
  return out;
}
