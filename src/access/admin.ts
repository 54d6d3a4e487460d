// API keys, roles, bindings and quotas: the rules behind AccessService, apart from
// the protobuf mapping in src/services/access.ts. Every change is audited as SECURITY.
import { BlockList, isIP } from 'node:net';
import type { AuditLog } from '../audit/log.js';
import { newToken } from '../authn/apikey-token.js';
import type { Principal } from '../rpc/principal.js';
import { denyChange, globMatches, isValidResourceGlob, type ResourceGlob } from '../authz/decide.js';
import { resourceKindFromName } from '../rpc/policy.js';
import { wideningsOf, type KeyBounds } from '../authz/narrowing.js';
import { crossPrincipal, isValidPermission, permissionMatches } from '../authz/permission.js';
import { isBuiltinRole, ROLE_NAME, type Role } from '../authz/roles.js';
import type { PermissionCatalogue } from '../authz/catalogue.js';
import type { Config } from '../config/schema.js';
import { validateText } from '../backends/validate.js';
import { InvalidArgumentError, RpcError } from '../rpc/errors.js';
import { IMPERSONATE_PERMISSION, impersonatedPrincipalProblem } from '../rpc/impersonation-names.js';
import type { CallContext } from '../rpc/context.js';
import { ConflictError, NotFoundError } from '../store/errors.js';
import { retryOnConflict } from '../store/repository.js';
import type { ApiKeyRecord, QuotaRecord, RoleRecord } from '../store/records.js';
import type { Repositories } from '../store/repositories.js';
import type { AccessState, RoleBindingEntry } from './state.js';
import { pageByKey } from '../rpc/paging.js';
import type { QuotaManager, QuotaResourceName, QuotaView } from '../quota/manager.js';
import { EventKind } from '../gen/debvisor/v1/event_pb.js';
import { ResourceKind } from '../gen/debvisor/v1/options_pb.js';
import { causeOf } from '../events/cause.js';
import { NO_EVENTS, type EventSink } from '../events/types.js';

const DAY_MS = 86_400_000;
/** Lets an API key rotate and revoke keys other than itself (with no resource globs). */
const KEY_ADMINISTRATION = 'access:apikey:*';
/** Ids become store key segments (src/store/layout.ts), which refuse empty and over-long values. */
const MAX_ID_LENGTH = 512;

/** The longest description of a key or a role. */
const MAX_DESCRIPTION_LENGTH = 512;

/**
 * An id the store can key by (instead of INTERNAL from the store), and text that cannot forge
 * log lines or drive an operator's terminal; else INVALID_ARGUMENT.
 */
function requireId(value: string, field: string): void {
  if (!value) throw new InvalidArgumentError(field, 'required');
  validateText(value, field, MAX_ID_LENGTH);
}

/** Resource globs of a key or a role: each names a resource kind and is a valid glob; else INVALID_ARGUMENT. */
function validateResourceGlobs(globs: readonly ResourceGlob[], field: string): void {
  globs.forEach((glob, index) => {
    if (!resourceKindFromName(glob.kind)) throw new InvalidArgumentError(`${field}[${index}].kind`, 'must name a resource kind');
    if (!isValidResourceGlob(glob.glob)) throw new InvalidArgumentError(`${field}[${index}].glob`, `"${glob.glob}" is not a valid glob (letters, digits, . _ - and * ?)`);
  });
}

export type { QuotaResourceName, QuotaView };

/** Granting the right to act for users is named as such in the SECURITY record. */
function impersonationNote(permissions: readonly string[]): string {
  return permissions.some((granted) => permissionMatches(granted, IMPERSONATE_PERMISSION)) ? ' (grants access:impersonate)' : '';
}

export class AccessAdmin {
  constructor(
    private readonly repos: Repositories,
    private readonly state: AccessState,
    private readonly audit: AuditLog,
    private readonly settings: () => Config,
    private readonly quotas: QuotaManager,
    private readonly catalogue: PermissionCatalogue,
    private readonly events: EventSink = NO_EVENTS,
  ) {}

