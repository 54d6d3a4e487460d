// A typed promise client for the generated services, used by debvisorctl, the SDK
// (src/client/index.ts), the tests and the benchmarks. It imports no server code.
import { credentials, makeGenericClientConstructor, Metadata, type Client, type ChannelCredentials, type ClientOptions, type ServiceError } from '@grpc/grpc-js';
import { once } from 'node:events';
import type { Writable } from 'node:stream';
import { create, type DescMessage, type DescService, type MessageInitShape, type MessageShape } from '@bufbuild/protobuf';
import type { GenService, GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import { clientDefinition } from './definition.js';
import { retryable, retryPolicy, type RetryOptions } from './retry.js';

/** Request headers; an array sends a repeatable header once per value. */
export type CallMetadata = Readonly<Record<string, string | readonly string[]>>;

export interface CallOptions {
  readonly metadata?: CallMetadata;
  /** Milliseconds from now; for a retried call, the deadline of all its attempts together. */
  readonly timeoutMs?: number;
  /** Cancels the call (and its retries). */
  readonly signal?: AbortSignal;
}

type ClientMethod<M> = M extends { methodKind: 'unary'; input: infer I extends DescMessage; output: infer O extends DescMessage }
  ? (request: MessageInitShape<I>, options?: CallOptions) => Promise<MessageShape<O>>
  : M extends { methodKind: 'server_streaming'; input: infer I extends DescMessage; output: infer O extends DescMessage }
    ? (request: MessageInitShape<I>, options?: CallOptions) => AsyncIterable<MessageShape<O>>
    : M extends { methodKind: 'client_streaming'; input: infer I extends DescMessage; output: infer O extends DescMessage }
      ? (requests: AsyncIterable<MessageInitShape<I>> | Iterable<MessageInitShape<I>>, options?: CallOptions) => Promise<MessageShape<O>>
      : never;

export type TypedClient<S extends GenServiceMethods> = { [K in keyof S]: ClientMethod<S[K]> } & { close(): void };

export interface Connection {
  readonly address: string;
  readonly credentials: ChannelCredentials;
  readonly options?: ClientOptions;
}

/** How a client makes its calls; without these it makes each call once, with no deadline unless given. */
export interface ClientBehaviour {
  /** Retries UNAVAILABLE for reads and for mutations carrying a request_id (see retry.ts). */
  readonly retry?: RetryOptions;
  /** The deadline of a unary call that sets no timeoutMs. */
  readonly defaultTimeoutMs?: number;
  /** Sent with every call, before each call's own metadata (e.g. an API key's authorization). */
  readonly metadata?: CallMetadata;
}

export function tlsCredentials(pem: { ca: Buffer; cert?: Buffer | undefined; key?: Buffer | undefined }): ChannelCredentials {
  return credentials.createSsl(pem.ca, pem.key ?? null, pem.cert ?? null);
}

function metadataOf(...sources: (CallMetadata | undefined)[]): Metadata {
  const metadata = new Metadata();
  for (const source of sources) {
    for (const [key, value] of Object.entries(source ?? {})) {
      for (const one of typeof value === 'string' ? [value] : value) metadata.add(key, one);
    }
  }
  return metadata;
}

function deadlineAfter(timeoutMs: number | undefined): { deadline?: Date } {
  return timeoutMs === undefined ? {} : { deadline: new Date(Date.now() + timeoutMs) };
}

interface Cancellable {
  cancel(): void;
}
type RawUnary = (request: unknown, metadata: Metadata, options: object, callback: (err: ServiceError | null, response: unknown) => void) => Cancellable;
type RawStream = (request: unknown, metadata: Metadata, options: object) => AsyncIterable<unknown> & Cancellable;
type RawClientStream = (metadata: Metadata, options: object, callback: (err: ServiceError | null, response: unknown) => void) => Writable;

export function createClient<S extends GenServiceMethods>(service: GenService<S>, connection: Connection, behaviour: ClientBehaviour = {}): TypedClient<S> {
  const desc = service as DescService;
  const Ctor = makeGenericClientConstructor(clientDefinition(desc), desc.typeName);
  const raw = new Ctor(connection.address, connection.credentials, connection.options) as Client & Record<string, RawUnary & RawStream>;
  const policy = behaviour.retry && retryPolicy(behaviour.retry);
  const typed: Record<string, unknown> = { close: () => raw.close() };
  for (const method of desc.methods) {
    const method_ = raw[method.name];
    if (!method_) throw new Error(`${desc.typeName}.${method.name} missing from the generated client`);
    const invoke = method_.bind(raw);
    if (method.methodKind === 'client_streaming') {
      typed[method.localName] = (requests: AsyncIterable<MessageInitShape<DescMessage>> | Iterable<MessageInitShape<DescMessage>>, options?: CallOptions) =>
        new Promise((resolve, reject) => {
          const stream = (invoke as unknown as RawClientStream)(metadataOf(behaviour.metadata, options?.metadata), deadlineAfter(options?.timeoutMs ?? behaviour.defaultTimeoutMs), (err, response) => (err ? reject(err) : resolve(response)));
          // Backpressure: wait for 'drain' when the call's buffer is full; the callback reports how the call ended.
          void (async () => {
            try {
              for await (const request of requests) {
                if (!stream.write(create(method.input, request))) await once(stream, 'drain');
              }
              stream.end();
            } catch (err) {
              stream.destroy(err instanceof Error ? err : new Error(String(err)));
              reject(err instanceof Error ? err : new Error(String(err)));
            }
          })();
        });
      continue;
    }
    if (method.methodKind === 'unary') {
      typed[method.localName] = (init: MessageInitShape<DescMessage>, options?: CallOptions) => {
        const request = create(method.input, init);
        const deadline = deadlineAfter(options?.timeoutMs ?? behaviour.defaultTimeoutMs);
        const attempt = () =>
          new Promise<unknown>((resolve, reject) => {
            if (options?.signal?.aborted) return reject(options.signal.reason as Error);
            const call = (invoke as RawUnary)(request, metadataOf(behaviour.metadata, options?.metadata), deadline, (err, response) => {
              options?.signal?.removeEventListener('abort', cancel);
              if (err) reject(err);
              else resolve(response);
            });
            const cancel = () => call.cancel();
            options?.signal?.addEventListener('abort', cancel, { once: true });
          });
        return policy && retryable(method, request) ? policy.execute(attempt, options?.signal) : attempt();
      };
    } else {
      typed[method.localName] = (init: MessageInitShape<DescMessage>, options?: CallOptions) => {
        const call = (invoke as RawStream)(create(method.input, init), metadataOf(behaviour.metadata, options?.metadata), deadlineAfter(options?.timeoutMs));
        options?.signal?.addEventListener('abort', () => call.cancel(), { once: true });
        return call;
      };
    }
  }
  return typed as TypedClient<S>;
}
