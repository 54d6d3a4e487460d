// Who holds which roles, kept in memory and current by store watches: role bindings,
// custom roles, API keys and user sessions. The chain reads it on every call without a store round trip.
import type { Config } from '../config/schema.js';
import { BUILTIN_ROLES, type Role } from '../authz/roles.js';
import { authorize, canGrant } from '../authz/decide.js';
import { crossPrincipal } from '../authz/permission.js';
import type { Principal } from '../rpc/principal.js';
import { USER_PREFIX } from '../rpc/impersonation-names.js';
import type { ResourceRef } from '../rpc/policy.js';
import { auditPrincipal } from '../audit/principal.js';
import type { AuditPrincipal } from '../audit/types.js';
import { RecordCache } from '../store/cache.js';
import { closest } from 'fastest-levenshtein';
import type { ApiKeyRecord, PrincipalRecord, RoleRecord, UserSessionRecord } from '../store/records.js';
import type { Repositories } from '../store/repositories.js';

/** Where a role binding comes from: the store (BindRole), or the config file. */
export type BindingSource = 'store' | 'bootstrap_admin' | 'config';

export interface RoleBindingEntry {
  readonly principal: string;
  readonly role: string;
  readonly source: BindingSource;
}

export class AccessState {
  readonly apiKeys: RecordCache<ApiKeyRecord>;
  /** Watch-fed: a revocation written by any daemon reaches this one within a second. */
  readonly userSessions: RecordCache<UserSessionRecord>;
  readonly principals: RecordCache<PrincipalRecord>;
  readonly customRoles: RecordCache<RoleRecord>;
  private bootstrapAdmins: ReadonlySet<string>;
  private defaultBindings: Readonly<Record<string, string[]>>;

  constructor(repos: Repositories, auth: Config['auth'], onProblem: (err: unknown) => void) {
    this.apiKeys = new RecordCache(repos.apiKeys, onProblem);
    this.userSessions = new RecordCache(repos.userSessions, onProblem);
    this.principals = new RecordCache(repos.principals, onProblem);
    this.customRoles = new RecordCache(repos.roles, onProblem);
    this.bootstrapAdmins = new Set(auth.bootstrap_admins);
    this.defaultBindings = auth.default_bindings;
    // Role resolution runs on every call: memoised, and forgotten on any change.
    this.principals.subscribe(() => this.forgetRoleNames());
    this.customRoles.subscribe(() => {
      this.rolesByList = new WeakMap();
    });
  }

  private readonly roleNames = new Map<string, readonly string[]>();
  /** A user's role names with its groups', by user and group list. */
  private readonly userRoleNames = new Map<string, readonly string[]>();
  /**
   * roles() by the names list itself: roleNamesOf hands out one frozen list per principal,
   * and the chain and handlers pass it back on every call. Replaced whenever a custom role
   * changes. The Role lists are frozen too (src/authz/decide.ts remembers decisions per list).
   */
  private rolesByList = new WeakMap<readonly string[], readonly Role[]>();

  /** Resolves once every cache holds its first full listing. */
  async start(signal: AbortSignal): Promise<void> {
    await Promise.all([this.apiKeys.start(signal), this.userSessions.start(signal), this.principals.start(signal), this.customRoles.start(signal)]);
  }

  /** SIGHUP: bootstrap admins and config bindings are reloadable. */
  reconfigure(auth: Config['auth']): void {
    this.bootstrapAdmins = new Set(auth.bootstrap_admins);
    this.defaultBindings = auth.default_bindings;
    this.forgetRoleNames();
  }

  private forgetRoleNames(): void {
    this.roleNames.clear();
    this.userRoleNames.clear();
  }

  isBootstrapAdmin(principal: string): boolean {
    return this.bootstrapAdmins.has(principal);
  }

  /** Bound role names: bootstrap admin, config bindings and store bindings, sorted; one frozen list until they change. */
  roleNamesOf(principal: string): readonly string[] {
    let cached = this.roleNames.get(principal);
    if (!cached) {
      const names = new Set<string>(this.principals.get(principal)?.roles ?? []);
      for (const name of this.defaultBindings[principal] ?? []) names.add(name);
      if (this.bootstrapAdmins.has(principal)) names.add('admin');
      cached = Object.freeze([...names].sort());
      if (this.roleNames.size > 10_000) this.roleNames.clear();
      this.roleNames.set(principal, cached);
    }
    return cached;
  }

  /**
   * The role names a principal acts with: its own bindings, and for a user acted for
   * (impersonation) those of each of its groups too. One frozen list per user and groups.
   */
  roleNamesOfPrincipal(principal: Principal): readonly string[] {
    const groups = principal.delegation?.groups;
    if (!groups || groups.length === 0) return this.roleNamesOf(principal.id);
    const key = `${principal.id}\0${groups.join('\0')}`;
    let cached = this.userRoleNames.get(key);
    if (!cached) {
      const names = new Set<string>(this.roleNamesOf(principal.id));
      for (const group of groups) for (const name of this.roleNamesOf(group)) names.add(name);
      cached = Object.freeze([...names].sort());
      if (this.userRoleNames.size > 10_000) this.userRoleNames.clear();
      this.userRoleNames.set(key, cached);
    }
    return cached;
  }

