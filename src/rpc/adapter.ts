// Turns protobuf-es service descriptors into grpc-js service definitions, and
// typed async handlers into grpc-js handlers. About the only glue between the two.
import {
  status as Status,
  type MethodDefinition,
  type ServiceDefinition,
  type UntypedServiceImplementation,
  type ServerReadableStream,
  type ServerUnaryCall,
  type ServerWritableStream,
  type sendUnaryData,
  Metadata as GrpcMetadata,
} from '@grpc/grpc-js';
import {
  create,
  fromBinary,
  toBinary,
  type DescMessage,
  type DescService,
  type MessageInitShape,
  type MessageShape,
} from '@bufbuild/protobuf';
import type { GenService, GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import { InvalidArgumentError, RpcError, toStatus } from './errors.js';
import { callStateOf, type CallContext } from './context.js';
import { methodPath, type CompiledPolicy } from './policy.js';
import { newTraceId } from './trace.js';
import { runInCallScope, type CallScope } from './call-scope.js';

type UnaryHandler<I extends DescMessage, O extends DescMessage> = (
  request: MessageShape<I>,
  ctx: CallContext,
) => Promise<MessageInitShape<O>>;

type ServerStreamingHandler<I extends DescMessage, O extends DescMessage> = (
  request: MessageShape<I>,
  ctx: CallContext,
) => AsyncIterable<MessageInitShape<O>>;

/** A client stream's messages in order, each decoded (one that does not decode ends the stream with INVALID_ARGUMENT). */
type ClientStreamingHandler<I extends DescMessage, O extends DescMessage> = (
  requests: AsyncIterable<MessageShape<I>>,
  ctx: CallContext,
) => Promise<MessageInitShape<O>>;

type HandlerFor<M> = M extends { methodKind: 'unary'; input: infer I extends DescMessage; output: infer O extends DescMessage }
  ? UnaryHandler<I, O>
  : M extends { methodKind: 'server_streaming'; input: infer I extends DescMessage; output: infer O extends DescMessage }
    ? ServerStreamingHandler<I, O>
    : M extends { methodKind: 'client_streaming'; input: infer I extends DescMessage; output: infer O extends DescMessage }
      ? ClientStreamingHandler<I, O>
      : never;

/** The typed implementation of one generated service: one async function per RPC. */
export type ServiceHandlers<S extends GenServiceMethods> = {
  [K in keyof S]: HandlerFor<S[K]>;
};

export interface AdapterOptions {
  /** Cap on any call's deadline, and the deadline of calls that set none. */
  readonly maxDeadlineMs: number;
  /** Called with errors that became INTERNAL, so they are logged with their trace id. */
  readonly onInternalError: (err: unknown, traceId: string, path: string) => void;
  /** The compiled policies, by method path: each handler's context carries its own. */
  readonly policies?: ReadonlyMap<string, CompiledPolicy>;
}

/** Marks a request that failed to decode, so the handler wrapper can answer INVALID_ARGUMENT. */
class UndecodableRequest {
  constructor(readonly reason: string) {}
}

function serializer(schema: DescMessage) {
  // grpc-js needs a Buffer; wrapping the Uint8Array avoids a copy.
  return (message: MessageShape<DescMessage>): Buffer => {
    const bytes = toBinary(schema, message);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

/**
 * For server streams: one message object written to many streams (an event fanned out to
 * every WatchEvents caller) is encoded once. Yielded messages are never changed afterwards.
 */
function sharedSerializer(schema: DescMessage) {
  const encoded = new WeakMap<object, Buffer>();
  const serialize = serializer(schema);
  return (message: MessageShape<DescMessage>): Buffer => {
    let bytes = encoded.get(message);
    if (!bytes) encoded.set(message, (bytes = serialize(message)));
    return bytes;
  };
}

function deserializer(schema: DescMessage) {
  // grpc-js answers INTERNAL when a deserializer throws; bad bytes are the client's fault.
  return (bytes: Buffer): MessageShape<DescMessage> | UndecodableRequest => {
    try {
      return fromBinary(schema, bytes);
    } catch (err) {
      return new UndecodableRequest(err instanceof Error ? err.message : String(err));
    }
  };
}


export function toServiceDefinition(service: DescService): ServiceDefinition {
  const definition: Record<string, MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) {
    if (method.methodKind === 'bidi_streaming') {
      throw new Error(`${methodPath(method)}: ${method.methodKind} RPCs are not supported by the adapter`);
    }
    definition[method.name] = {
      path: methodPath(method),
      requestStream: method.methodKind === 'client_streaming',
      responseStream: method.methodKind === 'server_streaming',
      requestSerialize: serializer(method.input) as (value: unknown) => Buffer,
      requestDeserialize: deserializer(method.input),
      responseSerialize: (method.methodKind === 'server_streaming' ? sharedSerializer(method.output) : serializer(method.output)) as (value: unknown) => Buffer,
      responseDeserialize: (bytes: Buffer) => fromBinary(method.output, bytes),
      originalName: method.localName,
    };
  }
  return definition;
}

interface GrpcCallLike {
  readonly metadata: GrpcMetadata;
  getDeadline(): Date | number;
  getPeer(): string;
  readonly cancelled: boolean;
  on(event: 'cancelled', listener: () => void): unknown;
}

function contextFor(call: GrpcCallLike, options: AdapterOptions, policy: CompiledPolicy | undefined): { ctx: CallContext; scope: CallScope; dispose: () => void } {
  const state = callStateOf(call.metadata);
  const controller = new AbortController();
  const requested = call.getDeadline();
  const requestedMs = requested instanceof Date ? requested.getTime() : requested;
  const capMs = Date.now() + options.maxDeadlineMs;
  const deadlineMs = Number.isFinite(requestedMs) ? Math.min(requestedMs, capMs) : capMs;
  const timer = setTimeout(
    () => controller.abort(new RpcError('DEADLINE_EXCEEDED', `deadline exceeded (the server allows at most ${options.maxDeadlineMs / 1000} s per call)`)),
    Math.max(0, deadlineMs - Date.now()),
  );
  timer.unref();
  // grpc-js reports every stream close as 'cancelled', also after a normal finish: only
  // a close while the handler still runs is a cancellation (and worth building an error for).
  let finished = false;
  call.on('cancelled', () => {
    if (!finished) controller.abort(new RpcError('CANCELLED', 'cancelled by the client'));
  });
  const ctx: CallContext = {
    traceId: state?.traceId ?? newTraceId(),
    principal: state?.principal,
    deadline: new Date(deadlineMs),
    signal: controller.signal,
    peer: state?.peer ?? call.getPeer(),
    policy,
  };
  // Store operations the handler makes share this one deadline (src/rpc/call-scope.ts).
  const scope: CallScope = { deadline: deadlineMs, signal: controller.signal, ended: false };
  return {
    ctx,
    scope,
    dispose: () => {
      finished = true;
      scope.ended = true;
      clearTimeout(timer);
    },
  };
}

/** Settles when the call is aborted, so a handler that ignores its signal still cannot outlive the deadline. */
function aborted(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => {
    if (signal.aborted) reject(signal.reason as Error);
    else signal.addEventListener('abort', () => reject(signal.reason as Error), { once: true });
  });
}

/** Settles when the stream can take more, or when the call ends (a cancelled call never drains). */
function drained(call: ServerWritableStream<unknown, unknown>, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      call.off('drain', done);
      signal.removeEventListener('abort', done);
      resolve();
    };
    call.once('drain', done);
    if (signal.aborted) done();
    else signal.addEventListener('abort', done, { once: true });
  });
}

