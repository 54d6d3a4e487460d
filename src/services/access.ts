// AccessService: thin protobuf mapping over src/access/admin.ts.
import { patternCovers } from '../authz/permission.js';
import { durationMs, timestampFromDate } from '@bufbuild/protobuf/wkt';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { PrincipalKind, RoleBindingSource, type AccessService, type ApiKeySchema, type ResourceGlob as ResourceGlobMessage, type ResourceGlobSchema, type RoleSchema } from '../gen/debvisor/v1/access_pb.js';
import type { AccessAdmin, QuotaView } from '../access/admin.js';
import type { AccessState, BindingSource } from '../access/state.js';
import type { BlockHandlers } from './access-blocks.js';
import type { BackupHandlers } from './store-backup.js';
import type { SessionHandlers } from './access-sessions.js';
import type { ResourceGlob } from '../authz/globs.js';
import type { Role } from '../authz/roles.js';
import { resourceKindFromName, resourceKindName } from '../rpc/policy.js';
import type { HandlersOf } from '../rpc/adapter.js';
import type { CallContext } from '../rpc/context.js';
import { InvalidArgumentError, UnauthenticatedError } from '../rpc/errors.js';
import type { ApiKeyRecord } from '../store/records.js';
import { timestampOfIso } from './timestamp.js';
import { QUOTA_ENUMS, QUOTA_NAMES } from '../rpc/quota-dimensions.js';


const BINDING_SOURCES: Record<BindingSource, RoleBindingSource> = {
  store: RoleBindingSource.STORE,
  bootstrap_admin: RoleBindingSource.BOOTSTRAP_ADMIN,
  config: RoleBindingSource.CONFIG,
};


function globMessages(globs: readonly ResourceGlob[]): MessageInitShape<typeof ResourceGlobSchema>[] {
  return globs.map((glob) => ({ kind: resourceKindFromName(glob.kind), glob: glob.glob }));
}

function apiKeyMessage(key: ApiKeyRecord): MessageInitShape<typeof ApiKeySchema> {
  return {
    keyId: key.id,
    description: key.description,
    owner: key.owner,
    permissions: key.permissions,
    resourceGlobs: globMessages(key.resource_globs),
    allowedCidrs: key.allowed_cidrs,
    createdBy: key.created_by,
    createTime: timestampOfIso(key.created_at),
    expireTime: timestampOfIso(key.expires_at),
    revokeTime: timestampOfIso(key.revoked_at),
    lastUsedTime: timestampOfIso(key.last_used_at),
    rotatedFrom: key.rotated_from ?? '',
  };
}

function globsOf(globs: ResourceGlobMessage[], field = 'resource_globs'): { kind: string; glob: string }[] {
  return globs.map((glob, index) => {
    const kind = resourceKindName(glob.kind);
    if (!kind) throw new InvalidArgumentError(`${field}[${index}].kind`, 'must name a resource kind');
    return { kind, glob: glob.glob };
  });
}

function roleMessage(role: Role): MessageInitShape<typeof RoleSchema> {
  return {
    name: role.name,
    description: role.description,
    permissions: [...role.permissions],
    denyPermissions: [...role.deny],
    builtin: role.builtin,
    resourceGlobs: globMessages(role.resourceGlobs),
  };
}

function principalOf(ctx: CallContext) {
  if (!ctx.principal) throw new UnauthenticatedError('no principal on call');
  return ctx.principal;
}

const PRINCIPAL_KINDS = { certificate: PrincipalKind.CERTIFICATE, api_key: PrincipalKind.API_KEY, user: PrincipalKind.USER } as const;

/**
 * The permission patterns both lists grant: each pattern of one side that a pattern of the
 * other covers (`vm:*` and `vm:start` give `vm:start`), sorted and unique.
 */
function intersectPatterns(a: readonly string[], b: readonly string[]): string[] {
  const both = new Set<string>();
  for (const p of a) if (b.some((q) => patternCovers(q, p))) both.add(p);
  for (const q of b) if (a.some((p) => patternCovers(p, q))) both.add(q);
  return [...both].sort();
}

// WhoAmI runs per call: its permission list is built once per resolved role list.
// AccessState memoises roles(), and replaces the array when roles change.
const grantedByRoles = new WeakMap<readonly Role[], readonly string[]>();

function grantedBy(roles: readonly Role[]): readonly string[] {
  let granted = grantedByRoles.get(roles);
  if (!granted) {
    granted = [...new Set(roles.flatMap((role) => role.permissions))].sort();
    grantedByRoles.set(roles, granted);
  }
  return granted;
}

