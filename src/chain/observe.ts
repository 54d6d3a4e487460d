// Wrapper 1, outermost: gives every call its trace id and call state, and sees every
// final status for metrics and the access log.
import { Metadata, status as Status } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { attachCallState, type CallState } from '../rpc/context.js';
import { TRACE_ID_KEY } from '../rpc/errors.js';
import { traceIdFrom, newTraceId } from '../rpc/trace.js';
import type { CounterCell, HistogramCell, Metrics } from '../observability/metrics.js';
import { firstHeader } from './headers.js';
import type { Connection } from './peer.js';
import type { ChainSpec, ObservedCall, PartialStatusObject } from './step.js';

const CODE_NAMES = Object.fromEntries(Object.entries(Status).map(([name, code]) => [code, name])) as Record<number, string>;

function splitPath(path: string): { service: string; method: string } {
  const [, service = 'unknown', method = 'unknown'] = path.split('/');
  return { service, method };
}

interface CodeMetrics {
  readonly code: string;
  /** Metric cells: plain-number updates, merged into prom-client before every read. */
  readonly requests: CounterCell;
  readonly handled: CounterCell;
  readonly duration: HistogramCell;
  readonly handling: HistogramCell;
}

/** The label sets of one method, built once: registered methods only, so this stays small. */
interface MethodLabels {
  readonly requestStream: boolean;
  readonly responseStream: boolean;
  readonly duration: { service: string; method: string };
  readonly handling: { grpc_type: string; grpc_service: string; grpc_method: string };
  /** The metric cells of each final code, made once. */
  readonly byCode: Map<number, CodeMetrics>;
}

function labelsFor(cache: Map<string, MethodLabels>, path: string, requestStream: boolean, responseStream: boolean): MethodLabels {
  // Keyed by path alone in the common case: a registered path has one streaming shape
  // (checked, not assumed; another shape gets its own entry).
  let labels = cache.get(path);
  if (labels && labels.requestStream === requestStream && labels.responseStream === responseStream) return labels;
  const key = labels ? `${path}\0${requestStream ? 1 : 0}${responseStream ? 1 : 0}` : path;
  labels = cache.get(key);
  if (!labels) {
    const { service, method } = splitPath(path);
    const grpcType = requestStream ? (responseStream ? 'bidi_stream' : 'client_stream') : responseStream ? 'server_stream' : 'unary';
    labels = {
      requestStream,
      responseStream,
      duration: { service, method },
      handling: { grpc_type: grpcType, grpc_service: service, grpc_method: method },
      byCode: new Map(),
    };
    cache.set(key, labels);
  }
  return labels;
}

function codeMetrics(metrics: Metrics, labels: MethodLabels, status: number): CodeMetrics {
  let entry = labels.byCode.get(status);
  if (!entry) {
    const code = CODE_NAMES[status] ?? String(status);
    entry = {
      code,
      requests: metrics.rpcRequests.cell({ ...labels.duration, status: code }),
      handled: metrics.grpcHandled.cell({ ...labels.handling, grpc_code: code }),
      duration: metrics.rpcDuration.cell(labels.duration),
      handling: metrics.grpcHandling.cell(labels.handling),
    };
    labels.byCode.set(status, entry);
  }
  return entry;
}

/** Told when a call starts and when it ends on a connection (ConnectionListener's idle clock). */
export interface CallTracker {
  callStarted(peer: string): void;
  /** Once per call: at its final status, or at its cancellation, whichever comes first. */
  callEnded(peer: string, authenticated: boolean): void;
}

/** Wrapper 1 for one call. Built when grpc-js creates the call, so `startedAt` covers the whole chain. */
class Observation implements ObservedCall {
  private readonly startedAt = performance.now();
  private traceId: string | undefined;
  /** The client sent the trace id (a valid x-request-id): it gets it back on every status. */
  private clientTraceId = false;
  private state: CallState | undefined;
  private ended = false;

  constructor(
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly labels: MethodLabels,
    private readonly path: string,
    private readonly connection: Connection,
    private readonly tracker: CallTracker | undefined,
  ) {
    tracker?.callStarted(connection.peer);
  }

  cancelled(): void {
    this.finish();
  }

  private finish(): void {
    if (this.ended) return;
    this.ended = true;
    this.tracker?.callEnded(this.connection.peer, this.state?.principal !== undefined);
  }

  begin(metadata: Metadata): CallState {
    const sent = firstHeader(metadata, TRACE_ID_KEY);
    const traceId = (this.traceId = traceIdFrom(sent));
    this.clientTraceId = traceId === sent;
    // Every member the later steps set is there from the start: the object keeps one shape
    // and its members in the object itself (added later, they would each call allocate a
    // separate property store).
    const state: CallState = {
      traceId,
      startedAt: this.startedAt,
      path: this.path,
      peer: this.connection.peer,
      principal: undefined,
      roles: undefined,
      impersonatorRoles: undefined,
      decision: undefined,
      request: undefined,
      rejected: undefined,
      audited: undefined,
    };
    attachCallState(metadata, state);
    this.state = state;
    return state;
  }

  end(status: PartialStatusObject): PartialStatusObject {
    const { metrics, labels, log } = this;
    this.finish();
    const seconds = (performance.now() - this.startedAt) / 1000;
    const counts = codeMetrics(metrics, labels, status.code);
    counts.requests.inc();
    counts.handled.inc();
    counts.duration.observe(seconds);
    counts.handling.observe(seconds);
    const code = counts.code;
    const id = this.traceId ?? newTraceId();
    // A failure always names its trace id (the one to quote, and to find in the audit log);
    // a success only echoes the client's own: one header less on every ordinary call.
    let trailers = status.metadata ?? undefined;
    if (status.code !== Status.OK || this.clientTraceId) {
      trailers ??= new Metadata();
      if (trailers.get(TRACE_ID_KEY).length === 0) trailers.set(TRACE_ID_KEY, id);
    }
    // A refusal of an anonymous caller (a flood is refused thousands of times a second) is
    // counted in the metrics and, rate-limited, in the audit log; here only at debug.
    const quiet = status.code === Status.OK || (status.code === Status.RESOURCE_EXHAUSTED && this.state?.principal === undefined);
    if (!quiet || log.isLevelEnabled('debug')) {
      log[quiet ? 'debug' : 'info'](
        { trace_id: id, method: this.path, code, duration_ms: seconds * 1000, peer: this.connection.peer },
        'rpc finished',
      );
    }
    // Unchanged trailers (a success without a client trace id): the status goes on as it came.
    return trailers === (status.metadata ?? undefined) ? status : { code: status.code, details: status.details, metadata: trailers ?? null };
  }
}

export function observe(metrics: Metrics, log: Logger, tracker?: CallTracker): ChainSpec['observe'] {
  const cache = new Map<string, MethodLabels>();
  return (path, requestStream, responseStream, connection) =>
    new Observation(metrics, log, labelsFor(cache, path, requestStream, responseStream), path, connection, tracker);
}