/** The INVALID_ARGUMENT for a request that did not decode, or undefined for a decoded one. */
export function undecodableError(request: unknown): InvalidArgumentError | undefined {
  if (!(request instanceof UndecodableRequest)) return undefined;
  return new InvalidArgumentError('request', `not a valid protobuf message (${request.reason.slice(0, 200)})`);
}

function decoded(request: unknown): MessageShape<DescMessage> {
  const undecodable = undecodableError(request);
  if (undecodable) throw undecodable;
  return request as MessageShape<DescMessage>;
}

/** Wraps typed handlers into the untyped grpc-js implementation for one service. */
export function toImplementation<S extends GenServiceMethods>(
  service: GenService<S>,
  handlers: ServiceHandlers<S>,
  options: AdapterOptions,
): UntypedServiceImplementation {
  const implementation: UntypedServiceImplementation = {};
  const byLocalName = handlers as Record<string, unknown>;
  for (const method of (service as DescService).methods) {
    const handler = byLocalName[method.localName];
    if (typeof handler !== 'function') {
      throw new Error(`${methodPath(method)} has no handler`);
    }
    const path = methodPath(method);
    const policy = options.policies?.get(path);
    const fail = (err: unknown, traceId: string) => {
      const status = toStatus(err, traceId);
      if (status.code === Status.INTERNAL) options.onInternalError(err, traceId, path);
      return status;
    };
    if (method.methodKind === 'unary') {
      const unary = handler as UnaryHandler<DescMessage, DescMessage>;
      implementation[method.name] = (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => {
        const { ctx, scope, dispose } = contextFor(call, options, policy);
        Promise.resolve()
          .then(() => runInCallScope(scope, () => Promise.race([unary(decoded(call.request), ctx), aborted(ctx.signal)])))
          .then(
            (response) => callback(null, create(method.output, response)),
            (err: unknown) => callback(fail(err, ctx.traceId)),
          )
          .finally(dispose);
      };
    } else if (method.methodKind === 'client_streaming') {
      const clientStreaming = handler as ClientStreamingHandler<DescMessage, DescMessage>;
      implementation[method.name] = (call: ServerReadableStream<unknown, unknown>, callback: sendUnaryData<unknown>) => {
        const { ctx, scope, dispose } = contextFor(call, options, policy);
        async function* requests(): AsyncGenerator<MessageShape<DescMessage>> {
          for await (const message of call as AsyncIterable<unknown>) yield decoded(message);
        }
        Promise.resolve()
          .then(() => runInCallScope(scope, () => Promise.race([clientStreaming(requests(), ctx), aborted(ctx.signal)])))
          .then(
            (response) => callback(null, create(method.output, response)),
            (err: unknown) => callback(fail(err, ctx.traceId)),
          )
          .finally(dispose);
      };
    } else {
      const streaming = handler as ServerStreamingHandler<DescMessage, DescMessage>;
      implementation[method.name] = (call: ServerWritableStream<unknown, unknown>) => {
        const { ctx, scope, dispose } = contextFor(call, options, policy);
        void runInCallScope(scope, async () => {
          try {
            const messages = streaming(decoded(call.request), ctx);
            // The response headers say "the call was accepted" before a first message, which a quiet stream (WatchEvents) may not send for long.
            call.sendMetadata(new GrpcMetadata());
            for await (const message of messages) {
              if (call.cancelled) return;
              if (!call.write(create(method.output, message))) await drained(call, ctx.signal);
            }
            call.end();
          } catch (err) {
            // grpc-js turns an 'error' event into the stream's final status.
            const status = fail(err, ctx.traceId);
            call.emit('error', Object.assign(new Error(status.details), status));
          } finally {
            dispose();
          }
        });
      };
    }
  }
  return implementation;
}

/** The typed handlers of a generated service constant, e.g. `HandlersOf<typeof AccessService>`. */
export type HandlersOf<T> = T extends GenService<infer S> ? ServiceHandlers<S> : never;