  /** After the change is stored. Keys are owner-scoped (ListApiKeys); bindings are scoped by the bound principal (ListRoleBindings). */
  private publish(
    ctx: CallContext,
    kind: EventKind.APIKEY_CREATED | EventKind.APIKEY_REVOKED | EventKind.ROLE_CHANGED | EventKind.BINDING_CHANGED,
    change: 'created' | 'changed' | 'deleted' | 'revoked' | 'rotated',
    about: { key: ApiKeyRecord } | { role: string } | { principal: string; role: string },
  ): void {
    const resource =
      'key' in about
        ? { kind: ResourceKind.API_KEY, name: about.key.id, owner: about.key.owner }
        : 'principal' in about
          ? { kind: ResourceKind.PRINCIPAL, name: about.principal }
          : { kind: ResourceKind.ROLE, name: about.role };
    const payload = 'key' in about ? { change, principal: about.key.owner } : 'principal' in about ? { change, principal: about.principal, role: about.role } : { change, role: about.role };
    const { actor, traceId } = causeOf(ctx);
    this.events.publish({ kind, resource, actor, traceId, payload: { case: 'access', value: payload } });
  }

  // ---- who may act on whom --------------------------------------------------

  private caller(ctx: CallContext): Principal {
    if (!ctx.principal) throw new RpcError('UNAUTHENTICATED', 'no principal');
    return ctx.principal;
  }

  /** Acting on another principal's objects needs the `:any` form of the permission. */
  private requireCrossPrincipal(ctx: CallContext, permission: string, target: string): void {
    if (!this.state.mayActOn(this.caller(ctx), target, permission)) {
      throw new RpcError('PERMISSION_DENIED', `permission denied: acting on ${target} requires ${crossPrincipal(permission)}`);
    }
  }

  private canActOnAll(ctx: CallContext, permission: string): boolean {
    return this.state.allows(this.caller(ctx), crossPrincipal(permission));
  }

  private security(ctx: CallContext, reason: string, object: string, details?: Record<string, unknown>): void {
    const caller = this.caller(ctx);
    this.audit.write({
      type: 'SECURITY',
      trace_id: ctx.traceId,
      principal: this.state.auditPrincipalOf(caller),
      source: ctx.peer,
      object,
      reason,
      ...(details ? { details } : {}),
    });
  }

  /**
   * A creator may hand out only what it holds itself, free of denies (and, through a key,
   * only what the key holds). Lifting a deny hands out what it denied; imposing one
   * needs the same (so nobody can deny what they could not grant, e.g. `*` on an admin).
   */
  private checkEscalation(ctx: CallContext, permissions: readonly string[], field: string, what = 'cannot grant permissions you do not hold'): void {
    const result = this.state.mayGrant(this.caller(ctx), permissions);
    if (!result.ok) throw new RpcError('PERMISSION_DENIED', `${field}: ${what}: ${result.excess.join(', ')}`);
  }

  /** Removing denies grants what they denied. */
  private checkDenyLift(ctx: CallContext, lifted: readonly string[], field: string): void {
    this.checkEscalation(ctx, lifted, field, 'lifting a deny grants what it denies, and you do not hold');
  }

  private checkDenyImposed(ctx: CallContext, denied: readonly string[], field: string): void {
    this.checkEscalation(ctx, denied, field, 'cannot deny permissions you do not hold');
  }

  /** The globs, networks and expiry of the API key making this call. */
  private callerKeyBounds(ctx: CallContext): KeyBounds | undefined {
    const key = this.caller(ctx).apiKey;
    if (!key) return undefined;
    const record = this.state.apiKeys.get(key.id);
    if (!record) throw new RpcError('PERMISSION_DENIED', `permission denied: API key ${key.id} is gone`);
    return {
      resourceGlobs: record.resource_globs,
      allowedCidrs: record.allowed_cidrs,
      expiresAtMs: record.expires_at === undefined ? undefined : Date.parse(record.expires_at),
    };
  }

  /**
   * Rotate and revoke made with an API key act only on that same key, unless the key
   * holds key administration (`access:apikey:*`) without resource globs.
   */
  private requireSameKeyOrKeyAdmin(ctx: CallContext, keyId: string, action: string): void {
    const caller = this.caller(ctx);
    const key = caller.apiKey;
    if (!key || key.id === keyId) return;
    if (key.resourceGlobs.length === 0 && this.state.mayGrant(caller, [KEY_ADMINISTRATION]).ok) return;
    throw new RpcError('PERMISSION_DENIED', `permission denied: an API key may ${action} only itself, unless it holds ${KEY_ADMINISTRATION} without resource globs`);
  }

