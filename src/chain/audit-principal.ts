// How a principal appears in audit records.
import type { AuditPrincipal } from '../audit/event.js';
import type { Principal } from '../authn/principal.js';

export function auditPrincipal(principal: Principal, roles: readonly string[]): AuditPrincipal {
  return {
    id: principal.id,
    kind: principal.kind,
    roles: [...roles],
    ...(principal.certificate ? { cert_fingerprint: principal.certificate.fingerprintSha256.replaceAll(':', '').toLowerCase() } : {}),
    ...(principal.apiKey ? { key_id: principal.apiKey.id } : {}),
  };
}
