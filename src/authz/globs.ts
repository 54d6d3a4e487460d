// Resource globs of scoped API keys and roles: how one matches a resource name, and when one
// glob lies within another (a key may only mint keys within its own globs).
//
// The language is deliberately tiny: `*` is any run of characters but `/` (possibly
// empty), `?` is one character but `/`, everything else is literal. (picomatch, used
// before, adds path rules that break containment: `./a` matched `a`, `*` matched `a/`
// but `ci-*` not `ci-1/`, `*` not `..`.)

/** A (kind, glob) restriction of a scoped API key or role; `kind` is a RESOURCE_KIND_NAMES value (src/rpc/policy.ts). */
export interface ResourceGlob {
  readonly kind: string;
  readonly glob: string;
}

const GLOB = /^[A-Za-z0-9._\-*?/@:]{1,256}$/;

/** True for a resource glob a key may carry: names' characters plus `*` and `?`, 1–256 characters. */
export function isValidResourceGlob(glob: string): boolean {
  return GLOB.test(glob);
}

/**
 * True if `pattern` accepts `subject`. As a name (`subjectIsGlob` false) the subject is
 * all literal; as a glob, its `*` and `?` stand for what they match, so only a pattern
 * `*` absorbs a subject `*`, and a pattern `?` or `*` a subject `?`. Neither wildcard
 * ever stands for `/`. Dynamic programming over both strings: O(|pattern|·|subject|),
 * no backtracking blow-up.
 */
function accepts(pattern: string, subject: string, subjectIsGlob: boolean): boolean {
  const m = subject.length;
  let row = new Uint8Array(m + 1); // row[j]: the pattern so far accepts subject[0, j)
  row[0] = 1;
  for (const p of pattern) {
    const next = new Uint8Array(m + 1);
    if (p === '*') {
      next[0] = row[0] ?? 0;
      for (let j = 1; j <= m; j++) next[j] = row[j] || (next[j - 1] && subject[j - 1] !== '/') ? 1 : 0;
    } else {
      for (let j = 1; j <= m; j++) {
        const s = subject[j - 1];
        const one = p === '?' ? s !== '/' && !(subjectIsGlob && s === '*') : s === p;
        next[j] = row[j - 1] && one ? 1 : 0;
      }
    }
    row = next;
  }
  return row[m] === 1;
}

/** True if a resource glob matches a resource name (`ci-*` matches `ci-42`, not `prod-1` or `ci-1/x`). */
export function globMatches(glob: string, name: string): boolean {
  return name.length > 0 && isValidResourceGlob(glob) && accepts(glob, name, false); // an invalid stored glob matches nothing
}

/**
 * True if every name `inner` matches is matched by `outer` — decided syntactically:
 * `inner` must read as an instance of `outer`, each `*` of `outer` standing for a run
 * of `inner` (its literals but `/`, its `?` and `*`), each `?` of `outer` for one
 * literal but `/` or one `?`, each literal for itself. So `ci-1*` and `ci-?` are within
 * `ci-*`; `*`, `c*` and `ci-*\/x` are not. Sound (never claims containment that does not
 * hold); it may refuse a few equal-but-differently-written globs (`a?*` within `a*?`).
 */
export function globWithin(inner: string, outer: string): boolean {
  return isValidResourceGlob(inner) && isValidResourceGlob(outer) && accepts(outer, inner, true);
}

/**
 * What a list RPC (which names no target for RBAC) may show a caller: everything without an API
 * key scope; with one, only what the key's globs of `kind` match under any of `names`.
 */
export function keyScopeShows(scope: readonly { readonly kind: string; readonly glob: string }[] | undefined, kind: string, ...names: string[]): boolean {
  if (!scope || scope.length === 0) return true;
  return scope.some((g) => g.kind === kind && names.some((name) => globMatches(g.glob, name)));
}
