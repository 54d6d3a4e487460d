// Step 5: per-principal limits by role, a global limit, and per-method costs from the
// proto option. A user acted for is limited as itself and, as a whole with the others the
// same certificate acts for, by that certificate's own limit. Over the limit: RESOURCE_EXHAUSTED with google.rpc.RetryInfo.
import type { Metrics } from '../observability/metrics.js';
import { RateLimiter } from '../ratelimit/limiter.js';
import { RpcError } from '../rpc/errors.js';
import type { PolicyIndex } from '../rpc/policy.js';
import type { Step } from './step.js';

/** The config's `rate_limit` section, as it is (no per-call copy). */
export interface RateLimitSettings {
  readonly per_role_per_minute: Readonly<Record<string, number>>;
  readonly default_per_minute: number;
  readonly global_per_minute: number;
}

export interface RateLimitDeps {
  readonly methods: PolicyIndex;
  readonly metrics: Metrics;
  /** Read per call, so SIGHUP can change limits. */
  readonly settings: () => RateLimitSettings;
}

const GLOBAL_KEY = '\0global';

/** The most generous of the default and the roles' limits (a loop: no arrays per call). */
function perMinuteOf(settings: RateLimitSettings, roles: readonly string[] | undefined): number {
  let perMinute = settings.default_per_minute;
  for (const role of roles ?? []) perMinute = Math.max(perMinute, settings.per_role_per_minute[role] ?? 0);
  return perMinute;
}

export function rateLimit(deps: RateLimitDeps): Step {
  const limiter = new RateLimiter();
  /** Takes `cost` from `principal`'s bucket, or refuses the call. */
  const take = (principal: string, perMinute: number, cost: number): void => {
    const waitMs = limiter.take(principal, perMinute, cost);
    if (waitMs > 0) {
      deps.metrics.rateLimitViolations.inc({ principal: deps.metrics.principalLabel(principal) });
      throw new RpcError('RESOURCE_EXHAUSTED', `rate limit of ${perMinute} requests per minute exceeded for ${principal}`, { details: { retryAfterMs: waitMs } });
    }
  };
  return {
    onRequest: (state, { path }) => {
      const principal = state.principal;
      if (!principal) return;
      const settings = deps.settings();
      const cost = deps.methods.get(path)?.rateCost ?? 1;
      const perMinute = perMinuteOf(settings, state.roles);
      take(principal.id, perMinute, cost);
      // A user acted for: the impersonating certificate's own limit bounds all its users together.
      const by = principal.delegation?.by;
      if (by) take(by.id, perMinuteOf(settings, state.impersonatorRoles), cost);
      const globalWaitMs = limiter.take(GLOBAL_KEY, settings.global_per_minute, cost);
      if (globalWaitMs > 0) {
        deps.metrics.rateLimitViolations.inc({ principal: 'global' });
        throw new RpcError('RESOURCE_EXHAUSTED', 'the daemon is at its global request limit', { details: { retryAfterMs: globalWaitMs } });
      }
    },
  };
}
