// How a principal appears in audit records.
import type { AuditPrincipal } from './event.js';
import type { Principal } from '../rpc/principal.js';

// One frozen AuditPrincipal per principal object and role lists: built once, not per call,
// and frozen so the audit log may serialize it once (src/audit/event.ts).
const memo = new WeakMap<Principal, { readonly roles: readonly string[]; readonly impersonatorRoles: readonly string[] | undefined; readonly audit: AuditPrincipal }>();

/**
 * `roles` are the principal's own (for a user: with its groups'); `impersonatorRoles` those of
 * the certificate acting for a user. Both are usually the memoised, never-mutated lists of
 * AccessState: the same arrays until bindings change, which then misses here.
 */
export function auditPrincipal(principal: Principal, roles: readonly string[], impersonatorRoles?: readonly string[]): AuditPrincipal {
  const known = memo.get(principal);
  if (known?.roles === roles && known.impersonatorRoles === impersonatorRoles) return known.audit;
  const out: AuditPrincipal = { id: principal.id, kind: principal.kind, roles: Object.freeze([...roles]) };
  if (principal.certificate) out.cert_fingerprint = principal.certificate.fingerprintSha256;
  if (principal.apiKey) out.key_id = principal.apiKey.id;
  const delegation = principal.delegation;
  if (delegation) {
    out.groups = Object.freeze([...delegation.groups]);
    const by = delegation.by;
    out.impersonated_by = Object.freeze({
      id: by.id,
      ...(by.certificate ? { cert_fingerprint: by.certificate.fingerprintSha256 } : {}),
      roles: Object.freeze([...(impersonatorRoles ?? [])]),
    });
    if (delegation.reason !== undefined) out.impersonation_reason = delegation.reason;
    if (delegation.sessionId !== undefined) out.session_id = delegation.sessionId;
  }
  const audit = Object.freeze(out);
  memo.set(principal, { roles, impersonatorRoles, audit });
  return audit;
}
