// The authorization decision: roles (with deny), API-key intersection and
// resource-glob scoping, plus the escalation check for issuing keys.
import { ScalarType, type DescField, type DescMethod, type Message } from '@bufbuild/protobuf';
import { reflect, type ReflectMessage } from '@bufbuild/protobuf/reflect';
import picomatch from 'picomatch';
import { ResourceKind } from '../gen/debvisor/v1/options_pb.js';
import { policyOf } from '../server/policy.js';
import { isValidPermission, patternCovers, patternsIntersect, permissionMatches } from './permission.js';
import type { Role } from './roles.js';

/** A (kind, glob) restriction of a scoped API key; `kind` is a {@link RESOURCE_KIND_NAMES} value. */
export interface ResourceGlob {
  readonly kind: string;
  readonly glob: string;
}

/** The resource an RPC targets, e.g. `{ kind: 'pool', name: 'rbd' }`. */
export interface ResourceRef {
  readonly kind: string;
  readonly name: string;
}

export interface AuthorizeInput {
  /** The principal's CURRENT roles (for an API key: its owner's current roles). */
  readonly roles: readonly Role[];
  /** The concrete permission the RPC requires. */
  readonly required: string;
  /** Present when the caller authenticated with an API key. */
  readonly apiKey?: { readonly permissions: readonly string[]; readonly resourceGlobs: readonly ResourceGlob[] };
  /** The RPC's target resource, if it names one ({@link resourceOf}). */
  readonly resource?: ResourceRef;
}

/** Why a request was refused; for logs and audit, not for the client. */
export type DenyReason = 'not_granted' | 'denied_by_role' | 'not_granted_to_key' | 'outside_key_scope';

export type AuthorizeResult = { allowed: true } | { allowed: false; missing: string; reason: DenyReason };

/** ResourceKind enum value → the lower-case kind name used in resource globs: RESOURCE_KIND_API_KEY → `api_key`. */
export const RESOURCE_KIND_NAMES: ReadonlyMap<ResourceKind, string> = new Map(
  Object.values(ResourceKind)
    .filter((v): v is ResourceKind => typeof v === 'number' && v !== ResourceKind.UNSPECIFIED)
    .map((v) => [v, ResourceKind[v].toLowerCase()]),
);

const KIND_BY_NAME: ReadonlyMap<string, ResourceKind> = new Map([...RESOURCE_KIND_NAMES].map(([k, n]) => [n, k]));

/** The kind name of a ResourceKind (undefined for UNSPECIFIED). */
export function resourceKindName(kind: ResourceKind): string | undefined {
  return RESOURCE_KIND_NAMES.get(kind);
}

/** The ResourceKind of a kind name (`pool` → RESOURCE_KIND_POOL), for decoding stored globs. */
export function resourceKindFromName(name: string): ResourceKind | undefined {
  return KIND_BY_NAME.get(name);
}

// ---------------------------------------------------------------------------
// Resource globs

/**
 * picomatch with everything but `*`, `?` and `\` escapes switched off: no braces,
 * extglobs, brackets, negation or globstar, and `*`/`?` never cross `/`. Dots are
 * ordinary characters.
 */
const GLOB_OPTIONS: picomatch.PicomatchOptions = {
  dot: true,
  nobrace: true,
  noextglob: true,
  nobracket: true,
  noglobstar: true,
  nonegate: true,
  windows: false,
  maxLength: 256,
};

const GLOB = /^[A-Za-z0-9._\-*?/@:]{1,256}$/;

/** True for a resource glob a key may carry: names' characters plus `*` and `?`, 1–256 characters. */
export function isValidResourceGlob(glob: string): boolean {
  return GLOB.test(glob);
}

const MATCHER_CACHE_LIMIT = 4096;
const matchers = new Map<string, (name: string) => boolean>();

function globMatcher(glob: string): (name: string) => boolean {
  let m = matchers.get(glob);
  if (!m) {
    const re = isValidResourceGlob(glob) ? picomatch.makeRe(glob, GLOB_OPTIONS) : undefined;
    m = re ? (name: string) => re.test(name) : () => false; // an invalid stored glob matches nothing
    if (matchers.size >= MATCHER_CACHE_LIMIT) matchers.clear();
    matchers.set(glob, m);
  }
  return m;
}

/** True if a resource glob matches a resource name (`ci-*` matches `ci-42`, not `prod-1` or `ci-1/x`). */
export function globMatches(glob: string, name: string): boolean {
  return name.length > 0 && globMatcher(glob)(name);
}

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
// binding changes (src/access/state.ts), so a decision can be kept per list and permission.
const roleDecisions = new WeakMap<readonly Role[], Map<string, AuthorizeResult>>();