  /** How the principal appears in audit records, with the certificate acting for it if it is a user. */
  auditPrincipalOf(principal: Principal): AuditPrincipal {
    const by = principal.delegation?.by;
    return auditPrincipal(principal, this.roleNamesOfPrincipal(principal), by && this.roleNamesOf(by.id));
  }

  /** Every binding, from the config file (bootstrap admins, default bindings) and from the store. */
  bindings(): RoleBindingEntry[] {
    return [
      ...[...this.bootstrapAdmins].map((principal) => ({ principal, role: 'admin', source: 'bootstrap_admin' as const })),
      ...Object.entries(this.defaultBindings).flatMap(([principal, roles]) => roles.map((role) => ({ principal, role, source: 'config' as const }))),
      ...this.principals.values().flatMap((record) => record.roles.map((role) => ({ principal: record.id, role, source: 'store' as const }))),
    ];
  }

  /** The existing role whose name is closest to `name` (a hint for a typo). */
  closestRoleName(name: string): string {
    return closest(name, [...BUILTIN_ROLES.keys(), ...this.customRoles.values().map((role) => role.name)]);
  }

  /** Config bindings (auth.default_bindings) to roles that do not exist: they grant nothing. */
  configBindingsToUnknownRoles(): RoleBindingEntry[] {
    return this.bindings().filter((binding) => binding.source === 'config' && !this.role(binding.role));
  }

  /** A role by name: built-in first (immutable), then custom. */
  role(name: string): Role | undefined {
    const builtin = BUILTIN_ROLES.get(name);
    if (builtin) return builtin;
    const custom = this.customRoles.get(name);
    return custom && { name: custom.name, description: custom.description, permissions: custom.permissions, deny: custom.deny_permissions, resourceGlobs: custom.resource_globs, builtin: false };
  }

  /** The roles that exist among `names` (a binding to a deleted role grants nothing). */
  roles(names: readonly string[]): readonly Role[] {
    const known = this.rolesByList.get(names);
    if (known) return known;
    const roles = Object.freeze(names.flatMap((name) => this.role(name) ?? []));
    // Only a frozen list can be remembered by identity: another may change under the cache.
    if (Object.isFrozen(names)) this.rolesByList.set(names, roles);
    return roles;
  }

  /**
   * Whether the principal (through its key, if it used one) holds `permission` right now,
   * for `resources` when given (role and key globs then apply to them). A user acted for
   * holds it only if the certificate acting for it does too.
   */
  allows(principal: Principal, permission: string, resources?: readonly ResourceRef[]): boolean {
    const own = authorize({
      roles: this.roles(this.roleNamesOfPrincipal(principal)),
      required: permission,
      exemptFromDeny: this.isBootstrapAdmin(principal.id),
      ...(principal.apiKey ? { apiKey: principal.apiKey } : {}),
      ...(resources ? { resources } : {}),
    }).allowed;
    const by = principal.delegation?.by;
    return own && (by === undefined || this.allows(by, permission, resources));
  }

  /**
   * Whether the principal (through its key, if it used one) holds every one of the
   * permission patterns `requested` right now, free of any deny, so it may hand them out:
   * in a key, a role, a binding, or by lifting a deny. A user acted for may hand out only
   * what both it and the certificate acting for it may.
   */
  mayGrant(principal: Principal, requested: readonly string[]): ReturnType<typeof canGrant> {
    const own = canGrant(this.roles(this.roleNamesOfPrincipal(principal)), requested, principal.apiKey?.permissions, this.isBootstrapAdmin(principal.id));
    const by = principal.delegation?.by;
    if (by === undefined) return own;
    const theirs = this.mayGrant(by, requested);
    if (own.ok && theirs.ok) return own;
    const excess = new Set([...(own.ok ? [] : own.excess), ...(theirs.ok ? [] : theirs.excess)]);
    return { ok: false, excess: requested.filter((p) => excess.has(p)) };
  }

  /**
   * Why credentials a long call authenticated with no longer hold (its API key revoked or
   * expired, its user session ended), or undefined. Streams ask this as they go.
   */
  credentialsProblem(principal: Principal, nowMs: number): string | undefined {
    if (principal.apiKey) {
      const key = this.apiKeys.get(principal.apiKey.id);
      if (!key || key.revoked_at !== undefined) return `API key ${principal.apiKey.id} was revoked`;
      if (key.expires_at !== undefined && Date.parse(key.expires_at) <= nowMs) return `API key ${principal.apiKey.id} expired`;
    }
    const sessionId = principal.delegation?.sessionId;
    if (sessionId !== undefined) {
      const session = this.userSessions.get(sessionId);
      if (!session || session.revoked_at !== undefined || Date.parse(session.expires_at) <= nowMs) return `user session ${sessionId} ended`;
    }
    return principal.delegation ? this.credentialsProblem(principal.delegation.by, nowMs) : undefined;
  }

  /** Acting on objects owned by someone else needs the `:any` form of the permission. */
  mayActOn(principal: Principal, owner: string, permission: string): boolean {
    return owner === principal.id || this.allows(principal, crossPrincipal(permission), ownerResources(owner));
  }
}

/**
 * The owner of an object as RBAC resources, for the `:any` checks: a user owner is a USER
 * resource (so a role scoped to some users lends its `:any` only for them); other owners name none.
 */
export function ownerResources(owner: string): ResourceRef[] {
  return owner.startsWith(USER_PREFIX) ? [{ kind: 'user', name: owner.slice(USER_PREFIX.length) }] : [];
}