  private validatePermissions(permissions: readonly string[], field: string): void {
    permissions.forEach((permission, index) => {
      if (!isValidPermission(permission)) throw new InvalidArgumentError(`${field}[${index}]`, `"${permission}" is not a permission (service:resource:action, * wildcards)`);
    });
    this.requireDeclared(permissions, field);
  }

  /** Each permission must match one the API declares: a mistyped deny would deny nothing. */
  private requireDeclared(permissions: readonly string[], field: string): void {
    permissions.forEach((permission, index) => {
      const unknown = this.catalogue.check(permission);
      if (unknown) throw new InvalidArgumentError(`${field}[${index}]`, `"${permission}" matches no permission the API declares; did you mean ${unknown.hint}?`);
    });
  }

  // ---- API keys ---------------------------------------------------------------

  async createApiKey(
    ctx: CallContext,
    request: { description: string; permissions: string[]; resourceGlobs: ResourceGlob[]; ttlMs: number | undefined; allowedCidrs: string[]; owner: string },
  ): Promise<{ record: ApiKeyRecord; token: string }> {
    const caller = this.caller(ctx);
    if (request.owner) requireId(request.owner, 'owner');
    const owner = request.owner || caller.id;
    this.requireCrossPrincipal(ctx, 'access:apikey:create', owner);
    if (request.permissions.length === 0) throw new InvalidArgumentError('permissions', 'a key needs at least one permission');
    this.validatePermissions(request.permissions, 'permissions');
    validateResourceGlobs(request.resourceGlobs, 'resource_globs');
    request.allowedCidrs.forEach((cidr, index) => {
      if (!validCidr(cidr)) throw new InvalidArgumentError(`allowed_cidrs[${index}]`, `"${cidr}" is not an IPv4 or IPv6 network (address/prefix)`);
    });
    validateText(request.description, 'description', MAX_DESCRIPTION_LENGTH);
    this.checkEscalation(ctx, request.permissions, 'permissions');
    const auth = this.settings().auth;
    const now = new Date();
    const holder = this.callerKeyBounds(ctx);
    // Without an explicit ttl, a key made through a key ends when that key does.
    const defaultTtlMs = Math.min(auth.api_key_default_ttl_days * DAY_MS, (holder?.expiresAtMs ?? Infinity) - now.getTime());
    const ttlMs = request.ttlMs ?? defaultTtlMs;
    if (ttlMs <= 0 || ttlMs > auth.api_key_max_ttl_days * DAY_MS) throw new InvalidArgumentError('ttl', `must be between 1 s and ${auth.api_key_max_ttl_days} days`);
    if (holder) {
      const widenings = wideningsOf(holder, { resourceGlobs: request.resourceGlobs, allowedCidrs: request.allowedCidrs, expiresAtMs: now.getTime() + ttlMs });
      const first = widenings[0];
      if (first) {
        throw new RpcError('PERMISSION_DENIED', `${first.field}: a key made with an API key must be no wider than it: ${widenings.map((w) => `${w.field}: ${w.reason}`).join('; ')}`);
      }
    }

    const { token, keyId, secretSha256 } = newToken();
    const record: ApiKeyRecord = {
      schema_version: 1,
      id: keyId,
      owner,
      created_by: caller.id,
      description: request.description,
      permissions: request.permissions,
      resource_globs: request.resourceGlobs,
      allowed_cidrs: request.allowedCidrs,
      secret_sha256: secretSha256,
      created_at: now.toISOString(),
      expires_at: new Date(now.getTime() + ttlMs).toISOString(),
      use_count: 0,
    };
    const stored = await this.repos.apiKeys.create(keyId, record);
    this.state.apiKeys.remember(keyId, record, stored.modRevision);
    this.publish(ctx, EventKind.APIKEY_CREATED, 'created', { key: record });
    this.security(ctx, 'api key created', `api_key:${keyId}`, { owner, permissions: record.permissions });
    return { record, token };
  }

