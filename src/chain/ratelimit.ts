// Step 5: per-principal limits by role, a global limit, and per-method costs from the
// proto option. Over the limit: RESOURCE_EXHAUSTED with google.rpc.RetryInfo.
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

export function rateLimit(deps: RateLimitDeps): Step {
  const limiter = new RateLimiter();
  return {
    onRequest: (state, { path }) => {
      const principal = state.principal;
      if (!principal) return;
      const settings = deps.settings();
      const cost = deps.methods.get(path)?.rateCost ?? 1;
      // The most generous of the default and the principal's roles (a loop: no arrays per call).
      let perMinute = settings.default_per_minute;
      for (const role of state.roles ?? []) perMinute = Math.max(perMinute, settings.per_role_per_minute[role] ?? 0);
      const ownWaitMs = limiter.take(principal.id, perMinute, cost);
      if (ownWaitMs > 0) {
        deps.metrics.rateLimitViolations.inc({ principal: deps.metrics.principalLabel(principal.id) });
        throw new RpcError('RESOURCE_EXHAUSTED', `rate limit of ${perMinute} requests per minute exceeded for ${principal.id}`, {
          details: { retryAfterMs: ownWaitMs },
        });
      }
      const globalWaitMs = limiter.take(GLOBAL_KEY, settings.global_per_minute, cost);
      if (globalWaitMs > 0) {
        deps.metrics.rateLimitViolations.inc({ principal: 'global' });
        throw new RpcError('RESOURCE_EXHAUSTED', 'the daemon is at its global request limit', { details: { retryAfterMs: globalWaitMs } });
      }
    },
  };
}