export function accessHandlers(admin: AccessAdmin, state: AccessState, blocks: BlockHandlers, backup: BackupHandlers, sessions: SessionHandlers): HandlersOf<typeof AccessService> {
  return {
    ...blocks,
    ...backup,
    ...sessions,
    whoAmI: (_request, ctx) => {
      const principal = principalOf(ctx);
      const roles = state.roleNamesOfPrincipal(principal);
      const certificate = principal.certificate;
      const delegation = principal.delegation;
      const own = principal.apiKey ? principal.apiKey.permissions : grantedBy(state.roles(roles));
      return Promise.resolve({
        principalId: principal.id,
        kind: PRINCIPAL_KINDS[principal.kind],
        roles: [...roles],
        permissions: delegation ? intersectPatterns(own, grantedBy(state.roles(state.roleNamesOf(delegation.by.id)))) : [...own],
        authMethod: principal.kind === 'api_key' ? 'api_key' : 'mtls',
        certFingerprintSha256: certificate?.fingerprintSha256 ?? '',
        certNotAfter: certificate ? timestampFromDate(certificate.notAfter) : undefined,
        apiKeyId: principal.apiKey?.id ?? '',
        sourceAddress: ctx.peer,
        resourceGlobs: globMessages(principal.apiKey?.resourceGlobs ?? []),
        impersonation: delegation && {
          impersonatedBy: delegation.by.id,
          impersonatorCertFingerprintSha256: delegation.by.certificate?.fingerprintSha256 ?? '',
          groups: [...delegation.groups],
          reason: delegation.reason ?? '',
          sessionId: delegation.sessionId ?? '',
          impersonatorRoles: [...state.roleNamesOf(delegation.by.id)],
        },
      });
    },
    createApiKey: async (request, ctx) => {
      const { record, token } = await admin.createApiKey(ctx, {
        description: request.description,
        permissions: request.permissions,
        resourceGlobs: globsOf(request.resourceGlobs),
        ttlMs: request.ttl && durationMs(request.ttl),
        allowedCidrs: request.allowedCidrs,
        owner: request.owner,
      });
      return { apiKey: apiKeyMessage(record), secret: token };
    },
    listApiKeys: (request, ctx) => {
      const { keys, nextPageToken } = admin.listApiKeys(ctx, {
        principal: request.principal,
        includeInactive: request.includeInactive,
        pageSize: request.pageSize,
        pageToken: request.pageToken,
      });
      return Promise.resolve({ apiKeys: keys.map(apiKeyMessage), nextPageToken });
    },
    revokeApiKey: async (request, ctx) => ({ apiKey: apiKeyMessage(await admin.revokeApiKey(ctx, request.keyId)) }),
    rotateApiKey: async (request, ctx) => {
      const { record, token, old } = await admin.rotateApiKey(ctx, request.keyId, request.overlap && durationMs(request.overlap));
      return { apiKey: apiKeyMessage(record), secret: token, oldApiKey: apiKeyMessage(old) };
    },
    listRoles: (request) => {
      const { roles, nextPageToken } = admin.listRoles({ pageSize: request.pageSize, pageToken: request.pageToken });
      return Promise.resolve({
        roles: roles.map(roleMessage),
        nextPageToken,
      });
    },
    putRole: async (request, ctx) => {
      if (!request.role) throw new InvalidArgumentError('role', 'required');
      const { role, created } = await admin.putRole(ctx, {
        name: request.role.name,
        description: request.role.description,
        permissions: request.role.permissions,
        denyPermissions: request.role.denyPermissions,
        resourceGlobs: globsOf(request.role.resourceGlobs, 'role.resource_globs'),
      });
      return { role: roleMessage(role), created };
    },
    deleteRole: async (request, ctx) => ({ removedBindings: await admin.deleteRole(ctx, request.roleName) }),
    bindRole: async (request, ctx) => {
      const { createdAt } = await admin.bindRole(ctx, request.principal, request.roleName);
      return { binding: { principal: request.principal, roleName: request.roleName, createdBy: principalOf(ctx).id, createTime: timestampFromDate(new Date(createdAt)), source: RoleBindingSource.STORE } };
    },
    unbindRole: async (request, ctx) => ({ removed: await admin.unbindRole(ctx, request.principal, request.roleName) }),
    listRoleBindings: (request, ctx) => {
      const { bindings, nextPageToken } = admin.listRoleBindings(ctx, { principal: request.principal, roleName: request.roleName, pageSize: request.pageSize, pageToken: request.pageToken });
      return Promise.resolve({ bindings: bindings.map((b) => ({ principal: b.principal, roleName: b.role, source: BINDING_SOURCES[b.source] })), nextPageToken });
    },
    getQuota: async (request, ctx) => {
      const { principal, quotas } = await admin.getQuota(ctx, request.principal);
      return {
        principal,
        quotas: quotas.map((q) => ({ resource: QUOTA_ENUMS.get(q.resource), limit: BigInt(q.limit), used: BigInt(q.used), unlimited: q.unlimited })),
      };
    },
    recomputeQuota: async (request, ctx) => {
      const { before, after, notRecounted } = await admin.recomputeQuota(ctx, request.principal);
      const usage = (q: QuotaView) => ({ resource: QUOTA_ENUMS.get(q.resource), limit: BigInt(q.limit), used: BigInt(q.used), unlimited: q.unlimited });
      return { before: before.map(usage), after: after.map(usage), notRecounted: notRecounted.flatMap((r) => QUOTA_ENUMS.get(r) ?? []) };
    },
    setQuota: async (request, ctx) => {
      const resource = QUOTA_NAMES.get(request.resource);
      if (!resource) throw new InvalidArgumentError('resource', 'must name a quota resource');
      if (request.limit > BigInt(Number.MAX_SAFE_INTEGER)) throw new InvalidArgumentError('limit', 'too large');
      const quota = await admin.setQuota(ctx, request.principal, resource, Number(request.limit), request.unlimited);
      return { quota: { resource: request.resource, limit: BigInt(quota.limit), used: BigInt(quota.used), unlimited: quota.unlimited } };
    },
  };
}