  listApiKeys(ctx: CallContext, request: { principal: string; includeInactive: boolean; pageSize: number; pageToken: string }): { keys: ApiKeyRecord[]; nextPageToken: string } {
    const caller = this.caller(ctx);
    let owner: string | undefined = request.principal || caller.id;
    if (request.principal) this.requireCrossPrincipal(ctx, 'access:apikey:list', owner);
    else if (this.canActOnAll(ctx, 'access:apikey:list')) owner = undefined; // administrators see every key
    const now = Date.now();
    const keys = this.state.apiKeys
      .values()
      .filter((key) => (owner === undefined || key.owner === owner) && (request.includeInactive || isActive(key, now)))
      .sort((a, b) => a.id.localeCompare(b.id));
    const page = pageByKey(keys, (key) => key.id, request);
    return { keys: page.items, nextPageToken: page.nextPageToken };
  }

  private async ownKey(ctx: CallContext, keyId: string, permission: string): Promise<{ record: ApiKeyRecord; modRevision: number }> {
    const found = await this.repos.apiKeys.get(keyId);
    // The same answer for "absent" and "not yours", so key ids of others cannot be probed.
    if (!found) throw new RpcError('NOT_FOUND', `API key ${keyId} not found`);
    try {
      this.requireCrossPrincipal(ctx, permission, found.value.owner);
    } catch {
      throw new RpcError('NOT_FOUND', `API key ${keyId} not found`);
    }
    return { record: found.value, modRevision: found.modRevision };
  }

  async revokeApiKey(ctx: CallContext, keyId: string): Promise<ApiKeyRecord> {
    requireId(keyId, 'key_id');
    this.requireSameKeyOrKeyAdmin(ctx, keyId, 'revoke');
    const outcome = { revokedNow: false };
    const revoked = await retryOnConflict(async () => {
      const { record, modRevision } = await this.ownKey(ctx, keyId, 'access:apikey:revoke');
      outcome.revokedNow = record.revoked_at === undefined;
      const next: ApiKeyRecord = { ...record, revoked_at: record.revoked_at ?? new Date().toISOString() };
      const stored = await this.repos.apiKeys.update(keyId, next, modRevision);
      this.state.apiKeys.remember(keyId, next, stored.modRevision);
      return next;
    });
    // Revoking a revoked key again changes nothing: no second event.
    if (outcome.revokedNow) this.publish(ctx, EventKind.APIKEY_REVOKED, 'revoked', { key: revoked });
    this.security(ctx, 'api key revoked', `api_key:${keyId}`);
    return revoked;
  }

  async rotateApiKey(ctx: CallContext, keyId: string, overlapMs: number | undefined): Promise<{ record: ApiKeyRecord; token: string; old: ApiKeyRecord }> {
    requireId(keyId, 'key_id');
    this.requireSameKeyOrKeyAdmin(ctx, keyId, 'rotate');
    return retryOnConflict(() => this.rotateOnce(ctx, keyId, overlapMs));
  }

