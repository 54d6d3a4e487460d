// The interceptor chain, outermost first: one grpc-js interceptor that runs the steps in
// this order on the way in and in reverse on the way out (step.ts). The exempt services
// (exempt.ts) skip steps 3-6 and run their own list instead (exemptSteps below).
import type { ServerInterceptor } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { Metrics } from '../observability/metrics.js';
import { audit, type AuditDeps } from './audit.js';
import { bounds, type BoundsDeps } from './bounds.js';
import { exemptKind, isExempt } from './exempt.js';
import { identity, type IdentityDeps } from './identity.js';
import { observe, type CallTracker } from './observe.js';
import { rateLimit, type RateLimitDeps } from './ratelimit.js';
import { rbac, type RbacDeps } from './rbac.js';
import { recovery } from './recovery.js';
import { sourceLimit, type SourceLimitDeps } from './source-limit.js';
import { chainInterceptor, type Step } from './step.js';

export interface ChainDeps {
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly identity: IdentityDeps;
  readonly audit: AuditDeps;
  readonly bounds: BoundsDeps;
  readonly rateLimit: RateLimitDeps;
  readonly rbac: RbacDeps;
  /** Health and reflection: limited per source; reflection authenticated unless `anonymous`. */
  readonly exempt: SourceLimitDeps & { readonly reflection: 'authenticated' | 'anonymous' | 'off' };
  /** Told when calls start and end on a connection (the listener's idle clock). */
  readonly calls?: CallTracker;
}

export function buildChain(deps: ChainDeps): ServerInterceptor[] {
  const steps = {
    identity: identity(deps.identity),
    audit: audit(deps.audit),
    bounds: bounds(deps.bounds),
    rateLimit: rateLimit(deps.rateLimit),
    rbac: rbac(deps.rbac),
    perSource: sourceLimit(deps.exempt),
  };
  const health: readonly Step[] = [steps.perSource];
  // Reflection describes the API, it acts on nothing: no RBAC permission, but a known caller,
  // audited and under its own rate limit (when `off`, the service is not registered at all).
  // The per-source limit goes first, so a flood is refused before any identity or audit work.
  const reflection: readonly Step[] = deps.exempt.reflection === 'anonymous' ? health : [steps.perSource, steps.identity, steps.audit, steps.rateLimit];
  const chain = chainInterceptor({
    observe: observe(deps.metrics, deps.log, deps.calls), //   1. trace id, metrics, access log: sees every final status
    recover: recovery((err, traceId, path) => deps.log.error({ err, trace_id: traceId, method: path }, 'panic in call')), // 2.
    steps: [
      steps.identity, //                          3. who is calling
      steps.audit, //                             4. one record per call; durable before mutations
      steps.bounds, //                            4b. oversize request text refused (and audited)
      steps.rateLimit, //                         5. per principal, per role, global
      steps.rbac, //                              6. default deny, from the proto's permission option
    ],
    exempt: isExempt, //                          3-6 skip health and reflection ...
    exemptSteps: (path) => (exemptKind(path) === 'health' ? health : reflection), // ... which run these
  });
  return [chain];
}
