// The authorization decision: roles (with deny), API-key intersection and
// resource-glob scoping of keys and roles, plus the escalation check for issuing keys.
import type { ResourceRef } from '../rpc/policy.js';
import { isValidPermission, patternCovers, patternsIntersect, permissionMatches } from './permission.js';
import { globMatches, type ResourceGlob } from './globs.js';
import type { Role } from './roles.js';

export { globMatches, isValidResourceGlob, keyScopeShows, type ResourceGlob } from './globs.js';

export interface AuthorizeInput {
  /** The principal's CURRENT roles (for an API key: its owner's current roles). */
  readonly roles: readonly Role[];
  /** The concrete permission the RPC requires. */
  readonly required: string;
  /**
   * True for a bootstrap admin from the config (or its keys): no deny applies to it, so a
   * deny written into the store can never lock out the operator's way to recover.
   */
  readonly exemptFromDeny?: boolean;
  /** Present when the caller authenticated with an API key. */
  readonly apiKey?: { readonly permissions: readonly string[]; readonly resourceGlobs: readonly ResourceGlob[] };
  /** Every resource the RPC names ({@link resourcesOf}); a scoped key, and a scoped role to grant, must cover each one. */
  readonly resources?: readonly ResourceRef[];
}

/** Why a request was refused; for logs and audit, not for the client. */
export type DenyReason = 'not_granted' | 'outside_role_scope' | 'denied_by_role' | 'not_granted_to_key' | 'outside_key_scope' | 'not_granted_to_impersonator';

export type AuthorizeResult =
  | { allowed: true }
  | { allowed: false; missing: string; reason: DenyReason; /** The resource outside the key's (or the granting roles') scope. */ resource?: ResourceRef };

// ---------------------------------------------------------------------------
// Decisions

const ALLOWED: AuthorizeResult = Object.freeze({ allowed: true });
const NO_RESOURCES: readonly ResourceRef[] = Object.freeze([]);

function denied(roles: readonly Role[], required: string): boolean {
  return roles.some((r) => r.deny.some((d) => permissionMatches(d, required)));
}

/**
 * The first resource a role's globs keep it from granting on: one of a kind the role has
 * globs for that none of them matches. Kinds without globs are not restricted by the role.
 */
function outsideRoleScope(role: Role, resources: readonly ResourceRef[]): ResourceRef | undefined {
  const globs = role.resourceGlobs;
  if (globs.length === 0) return undefined;
  return resources.find((r) => globs.some((g) => g.kind === r.kind) && !globs.some((g) => g.kind === r.kind && globMatches(g.glob, r.name)));
}

/**
 * What the roles decide about a permission whatever the resources: a decision (deny wins,
 * unless exempt; else a grant by an unscoped role allows; no grant refuses), or, when only
 * scoped roles grant it, those roles: their globs decide each call.
 */
type RoleVerdict = AuthorizeResult | readonly Role[];

function verdictOfRoles(roles: readonly Role[], required: string, exemptFromDeny: boolean): RoleVerdict {
  if (!exemptFromDeny && denied(roles, required)) return Object.freeze({ allowed: false, missing: required, reason: 'denied_by_role' });
  const granting = roles.filter((r) => r.permissions.some((g) => permissionMatches(g, required)));
  if (granting.length === 0) return Object.freeze({ allowed: false, missing: required, reason: 'not_granted' });
  return granting.some((r) => r.resourceGlobs.length === 0) ? ALLOWED : Object.freeze(granting);
}

/** One call's decision when only scoped roles grant its permission: one of them must have every named resource in scope. */
function decideInScope(granting: readonly Role[], required: string, resources: readonly ResourceRef[]): AuthorizeResult {
  let outside: ResourceRef | undefined;
  for (const role of granting) {
    const resource = outsideRoleScope(role, resources);
    if (resource === undefined) return ALLOWED;
    outside ??= resource;
  }
  return { allowed: false, missing: required, reason: 'outside_role_scope', ...(outside && { resource: outside }) };
}

const ROLE_VERDICTS_LIMIT = 1024;
// Role lists are resolved once per binding and replaced, never changed, when a role or
// binding changes (src/access/state.ts), so a verdict can be kept per list and permission
// (separately for principals no deny applies to). Verdicts never depend on the resources.
const roleVerdicts = new WeakMap<readonly Role[], Map<string, RoleVerdict>>();
const exemptRoleVerdicts = new WeakMap<readonly Role[], Map<string, RoleVerdict>>();