  private async rotateOnce(ctx: CallContext, keyId: string, overlapMs: number | undefined): Promise<{ record: ApiKeyRecord; token: string; old: ApiKeyRecord }> {
    const { record, modRevision } = await this.ownKey(ctx, keyId, 'access:apikey:rotate');
    if (!isActive(record, Date.now())) throw new RpcError('FAILED_PRECONDITION', `API key ${keyId} is revoked or expired; create a new one`);
    const overlap = overlapMs ?? this.settings().auth.api_key_rotation_overlap_seconds * 1000;
    if (overlap < 0 || overlap > 30 * DAY_MS) throw new InvalidArgumentError('overlap', 'must be between 0 and 30 days');
    const { token, keyId: newId, secretSha256 } = newToken();
    const now = new Date();
    const lifetime = record.expires_at ? Date.parse(record.expires_at) - Date.parse(record.created_at) : this.settings().auth.api_key_default_ttl_days * DAY_MS;
    // Through an API key, the new key ends no later than the calling key: no endless self-renewal.
    const expiresAtMs = Math.min(now.getTime() + lifetime, this.callerKeyBounds(ctx)?.expiresAtMs ?? Infinity);
    const fresh: ApiKeyRecord = {
      ...record,
      id: newId,
      created_by: this.caller(ctx).id,
      secret_sha256: secretSha256,
      created_at: now.toISOString(),
      expires_at: new Date(expiresAtMs).toISOString(),
      rotated_from: keyId,
      use_count: 0,
      last_used_at: undefined,
      replaced_by: undefined,
    };
    const overlapEnds = new Date(now.getTime() + overlap).toISOString();
    const old: ApiKeyRecord = {
      ...record,
      replaced_by: newId,
      expires_at: record.expires_at && record.expires_at < overlapEnds ? record.expires_at : overlapEnds,
    };
    // One transaction: there is never a moment with both keys unlimited or neither usable.
    const result = await this.repos.apiKeys.store.txn({
      compare: [{ key: this.repos.apiKeys.keyOf(keyId), modRevision }, { key: this.repos.apiKeys.keyOf(newId), absent: true }],
      success: [
        { type: 'put', key: this.repos.apiKeys.keyOf(newId), value: this.repos.apiKeys.encode(fresh) },
        { type: 'put', key: this.repos.apiKeys.keyOf(keyId), value: this.repos.apiKeys.encode(old) },
      ],
    });
    if (!result.succeeded) throw new ConflictError(`API key ${keyId} changed concurrently`);
    this.state.apiKeys.remember(newId, fresh, result.revision);
    this.state.apiKeys.remember(keyId, old, result.revision);
    // The old key works until the overlap ends, but it is on its way out: REVOKED with change "rotated".
    this.publish(ctx, EventKind.APIKEY_CREATED, 'created', { key: fresh });
    this.publish(ctx, EventKind.APIKEY_REVOKED, 'rotated', { key: old });
    this.security(ctx, 'api key rotated', `api_key:${keyId}`, { new_key_id: newId, old_key_expires_at: old.expires_at });
    return { record: fresh, token, old };
  }

  // ---- roles and bindings -----------------------------------------------------

  listRoles(request: { pageSize: number; pageToken: string }): { roles: Role[]; nextPageToken: string } {
    const names = new Set<string>([...this.state.customRoles.values().map((role) => role.name)]);
    const roles = [...this.builtinRoles(), ...[...names].flatMap((name) => this.state.role(name) ?? [])].sort((a, b) => a.name.localeCompare(b.name));
    const page = pageByKey(roles, (role) => role.name, request);
    return { roles: page.items, nextPageToken: page.nextPageToken };
  }

  private builtinRoles(): Role[] {
    return ['admin', 'operator', 'developer', 'monitor', 'viewer'].flatMap((name) => this.state.role(name) ?? []);
  }

  async putRole(
    ctx: CallContext,
    role: { name: string; description: string; permissions: string[]; denyPermissions: string[]; resourceGlobs: ResourceGlob[] },
  ): Promise<{ role: Role; created: boolean }> {
    if (!ROLE_NAME.test(role.name)) throw new InvalidArgumentError('role.name', 'lower-case letters, digits, _ and -, starting with a letter, at most 63');
    if (isBuiltinRole(role.name)) throw new RpcError('FAILED_PRECONDITION', `role ${role.name} is built in and cannot be changed`);
    validateText(role.description, 'role.description', MAX_DESCRIPTION_LENGTH);
    this.validatePermissions(role.permissions, 'role.permissions');
    this.validatePermissions(role.denyPermissions, 'role.deny_permissions');
    validateResourceGlobs(role.resourceGlobs, 'role.resource_globs');
    // Globs only narrow what a role grants: the writer must hold the permissions unscoped all the same.
    this.checkEscalation(ctx, role.permissions, 'role.permissions');
    const outcome = { created: false };
    const record = await this.repos.roles.mutate(role.name, (current) => {
      outcome.created = current === undefined;
      // Checked against the version being replaced: a deny dropped or narrowed is lifted, a new one imposed.
      const { lifted, imposed } = denyChange(current?.deny_permissions ?? [], role.denyPermissions);
      this.checkDenyLift(ctx, lifted, 'role.deny_permissions');
      this.checkDenyImposed(ctx, imposed, 'role.deny_permissions');
      const next: RoleRecord = {
        schema_version: 1,
        name: role.name,
        description: role.description,
        permissions: role.permissions,
        deny_permissions: role.denyPermissions,
        resource_globs: role.resourceGlobs,
        updated_at: new Date().toISOString(),
      };
      return next;
    });
    if (record) this.state.customRoles.remember(role.name, record.value, record.modRevision);
    this.publish(ctx, EventKind.ROLE_CHANGED, outcome.created ? 'created' : 'changed', { role: role.name });
    const scope = role.resourceGlobs.length > 0 ? { resource_globs: role.resourceGlobs.map((g) => `${g.kind}=${g.glob}`) } : {};
    this.security(ctx, `${outcome.created ? 'role created' : 'role changed'}${impersonationNote(role.permissions)}`, `role:${role.name}`, { permissions: role.permissions, deny: role.denyPermissions, ...scope });
    return {
      role: { name: role.name, description: role.description, permissions: role.permissions, deny: role.denyPermissions, resourceGlobs: role.resourceGlobs, builtin: false },
      created: outcome.created,
    };
  }

