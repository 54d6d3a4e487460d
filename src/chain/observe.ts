// Step 1, outermost: gives every call its trace id and call state, and sees every
// final status for metrics and the access log.
import { ServerInterceptingCall, Metadata, status as Status, type ServerInterceptor } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { attachCallState } from '../server/context.js';
import { TRACE_ID_KEY } from '../server/errors.js';
import { traceIdFrom, newTraceId } from '../server/trace.js';
import type { Metrics } from '../observability/metrics.js';

const CODE_NAMES = Object.fromEntries(Object.entries(Status).map(([name, code]) => [code, name])) as Record<number, string>;

function splitPath(path: string): { service: string; method: string } {
  const [, service = 'unknown', method = 'unknown'] = path.split('/');
  return { service, method };
}

export function observe(metrics: Metrics, log: Logger): ServerInterceptor {
  return (method, call) => {
    const { service, method: name } = splitPath(method.path);
    const grpcType = method.requestStream ? (method.responseStream ? 'bidi_stream' : 'client_stream') : method.responseStream ? 'server_stream' : 'unary';
    const startedAt = process.hrtime.bigint();
    let traceId: string | undefined;
    return new ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMetadata: (metadata, forward) => {
            traceId = traceIdFrom(metadata.get(TRACE_ID_KEY)[0]);
            attachCallState(metadata, { traceId, startedAt, path: method.path, peer: call.getPeer() });
            forward(metadata);
          },
        }),
      sendStatus: (status, forward) => {
        const seconds = Number(process.hrtime.bigint() - startedAt) / 1e9;
        const code = CODE_NAMES[status.code] ?? String(status.code);
        metrics.rpcRequests.inc({ service, method: name, status: code });
        metrics.rpcDuration.observe({ service, method: name }, seconds);
        metrics.grpcHandled.inc({ grpc_type: grpcType, grpc_service: service, grpc_method: name, grpc_code: code });
        metrics.grpcHandling.observe({ grpc_type: grpcType, grpc_service: service, grpc_method: name }, seconds);
        const id = traceId ?? newTraceId();
        const trailers = status.metadata ?? new Metadata();
        if (trailers.get(TRACE_ID_KEY).length === 0) trailers.set(TRACE_ID_KEY, id);
        if (log.isLevelEnabled('debug') || status.code !== Status.OK) {
          log[status.code === Status.OK ? 'debug' : 'info'](
            { trace_id: id, method: method.path, code, duration_ms: seconds * 1000, peer: call.getPeer() },
            'rpc finished',
          );
        }
        forward({ ...status, metadata: trailers });
      },
    });
  };
}
