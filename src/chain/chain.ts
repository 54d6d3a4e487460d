// The interceptor chain, outermost first: one grpc-js interceptor that runs the steps in
// this order on the way in and in reverse on the way out (step.ts). Steps 3-6 skip the
// exempt services (exempt.ts).
import type { ServerInterceptor } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { Metrics } from '../observability/metrics.js';
import { audit, type AuditDeps } from './audit.js';
import { bounds, type BoundsDeps } from './bounds.js';
import { isExempt } from './exempt.js';
import { identity, type IdentityDeps } from './identity.js';
import { observe } from './observe.js';
import { rateLimit, type RateLimitDeps } from './ratelimit.js';
import { rbac, type RbacDeps } from './rbac.js';
import { recovery } from './recovery.js';
import { chainInterceptor } from './step.js';

export interface ChainDeps {
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly identity: IdentityDeps;
  readonly audit: AuditDeps;
  readonly bounds: BoundsDeps;
  readonly rateLimit: RateLimitDeps;
  readonly rbac: RbacDeps;
}

export function buildChain(deps: ChainDeps): ServerInterceptor[] {
  const chain = chainInterceptor({
    observe: observe(deps.metrics, deps.log), //   1. trace id, metrics, access log: sees every final status
    recover: recovery((err, traceId, path) => deps.log.error({ err, trace_id: traceId, method: path }, 'panic in call')), // 2.
    steps: [
      identity(deps.identity), //                 3. who is calling
      audit(deps.audit), //                       4. one record per call; durable before mutations
      bounds(deps.bounds), //                     4b. oversize request text refused (and audited)
      rateLimit(deps.rateLimit), //               5. per principal, per role, global
      rbac(deps.rbac), //                         6. default deny, from the proto's permission option
    ],
    exempt: isExempt, //                          3-6 skip health and reflection
  });
  return [chain];
}