  async deleteRole(ctx: CallContext, name: string): Promise<number> {
    requireId(name, 'role_name');
    if (isBuiltinRole(name)) throw new RpcError('FAILED_PRECONDITION', `role ${name} is built in and cannot be deleted`);
    const found = await this.repos.roles.get(name);
    if (!found) throw new NotFoundError(`role ${name} not found`);
    this.checkDenyLift(ctx, found.value.deny_permissions, 'role_name');
    // Only the version checked goes; its bindings then name nothing, and are removed after.
    await this.repos.roles.delete(name, found.modRevision);
    this.state.customRoles.remember(name, undefined, await this.repos.roles.store.revision());
    this.publish(ctx, EventKind.ROLE_CHANGED, 'deleted', { role: name });
    let removed = 0;
    for (const principal of this.state.principals.values().filter((p) => p.roles.includes(name))) {
      if (await this.unbind(principal.id, name)) this.publish(ctx, EventKind.BINDING_CHANGED, 'deleted', { principal: principal.id, role: name });
      removed++;
    }
    this.security(ctx, 'role deleted', `role:${name}`, { removed_bindings: removed });
    return removed;
  }

  async bindRole(ctx: CallContext, principal: string, roleName: string): Promise<{ createdAt: string }> {
    requireId(principal, 'principal');
    // user:<name> and group:<name> take the impersonate-user/-group name rule, or could never match a call.
    const badName = impersonatedPrincipalProblem(principal);
    if (badName) throw new InvalidArgumentError('principal', badName);
    const role = this.state.role(roleName);
    if (!role) throw new InvalidArgumentError('role_name', `no role named "${roleName}"; did you mean ${this.state.closestRoleName(roleName)}?`);
    this.checkEscalation(ctx, role.permissions, 'role_name');
    this.checkDenyImposed(ctx, role.deny, 'role_name');
    const now = new Date().toISOString();
    const outcome = { bound: false };
    const record = await this.repos.principals.mutate(principal, (current) => {
      outcome.bound = !current?.roles.includes(roleName);
      return outcome.bound ? { schema_version: 1, id: principal, roles: [...(current?.roles ?? []), roleName].sort(), updated_at: now } : undefined;
    });
    // mutate hands back the unchanged record when the binding was there already: no event then.
    if (record && outcome.bound) {
      this.state.principals.remember(principal, record.value, record.modRevision);
      this.publish(ctx, EventKind.BINDING_CHANGED, 'created', { principal, role: roleName });
    }
    this.security(ctx, `role bound${impersonationNote(role.permissions)}`, `principal:${principal}`, { role: roleName });
    return { createdAt: now };
  }

  async unbindRole(ctx: CallContext, principal: string, roleName: string): Promise<boolean> {
    requireId(principal, 'principal');
    this.checkDenyLift(ctx, this.state.role(roleName)?.deny ?? [], 'role_name');
    const removed = await this.unbind(principal, roleName);
    if (removed) this.publish(ctx, EventKind.BINDING_CHANGED, 'deleted', { principal, role: roleName });
    this.security(ctx, 'role unbound', `principal:${principal}`, { role: roleName, removed });
    return removed;
  }

