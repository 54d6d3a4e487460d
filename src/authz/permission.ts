// Permission strings and the wildcard matcher every authorization decision uses.
//
// A permission is `service:resource:action` or `service:action` (1–4 segments of
// lowercase letters, digits and `_`). A grant may use `*` segments:
//   - `*` alone matches every permission;
//   - a `*` as the LAST segment matches one or more remaining segments ("the rest"):
//     `node:*` matches `node:list` and `node:a:b`, but not `node`;
//   - a `*` anywhere else matches exactly one segment: `*:list` matches `node:list`
//     but neither `storage:snapshot:list` nor everything (the original DebVisor
//     matcher let `*:list` grant everything);
//   - other segments match literally, and segment counts must be equal unless the
//     trailing-`*` rule applies.

/** Most segments a permission may have. */
export const MAX_PERMISSION_SEGMENTS = 4;

const SEGMENT = /^(?:\*|[a-z0-9_]+)$/;

/** Suffix segment naming the "on any principal's resources" variant of a permission (see {@link crossPrincipal}). */
export const ANY_PRINCIPAL_SEGMENT = 'any';

/**
 * The permission a handler checks before acting on resources owned by ANOTHER
 * principal (other users' API keys or operations): `operation:get` → `operation:get:any`.
 * `*` and `operation:*` grant it; `operation:get` and `*:*:get` do not.
 */
export function crossPrincipal(permission: string): string {
  return `${permission}:${ANY_PRINCIPAL_SEGMENT}`;
}

/** True for a well-formed permission or permission pattern: 1–4 segments, each `*` or `[a-z0-9_]+`. */
export function isValidPermission(p: string): boolean {
  if (p.length === 0 || p.length > 256) return false;
  const segments = p.split(':');
  return segments.length <= MAX_PERMISSION_SEGMENTS && segments.every((s) => SEGMENT.test(s));
}

/** True if `grant` (which may hold `*` segments) matches the concrete permission `required`. */
export function permissionMatches(grant: string, required: string): boolean {
  if (grant === '*') return true;
  if (grant === required) return true;
  const g = grant.split(':');
  const r = required.split(':');
  const last = g.length - 1;
  for (let i = 0; i <= last; i++) {
    const seg = g[i];
    if (i === last && seg === '*') return r.length > last; // the rest: one or more segments
    if (i >= r.length) return false;
    if (seg !== '*' && seg !== r[i]) return false;
  }
  return g.length === r.length;
}

/** Shape of the set of concrete permissions a pattern matches. */
interface Shape {
  readonly segs: readonly string[];
  /** Last segment is `*`: the pattern matches `segs.length` or more segments. */
  readonly open: boolean;
}

function shape(pattern: string): Shape {
  const segs = pattern.split(':');
  return { segs, open: segs[segs.length - 1] === '*' };
}

/** True if position `i` of the pattern accepts any segment. */
function anyAt(s: Shape, i: number): boolean {
  return (s.open && i >= s.segs.length - 1) || s.segs[i] === '*';
}

/**
 * True iff every concrete permission matched by `pattern` is also matched by `grant`,
 * i.e. holding `grant` entitles one to hand out `pattern`. Both are patterns with the
 * {@link permissionMatches} semantics. Segment-wise: a pattern's match set is, for each
 * length it admits, a product of per-position sets (a literal or "any"), so coverage is
 * length coverage plus per-position coverage.
 */
export function patternCovers(grant: string, pattern: string): boolean {
  if (grant === '*') return true;
  const g = shape(grant);
  const p = shape(pattern);
  const m = g.segs.length;
  const n = p.segs.length;
  // Lengths: an open pattern admits n, n+1, …; a closed one exactly n.
  if (p.open ? !(g.open && m <= n) : !(m === n || (g.open && m <= n))) return false;
  for (let i = 0; i < n; i++) {
    if (anyAt(g, i)) continue;
    if (anyAt(p, i) || p.segs[i] !== g.segs[i]) return false;
  }
  return true;
}

/**
 * True iff some concrete permission is matched by both patterns (e.g. a requested
 * grant and a deny entry). Used to refuse keys whose grants could reach a denied
 * permission.
 */
export function patternsIntersect(a: string, b: string): boolean {
  if (a === '*' || b === '*') return true;
  const x = shape(a);
  const y = shape(b);
  const m = x.segs.length;
  const n = y.segs.length;
  let length: number;
  if (x.open && y.open) length = Math.max(m, n);
  else if (x.open) length = n >= m ? n : -1;
  else if (y.open) length = m >= n ? m : -1;
  else length = m === n ? m : -1;
  if (length < 0) return false;
  for (let i = 0; i < length; i++) {
    if (anyAt(x, i) || anyAt(y, i)) continue;
    if (x.segs[i] !== y.segs[i]) return false;
  }
  return true;
}
