// The interceptor chain, outermost first. grpc-js runs interceptors[0] first on the
// way in and last on the way out.
import type { ServerInterceptor } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { Metrics } from '../observability/metrics.js';
import type { CertificateAuthenticator } from '../authn/x509.js';
import { observe } from './observe.js';
import { recovery } from './recovery.js';
import { identity } from './identity.js';

export interface ChainDeps {
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly certificates: CertificateAuthenticator;
}

export function buildChain({ metrics, log, certificates }: ChainDeps): ServerInterceptor[] {
  return [
    observe(metrics, log), //                      1. trace id, metrics, access log: sees every final status
    recovery((err, traceId, path) => log.error({ err, trace_id: traceId, method: path }, 'panic in call')), // 2.
    identity(certificates, log), //                3. who is calling
    //                                             4-6. audit, rate limit, RBAC: the security-chain issue
  ];
}
