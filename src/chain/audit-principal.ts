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

// One frozen AuditPrincipal per principal object and role list: built once, not per call,
// and frozen so the audit log may serialize it once (src/audit/event.ts).
const memo = new WeakMap<Principal, { readonly roles: readonly string[]; readonly audit: AuditPrincipal }>();

export function auditPrincipal(principal: Principal, roles: readonly string[]): AuditPrincipal {
  // roles is usually the memoised, never-mutated list of AccessState.roleNamesOf: the same
  // array until the principal's bindings change, which then misses here.
  const known = memo.get(principal);
  if (known?.roles === roles) return known.audit;
  const out: AuditPrincipal = { id: principal.id, kind: principal.kind, roles: Object.freeze([...roles]) };
  if (principal.certificate) out.cert_fingerprint = fingerprintOf(principal.certificate);
  if (principal.apiKey) out.key_id = principal.apiKey.id;
  const audit = Object.freeze(out);
  memo.set(principal, { roles, audit });
  return audit;
}
