// The permissions the API declares: each RPC's `(debvisor.v1.rpc_policy)` permission,
// plus `<permission>:any` for owner-scoped RPCs, plus each service's
// `(debvisor.v1.chain_permissions)` (checked by the chain, e.g. access:impersonate). Roles and API keys may name only these,
// or wildcards matching at least one of them: a mistyped permission would otherwise be
// stored and match nothing, and a mistyped deny would deny nothing.
import { closest } from 'fastest-levenshtein';
import { getOption } from '@bufbuild/protobuf';
import { chain_permissions } from '../gen/debvisor/v1/options_pb.js';
import type { CompiledPolicy } from '../rpc/policy.js';
import { crossPrincipal, isValidPermission, permissionMatches } from './permission.js';

/** Why a permission pattern is refused, with the closest declared one as a hint. */
export interface UnknownPermission {
  readonly permission: string;
  readonly hint: string;
}

export class PermissionCatalogue {
  /** The declared permissions, sorted. */
  readonly permissions: readonly string[];
  private wildcardForms: readonly string[] | undefined;

  constructor(permissions: Iterable<string>) {
    this.permissions = Object.freeze([...new Set(permissions)].sort());
  }

  /** The catalogue of the given compiled policies (those of every served RPC), with their services' chain permissions. */
  static of(policies: Iterable<CompiledPolicy>): PermissionCatalogue {
    const list = [...policies];
    const services = new Set(list.map((policy) => policy.method.parent));
    return new PermissionCatalogue([
      ...list.flatMap((policy) => {
        if (!policy.permission) return [];
        return policy.ownerScoped ? [policy.permission, crossPrincipal(policy.permission)] : [policy.permission];
      }),
      ...[...services].flatMap((service) => getOption(service, chain_permissions)),
    ]);
  }

  /** True if the (well-formed) pattern matches at least one declared permission. */
  matchesAny(pattern: string): boolean {
    return this.permissions.some((permission) => permissionMatches(pattern, permission));
  }

  /**
   * Undefined if `pattern` is a declared permission or a wildcard matching one; else the
   * closest declared permission (for a wildcard, the closest wildcard form that matches).
   */
  check(pattern: string): UnknownPermission | undefined {
    if (isValidPermission(pattern) && this.matchesAny(pattern)) return undefined;
    const candidates = pattern.includes('*') ? this.wildcardCandidates() : this.permissions;
    return { permission: pattern, hint: closest(pattern, candidates) };
  }

  /** Every declared permission with any of its segments, or its tail, written as `*`. */
  private wildcardCandidates(): readonly string[] {
    this.wildcardForms ??= Object.freeze([
      ...new Set(
        this.permissions.flatMap((permission) => {
          const segments = permission.split(':');
          const masked = Array.from({ length: 2 ** segments.length }, (_, mask) => segments.map((s, i) => (mask & (1 << i) ? '*' : s)).join(':'));
          const tails = segments.slice(1).map((_, i) => [...segments.slice(0, i + 1), '*'].join(':'));
          return [...masked, ...tails];
        }),
      ),
    ]);
    return this.wildcardForms;
  }
}
