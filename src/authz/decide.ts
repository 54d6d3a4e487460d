// The authorization decision: roles (with deny), API-key intersection and
// resource-glob scoping, plus the escalation check for issuing keys.
import type { ResourceRef } from '../rpc/policy.js';
import { isValidPermission, patternCovers, patternsIntersect, permissionMatches } from './permission.js';
import { globMatches } from './globs.js';
import type { Role } from './roles.js';

export { globMatches, isValidResourceGlob } from './globs.js';

/** A (kind, glob) restriction of a scoped API key; `kind` is a {@link RESOURCE_KIND_NAMES} value. */
export interface ResourceGlob {
  readonly kind: string;
  readonly glob: string;
}

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
  /** Every resource the RPC names ({@link resourcesOf}); a scoped key must cover each one. */
  readonly resources?: readonly ResourceRef[];
}

/** Why a request was refused; for logs and audit, not for the client. */
export type DenyReason = 'not_granted' | 'denied_by_role' | 'not_granted_to_key' | 'outside_key_scope' | 'not_granted_to_impersonator';

export type AuthorizeResult =
  | { allowed: true }
  | { allowed: false; missing: string; reason: DenyReason; /** The resource outside the key's scope. */ resource?: ResourceRef };

// ---------------------------------------------------------------------------
// Decisions

function granted(roles: readonly Role[], required: string): boolean {
  return roles.some((r) => r.permissions.some((g) => permissionMatches(g, required)));
}

function denied(roles: readonly Role[], required: string): boolean {
  return roles.some((r) => r.deny.some((d) => permissionMatches(d, required)));
}

const ALLOWED: AuthorizeResult = Object.freeze({ allowed: true });
const ROLE_DECISIONS_LIMIT = 1024;
// Role lists are resolved once per binding and replaced, never changed, when a role or
// binding changes (src/access/state.ts), so a decision can be kept per list and permission
// (separately for principals no deny applies to).
const roleDecisions = new WeakMap<readonly Role[], Map<string, AuthorizeResult>>();
const exemptRoleDecisions = new WeakMap<readonly Role[], Map<string, AuthorizeResult>>();

/** What the roles alone decide (deny wins, unless exempt), remembered per role list and permission. */
function roleDecision(roles: readonly Role[], required: string, exemptFromDeny: boolean): AuthorizeResult {
  const cache = exemptFromDeny ? exemptRoleDecisions : roleDecisions;
  let decisions = cache.get(roles);
  if (!decisions) cache.set(roles, (decisions = new Map<string, AuthorizeResult>()));
  let decision = decisions.get(required);
  if (!decision) {
    if (!exemptFromDeny && denied(roles, required)) decision = Object.freeze({ allowed: false, missing: required, reason: 'denied_by_role' as const });
    else if (!granted(roles, required)) decision = Object.freeze({ allowed: false, missing: required, reason: 'not_granted' as const });
    else decision = ALLOWED;
    if (decisions.size >= ROLE_DECISIONS_LIMIT) decisions.clear();
    decisions.set(required, decision);
  }
  return decision;
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
 * role denies it (deny wins, except for bootstrap admins: `exemptFromDeny`). An API
 * key's rights are the intersection of its own permissions and its owner's current
 * roles, so a key loses what its owner loses. A key with any resource globs may only
 * address a named resource if one of its globs has that resource's kind and matches
 * its name (except {@link OWNER_FILTERED_KINDS} when it has no glob of that kind), and
 * this holds for EVERY resource the RPC names (a clone's template pool as well as its
 * target pool). RPCs without a target (lists, the caller itself) are not restricted
 * here — their handlers filter.
 */
export function authorize(input: AuthorizeInput): AuthorizeResult {
  const { roles, required, apiKey, resources } = input;
  const byRoles = roleDecision(roles, required, input.exemptFromDeny === true);
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
 * valid, covered by a single grant the holder has, intersect none of the holder's
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
  const grants = holderRoles.flatMap((r) => r.permissions);
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
