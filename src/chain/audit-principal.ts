// How a principal appears in audit records.
import type { AuditPrincipal } from '../audit/event.js';
import type { Principal } from '../rpc/principal.js';

// One frozen AuditPrincipal per principal object and role list: built once, not per call,
// and frozen so the audit log may serialize it once (src/audit/event.ts).
const memo = new WeakMap<Principal, { readonly roles: readonly string[]; readonly audit: AuditPrincipal }>();

export function auditPrincipal(principal: Principal, roles: readonly string[]): AuditPrincipal {
  // roles is usually the memoised, never-mutated list of AccessState.roleNamesOf: the same
  // array until the principal's bindings change, which then misses here.
  const known = memo.get(principal);
  if (known?.roles === roles) return known.audit;
  const out: AuditPrincipal = { id: principal.id, kind: principal.kind, roles: Object.freeze([...roles]) };
  if (principal.certificate) out.cert_fingerprint = principal.certificate.fingerprintSha256;
  if (principal.apiKey) out.key_id = principal.apiKey.id;
  const audit = Object.freeze(out);
  memo.set(principal, { roles, audit });
  return audit;
}
