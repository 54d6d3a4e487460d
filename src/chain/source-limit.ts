// Health and reflection, limited per source address: they answer before (or without) any
// credential, so the remote address is the only key there is. A call costs one cell when its
// headers arrive, before any other step (a flood is refused before identity and audit work),
// and every request message after the first costs one more, so a reflection stream cannot
// carry a flood either. Over the limit: RESOURCE_EXHAUSTED with google.rpc.RetryInfo, as the
// per-principal limit (ratelimit.ts).
import type { Metrics } from '../observability/metrics.js';
import { RateLimiter } from '../ratelimit/limiter.js';
import type { CallState } from '../rpc/context.js';
import { RpcError } from '../rpc/errors.js';
import type { Step, StepCall } from './step.js';

export interface SourceLimitDeps {
  readonly metrics: Metrics;
  /** Calls and stream messages per minute per source address; read each time, so SIGHUP can change it. */
  readonly perMinute: () => number;
  /** Told of every refusal, by the connection's peer "ip:port" (the listener closes a connection that keeps flooding). */
  readonly onRefused?: (peer: string) => void;
}

/** Labels the violation metric: one series for all sources (addresses are unbounded). */
const LABEL = 'anonymous_per_source';

export function sourceLimit(deps: SourceLimitDeps): Step {
  // The default burst (10 %, 6 s of the limit) is plenty for probes and little for a flood.
  const limiter = new RateLimiter();
  /** Calls whose first message is paid for by the headers' cell. */
  const firstMessageFree = new WeakSet<CallState>();
  const take = ({ connection }: StepCall) => {
    const perMinute = deps.perMinute();
    const waitMs = limiter.take(connection.ip, perMinute);
    if (waitMs > 0) {
      deps.metrics.rateLimitViolations.inc({ principal: LABEL });
      deps.onRefused?.(connection.peer);
      throw new RpcError('RESOURCE_EXHAUSTED', `rate limit of ${perMinute} health and reflection requests per minute exceeded for source ${connection.ip}`, {
        details: { retryAfterMs: waitMs },
      });
    }
  };
  return {
    onRequest: (state, call) => {
      take(call);
      firstMessageFree.add(state);
    },
    onMessage: (state, call) => {
      if (firstMessageFree.delete(state)) return;
      take(call);
    },
  };
}
