// The interceptor chain, outermost first. grpc-js runs interceptors[0] first on the
// way in and last on the way out. Steps 3-6 skip the exempt services (exempt.ts).
import { ServerInterceptingCall, type ServerInterceptor } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { Metrics } from '../observability/metrics.js';
import { audit, type AuditDeps } from './audit.js';
import { isExempt } from './exempt.js';
import { identity, type IdentityDeps } from './identity.js';
import { observe } from './observe.js';
import { rateLimit, type RateLimitDeps } from './ratelimit.js';
import { rbac, type RbacDeps } from './rbac.js';
import { recovery } from './recovery.js';

export interface ChainDeps {
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly identity: IdentityDeps;
  readonly audit: AuditDeps;
  readonly rateLimit: RateLimitDeps;
  readonly rbac: RbacDeps;
}

export function buildChain(deps: ChainDeps): ServerInterceptor[] {
  return [
    observe(deps.metrics, deps.log), //            1. trace id, metrics, access log: sees every final status
    recovery((err, traceId, path) => deps.log.error({ err, trace_id: traceId, method: path }, 'panic in call')), // 2.
    unlessExempt(identity(deps.identity)), //      3. who is calling
    unlessExempt(audit(deps.audit)), //            4. one record per call; durable before mutations
    unlessExempt(rateLimit(deps.rateLimit)), //    5. per principal, per role, global
    unlessExempt(rbac(deps.rbac)), //              6. default deny, from the proto's permission option
  ];
}

// Decided once per method path (only registered methods reach interceptors, so this stays small).
const exemptPaths = new Map<string, boolean>();

function exempt(path: string): boolean {
  let result = exemptPaths.get(path);
  if (result === undefined) {
    result = isExempt(path);
    exemptPaths.set(path, result);
  }
  return result;
}

function unlessExempt(interceptor: ServerInterceptor): ServerInterceptor {
  return (method, call) => (exempt(method.path) ? new ServerInterceptingCall(call) : interceptor(method, call));
}