/** What the roles alone decide (deny wins), remembered per role list and permission. */
function roleDecision(roles: readonly Role[], required: string): AuthorizeResult {
  let decisions = roleDecisions.get(roles);
  if (!decisions) roleDecisions.set(roles, (decisions = new Map<string, AuthorizeResult>()));
  let decision = decisions.get(required);
  if (!decision) {
    if (denied(roles, required)) decision = Object.freeze({ allowed: false, missing: required, reason: 'denied_by_role' as const });
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
 * role denies it (deny wins). An API key's rights are the intersection of its own
 * permissions and its owner's current roles, so a key loses what its owner loses.
 * A key with any resource globs may only address a named target resource if one of
 * its globs has that resource's kind and matches its name (except
 * {@link OWNER_FILTERED_KINDS} when it has no glob of that kind); RPCs without a target
 * (lists, the caller itself) are not restricted here — their handlers filter.
 */
export function authorize(input: AuthorizeInput): AuthorizeResult {
  const { roles, required, apiKey, resource } = input;
  const byRoles = roleDecision(roles, required);
  if (!byRoles.allowed) return byRoles;
  if (apiKey) {
    if (!apiKey.permissions.some((g) => permissionMatches(g, required))) {
      return { allowed: false, missing: required, reason: 'not_granted_to_key' };
    }
    if (resource && apiKey.resourceGlobs.length > 0 && !inKeyScope(apiKey.resourceGlobs, resource)) {
      return { allowed: false, missing: required, reason: 'outside_key_scope' };
    }
  }
  return ALLOWED;
}

/**
 * Escalation check for issuing an API key (and for custom roles a non-admin may
 * write): every requested pattern must be valid, covered by a single grant the
 * holder has, intersect none of the holder's denies, and — when the holder is
 * itself acting through an API key — be covered by one of that key's permissions.
 */
export function canGrant(
  holderRoles: readonly Role[],
  requested: readonly string[],
  holderKeyPermissions?: readonly string[],
): { ok: true } | { ok: false; excess: string[] } {
  const grants = holderRoles.flatMap((r) => r.permissions);
  const denies = holderRoles.flatMap((r) => r.deny);
  const excess = requested.filter(
    (p) =>
      !isValidPermission(p) ||
      !grants.some((g) => patternCovers(g, p)) ||
      denies.some((d) => patternsIntersect(d, p)) ||
      (holderKeyPermissions !== undefined && !holderKeyPermissions.some((g) => patternCovers(g, p))),
  );
  return excess.length === 0 ? { ok: true } : { ok: false, excess };
}

// ---------------------------------------------------------------------------
// Target resource of a request

interface ResourcePath {
  readonly kind: string;
  readonly fields: readonly DescField[];
}

const pathCache = new WeakMap<DescMethod, ResourcePath | null>();

/**
 * The compiled `resource_field` path of a method, or undefined if the RPC names no
 * target resource. Throws if the policy points at a field that is missing, or is
 * not a singular string reached through singular message fields — call it for
 * every method at start-up to fail fast.
 */
export function resourcePathOf(method: DescMethod): ResourcePath | undefined {
  const cached = pathCache.get(method);
  if (cached !== undefined) return cached ?? undefined;
  const policy = policyOf(method);
  let path: ResourcePath | null = null;
  if (policy && policy.resourceField !== '') {
    const kind = resourceKindName(policy.resourceKind);
    if (kind === undefined) throw new Error(`${method.parent.typeName}.${method.name}: resource_field without resource_kind`);
    const fields: DescField[] = [];
    let message = method.input;
    const names = policy.resourceField.split('.');
    names.forEach((name, i) => {
      const field = message.fields.find((f) => f.name === name);
      const where = `${method.parent.typeName}.${method.name}: resource_field "${policy.resourceField}"`;
      if (!field) throw new Error(`${where}: no field "${name}" in ${message.typeName}`);
      if (i < names.length - 1) {
        if (field.fieldKind !== 'message') throw new Error(`${where}: "${name}" is not a singular message`);
        message = field.message;
      } else if (field.fieldKind !== 'scalar' || field.scalar !== ScalarType.STRING) {
        throw new Error(`${where}: "${name}" is not a singular string`);
      }
      fields.push(field);
    });
    path = { kind, fields };
  }
  pathCache.set(method, path);
  return path ?? undefined;
}

/**
 * The resource a request targets, read from its policy's `resource_field`
 * (e.g. `dataset.pool` → `{ kind: 'pool', name: request.dataset.pool }`).
 * Undefined when the RPC has no resource field, or the field is unset/empty — an
 * empty value means "the collection" or "the caller" (e.g. ListVolumes without a
 * pool filter, CreateApiKey for oneself); handlers filter such results by scope,
 * and request validation rejects empty names where a target is required.
 */
export function resourceOf(method: DescMethod, request: Message): ResourceRef | undefined {
  const path = resourcePathOf(method);
  if (!path) return undefined;
  let r: ReflectMessage = reflect(method.input, request);
  const last = path.fields.length - 1;
  for (let i = 0; i < last; i++) {
    const field = path.fields[i];
    if (field?.fieldKind !== 'message' || !r.isSet(field)) return undefined;
    r = r.get(field);
  }
  const leaf = path.fields[last];
  if (leaf?.fieldKind !== 'scalar') return undefined;
  const name = r.get(leaf);
  return typeof name === 'string' && name !== '' ? { kind: path.kind, name } : undefined;
}
