// Step 6: default deny. Each RPC's required permission comes from its proto option;
// an unannotated method is refused. API keys get the intersection of their own
// permissions and their owner's current roles, within their resource globs. A user acted
// for (impersonation) gets the intersection of its own rights and the impersonator's.
import type { Message } from '@bufbuild/protobuf';
import type { AuditLog } from '../audit/log.js';
import { authorize, type AuthorizeInput, type DenyReason } from '../authz/decide.js';
import type { PolicyIndex, ResourceRef } from '../rpc/policy.js';
import type { Role } from '../authz/roles.js';
import type { Metrics } from '../observability/metrics.js';
import { RpcError } from '../rpc/errors.js';
import { auditPrincipal } from '../audit/principal.js';
import type { Step } from './step.js';

export interface RbacDeps {
  readonly methods: PolicyIndex;
  readonly roles: (names: readonly string[]) => readonly Role[];
  /** Bootstrap admins from the config: no deny applies to them (src/authz/decide.ts). */
  readonly isBootstrapAdmin: (principal: string) => boolean;
  readonly audit: AuditLog;
  readonly metrics: Metrics;
}

/** What the client is told of a refusal: the permission, and which side or scope lacks it. */
function denialMessage(path: string, result: { readonly missing: string; readonly reason: DenyReason; readonly resource?: ResourceRef }): string {
  const { missing, reason, resource } = result;
  const requires = `permission denied: ${path} requires ${missing}`;
  switch (reason) {
    case 'outside_key_scope':
      if (!resource) return requires;
      return resource.name === ''
        ? `permission denied: this API key must name the ${resource.kind} explicitly`
        : `permission denied: this API key is not scoped to ${resource.kind} "${resource.name}"`;
    case 'outside_role_scope':
      return resource ? `${requires}, which your roles grant only for other ${resource.kind}s than "${resource.name}"` : requires;
    case 'not_granted_to_impersonator':
      return `${requires}, which the certificate acting for this user does not hold`;
    default:
      return requires;
  }
}

export function rbac(deps: RbacDeps): Step {
  return {
    onMessage: (state, { path }, message) => {
      const principal = state.principal;
      const policy = deps.methods.get(path);
      if (!principal || !policy) {
        state.decision = 'deny';
        throw new RpcError('PERMISSION_DENIED', `permission denied: ${path} declares no permission`);
      }
      // Declared in the proto (e.g. WhoAmI): the identity step has already refused the unauthenticated.
      if (policy.anyAuthenticated) {
        state.decision = 'allow';
        return;
      }
      const resources = policy.resourcesOf(message as Message);
      const input: { -readonly [K in keyof AuthorizeInput]: AuthorizeInput[K] } = {
        roles: deps.roles(state.roles ?? []),
        required: policy.permission,
        exemptFromDeny: deps.isBootstrapAdmin(principal.id),
        resources,
      };
      if (principal.apiKey) input.apiKey = principal.apiKey;
      let result = authorize(input);
      // A user acted for: the impersonating certificate must allow the call too.
      const by = principal.delegation?.by;
      if (result.allowed && by) {
        const byResult = authorize({ roles: deps.roles(state.impersonatorRoles ?? []), required: policy.permission, exemptFromDeny: deps.isBootstrapAdmin(by.id), resources });
        if (!byResult.allowed) result = { ...byResult, reason: 'not_granted_to_impersonator' };
      }
      if (result.allowed) {
        state.decision = 'allow';
        return;
      }
      state.decision = 'deny';
      // The resource outside the key's scope, else the first one the call names.
      const resource = result.resource ?? resources.find((r) => r.name !== '');
      deps.metrics.authzDenials.inc({ principal: deps.metrics.principalLabel(principal.id), permission: result.missing });
      deps.audit.write({
        type: 'AUTHZ_DENIED',
        trace_id: state.traceId,
        principal: auditPrincipal(principal, state.roles ?? [], state.impersonatorRoles),
        source: state.peer,
        method: path,
        decision: 'deny',
        reason: result.reason,
        ...(resource ? { object: `${resource.kind}:${resource.name}` } : {}),
      });
      throw new RpcError('PERMISSION_DENIED', denialMessage(path, result));
    },
  };
}
