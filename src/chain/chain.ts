// The interceptor chain, outermost first: one grpc-js interceptor that runs the steps in
// this order on the way in and in reverse on the way out (step.ts). Observe (1) and
// recovery (2) wrap every call; each later step runs for the methods its selector allows:
// the exempt services (exempt.ts) skip steps 3-6 and run the per-source limit instead.
import type { ServerInterceptor } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { Metrics } from '../observability/metrics.js';
import { audit, type AuditDeps } from './audit.js';
import { bounds, type BoundsDeps } from './bounds.js';
import { exemptKind, isExempt } from './exempt.js';
import { identity, type IdentityDeps } from './identity.js';
import { impersonation, type ImpersonationDeps } from './impersonation.js';
import { observe, type CallTracker } from './observe.js';
import { rateLimit, type RateLimitDeps } from './ratelimit.js';
import { rbac, type RbacDeps } from './rbac.js';
import { recovery } from './recovery.js';
import { sourceLimit, type SourceLimitDeps } from './source-limit.js';
import { chainInterceptor, selector } from './step.js';

export interface ChainDeps {
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly identity: IdentityDeps;
  readonly impersonation: ImpersonationDeps;
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
  // Which methods run which step. Health and reflection (exempt.ts) skip the API's steps: they
  // are limited per source address first, so a flood is refused before any identity or audit
  // work. Reflection describes the API, it acts on nothing: no bounds or RBAC, but a known
  // caller, audited and under its own rate limit, unless `anonymous` (when `off`, the service
  // is not registered at all).
  const api = (path: string) => !isExempt(path);
  const knownCaller = deps.exempt.reflection === 'anonymous' ? api : (path: string) => exemptKind(path) !== 'health';
  const chain = chainInterceptor({
    observe: observe(deps.metrics, deps.log, deps.calls), //   1. trace id, metrics, access log: sees every final status
    recover: recovery((err, traceId, path) => deps.log.error({ err, trace_id: traceId, method: path }, 'panic in call')), // 2.
    steps: [
      selector(isExempt, sourceLimit(deps.exempt)), //       health and reflection: per source address
      selector(knownCaller, identity(deps.identity)), //    3. who is calling
      selector(api, impersonation(deps.impersonation)), //  3b. a certificate acting for a user
      selector(knownCaller, audit(deps.audit)), //          4. one record per call; durable before mutations
      selector(api, bounds(deps.bounds)), //                4b. oversize request text refused (and audited)
      selector(knownCaller, rateLimit(deps.rateLimit)), //  5. per principal, per role, global
      selector(api, rbac(deps.rbac)), //                    6. default deny, from the proto's permission option
    ],
  });
  return [chain];
}