/** What the roles alone decide on this call; the part that does not depend on the resources is remembered. */
function roleDecision(roles: readonly Role[], required: string, exemptFromDeny: boolean, resources: readonly ResourceRef[]): AuthorizeResult {
  const cache = exemptFromDeny ? exemptRoleVerdicts : roleVerdicts;
  let verdicts = cache.get(roles);
  if (!verdicts) cache.set(roles, (verdicts = new Map<string, RoleVerdict>()));
  let verdict = verdicts.get(required);
  if (!verdict) {
    verdict = verdictOfRoles(roles, required, exemptFromDeny);
    if (verdicts.size >= ROLE_VERDICTS_LIMIT) verdicts.clear();
    verdicts.set(required, verdict);
  }
  return 'allowed' in verdict ? verdict : decideInScope(verdict, required, resources);
}

/**
 * Kinds whose resources handlers already restrict to the caller's own (operations:
 * a caller sees its own unless granted `operation:<action>:any`). A scoped key is
 * restricted on these only if it carries globs of that kind, so a CI key scoped to
 * pool `ci-*` can still wait on the clone operation it started.
 */
export const OWNER_FILTERED_KINDS: ReadonlySet<string> = new Set(['operation']);

function inKeyScope(globs: readonly ResourceGlob[], resource: ResourceRef): boolean {
  let kindSeen = false;
  for (const g of globs) {
    if (g.kind !== resource.kind) continue;
    kindSeen = true;
    if (globMatches(g.glob, resource.name)) return true;
  }
  return !kindSeen && OWNER_FILTERED_KINDS.has(resource.kind);
}

/**
 * Decides one call. A principal is allowed if some role grants `required` and no
 * role denies it (deny wins, except for bootstrap admins: `exemptFromDeny`). A role
 * with resource globs grants only if every resource the call names of a kind it has
 * globs for matches one of them; its denies apply whatever the resources. An API
 * key's rights are the intersection of its own permissions and its owner's current
 * roles, so a key loses what its owner loses. A key with any resource globs may only
 * address a named resource if one of its globs has that resource's kind and matches
 * its name (except {@link OWNER_FILTERED_KINDS} when it has no glob of that kind), and
 * this holds for EVERY resource the RPC names (a clone's template pool as well as its
 * target pool). RPCs without a target (lists, the caller itself) are not restricted
 * here, by key or role globs — their handlers filter.
 */
export function authorize(input: AuthorizeInput): AuthorizeResult {
  const { roles, required, apiKey, resources } = input;
  const byRoles = roleDecision(roles, required, input.exemptFromDeny === true, resources ?? NO_RESOURCES);
  if (!byRoles.allowed) return byRoles;
  if (apiKey) {
    if (!apiKey.permissions.some((g) => permissionMatches(g, required))) {
      return { allowed: false, missing: required, reason: 'not_granted_to_key' };
    }
    if (apiKey.resourceGlobs.length > 0) {
      const outside = resources?.find((resource) => !inKeyScope(apiKey.resourceGlobs, resource));
      if (outside) return { allowed: false, missing: required, reason: 'outside_key_scope', resource: outside };
    }
  }
  return ALLOWED;
}

/**
 * Escalation check for issuing an API key, writing a role or binding one, and for
 * lifting a deny (which grants what it denied): every requested pattern must be
 * valid, covered by a single grant of one of the holder's unscoped roles (a scoped
 * role's grants are never handed on: what it grants depends on the call's resources,
 * which a key, a role or a binding would not carry), intersect none of the holder's
 * denies (unless the holder is exempt from denies: a bootstrap admin), and — when the
 * holder is itself acting through an API key — be covered by one of that key's
 * permissions.
 */
export function canGrant(
  holderRoles: readonly Role[],
  requested: readonly string[],
  holderKeyPermissions?: readonly string[],
  exemptFromDeny = false,
): { ok: true } | { ok: false; excess: string[] } {
  const grants = holderRoles.flatMap((r) => (r.resourceGlobs.length === 0 ? r.permissions : []));
  const denies = exemptFromDeny ? [] : holderRoles.flatMap((r) => r.deny);
  const excess = requested.filter(
    (p) =>
      !isValidPermission(p) ||
      !grants.some((g) => patternCovers(g, p)) ||
      denies.some((d) => patternsIntersect(d, p)) ||
      (holderKeyPermissions !== undefined && !holderKeyPermissions.some((g) => patternCovers(g, p))),
  );
  return excess.length === 0 ? { ok: true } : { ok: false, excess };
}

/**
 * How a role's deny list changes from `before` to `after`: `lifted` holds the old
 * patterns no new one covers (every permission no longer denied matches one of them,
 * so the writer must hold them all); `imposed` the new patterns no old one covers.
 * Conservative: narrowing `vm:*` to `vm:start` lifts all of `vm:*`.
 */
export function denyChange(before: readonly string[], after: readonly string[]): { lifted: string[]; imposed: string[] } {
  return {
    lifted: before.filter((d) => !after.some((n) => patternCovers(n, d))),
    imposed: after.filter((d) => !before.some((o) => patternCovers(o, d))),
  };
}