  private async unbind(principal: string, roleName: string): Promise<boolean> {
    const outcome = { removed: false };
    const record = await this.repos.principals.mutate(principal, (current) => {
      outcome.removed = current?.roles.includes(roleName) ?? false;
      return outcome.removed && current ? { ...current, roles: current.roles.filter((r) => r !== roleName), updated_at: new Date().toISOString() } : undefined;
    });
    if (record && outcome.removed) this.state.principals.remember(principal, record.value, record.modRevision);
    return outcome.removed;
  }

  /** Who holds which role, filtered; a key scoped to principal globs sees only those principals. */
  listRoleBindings(ctx: CallContext, request: { principal: string; roleName: string; pageSize: number; pageToken: string }): { bindings: RoleBindingEntry[]; nextPageToken: string } {
    if (request.principal) requireId(request.principal, 'principal');
    if (request.roleName.length > MAX_ID_LENGTH) throw new InvalidArgumentError('role_name', `at most ${MAX_ID_LENGTH} characters`);
    const principalGlobs = (this.caller(ctx).apiKey?.resourceGlobs ?? []).filter((glob) => glob.kind === 'principal');
    const keyOf = (b: RoleBindingEntry) => `${b.principal}\u0000${b.role}\u0000${b.source}`;
    const bindings = this.state
      .bindings()
      .filter(
        (b) =>
          (!request.principal || b.principal === request.principal) &&
          (!request.roleName || b.role === request.roleName) &&
          (principalGlobs.length === 0 || principalGlobs.some((glob) => globMatches(glob.glob, b.principal))),
      )
      .sort((a, b) => (keyOf(a) < keyOf(b) ? -1 : keyOf(a) > keyOf(b) ? 1 : 0));
    const page = pageByKey(bindings, keyOf, request);
    return { bindings: page.items, nextPageToken: page.nextPageToken };
  }

  // ---- quotas -------------------------------------------------------------------

  async getQuota(ctx: CallContext, principal: string): Promise<{ principal: string; quotas: QuotaView[] }> {
    const target = principal || this.caller(ctx).id;
    requireId(target, 'principal');
    this.requireCrossPrincipal(ctx, 'access:quota:get', target);
    return { principal: target, quotas: await this.quotas.view(target) };
  }

  async recomputeQuota(ctx: CallContext, principal: string): Promise<Awaited<ReturnType<QuotaManager['recompute']>>> {
    requireId(principal, 'principal');
    const result = await this.quotas.recompute(principal, { signal: ctx.signal });
    this.security(ctx, 'quota usage recomputed', `principal:${principal}`, { not_recounted: result.notRecounted });
    return result;
  }

  async setQuota(ctx: CallContext, principal: string, resource: QuotaResourceName, limit: number, unlimited: boolean): Promise<QuotaView> {
    requireId(principal, 'principal');
    const record = await this.repos.quotas.mutate([principal, resource], (current): QuotaRecord => {
      const base = { schema_version: 1 as const, principal, resource, used: current?.used ?? 0, updated_at: new Date().toISOString() };
      return unlimited ? { ...base, unlimited: true } : { ...base, limit };
    });
    this.security(ctx, 'quota set', `principal:${principal}`, { resource, limit: unlimited ? 'unlimited' : limit });
    const value = record?.value;
    return { resource, limit: value?.limit ?? 0, used: value?.used ?? 0, unlimited: value?.unlimited ?? false };
  }
}

export function isActive(key: ApiKeyRecord, now: number): boolean {
  return key.revoked_at === undefined && (key.expires_at === undefined || Date.parse(key.expires_at) > now);
}

function validCidr(cidr: string): boolean {
  const [address = '', bits, extra] = cidr.split('/');
  const family = isIP(address);
  if (family === 0 || bits === undefined || extra !== undefined || !/^\d{1,3}$/.test(bits)) return false;
  const prefix = Number(bits);
  if (prefix > (family === 4 ? 32 : 128)) return false;
  try {
    new BlockList().addSubnet(address, prefix, family === 4 ? 'ipv4' : 'ipv6');
    return true;
  } catch {
    return false;
  }
}
