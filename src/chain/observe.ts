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

/** The label sets of one method, built once: registered methods only, so this stays small. */
interface MethodLabels {
  readonly duration: { service: string; method: string };
  readonly handling: { grpc_type: string; grpc_service: string; grpc_method: string };
  readonly byCode: Map<number, { code: string; requests: { service: string; method: string; status: string }; handled: Record<string, string> }>;
}

function labelsFor(cache: Map<string, MethodLabels>, path: string, requestStream: boolean, responseStream: boolean): MethodLabels {
  const key = `${path}\0${requestStream ? 1 : 0}${responseStream ? 1 : 0}`;
  let labels = cache.get(key);
  if (!labels) {
    const { service, method } = splitPath(path);
    const grpcType = requestStream ? (responseStream ? 'bidi_stream' : 'client_stream') : responseStream ? 'server_stream' : 'unary';
    labels = {
      duration: { service, method },
      handling: { grpc_type: grpcType, grpc_service: service, grpc_method: method },
      byCode: new Map(),
    };
    cache.set(key, labels);
  }
  return labels;
}

function codeLabels(labels: MethodLabels, status: number) {
  let entry = labels.byCode.get(status);
  if (!entry) {
    const code = CODE_NAMES[status] ?? String(status);
    entry = {
      code,
      requests: { ...labels.duration, status: code },
      handled: { ...labels.handling, grpc_code: code },
    };
    labels.byCode.set(status, entry);
  }
  return entry;
}

export function observe(metrics: Metrics, log: Logger): ServerInterceptor {
  const cache = new Map<string, MethodLabels>();
  return (method, call) => {
    const labels = labelsFor(cache, method.path, method.requestStream, method.responseStream);
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
        const { code, requests, handled } = codeLabels(labels, status.code);
        metrics.rpcRequests.inc(requests);
        metrics.rpcDuration.observe(labels.duration, seconds);
        metrics.grpcHandled.inc(handled);
        metrics.grpcHandling.observe(labels.handling, seconds);
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
