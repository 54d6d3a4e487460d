// A typed promise client for the generated services, used by debvisorctl, the
// tests and the benchmarks.
import { credentials, makeGenericClientConstructor, Metadata, type Client, type ChannelCredentials, type ClientOptions, type ServiceError } from '@grpc/grpc-js';
import { once } from 'node:events';
import type { Writable } from 'node:stream';
import { create, type DescMessage, type DescService, type MessageInitShape, type MessageShape } from '@bufbuild/protobuf';
import type { GenService, GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import { toServiceDefinition } from '../rpc/adapter.js';

/** Request headers; an array sends a repeatable header once per value. */
export type CallMetadata = Readonly<Record<string, string | readonly string[]>>;

export interface CallOptions {
  readonly metadata?: CallMetadata;
  /** Milliseconds from now. */
  readonly timeoutMs?: number;
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

export function tlsCredentials(pem: { ca: Buffer; cert?: Buffer | undefined; key?: Buffer | undefined }): ChannelCredentials {
  return credentials.createSsl(pem.ca, pem.key ?? null, pem.cert ?? null);
}

function metadataOf(options?: CallOptions): Metadata {
  const metadata = new Metadata();
  for (const [key, value] of Object.entries(options?.metadata ?? {})) {
    for (const one of typeof value === 'string' ? [value] : value) metadata.add(key, one);
  }
  return metadata;
}

function deadlineOf(options?: CallOptions): { deadline?: Date } {
  return options?.timeoutMs === undefined ? {} : { deadline: new Date(Date.now() + options.timeoutMs) };
}

type RawUnary = (request: unknown, metadata: Metadata, options: object, callback: (err: ServiceError | null, response: unknown) => void) => void;
type RawStream = (request: unknown, metadata: Metadata, options: object) => AsyncIterable<unknown>;
type RawClientStream = (metadata: Metadata, options: object, callback: (err: ServiceError | null, response: unknown) => void) => Writable;

export function createClient<S extends GenServiceMethods>(service: GenService<S>, connection: Connection): TypedClient<S> {
  const desc = service as DescService;
  const Ctor = makeGenericClientConstructor(toServiceDefinition(desc), desc.typeName);
  const raw = new Ctor(connection.address, connection.credentials, connection.options) as Client & Record<string, RawUnary & RawStream>;
  const typed: Record<string, unknown> = { close: () => raw.close() };
  for (const method of desc.methods) {
    const method_ = raw[method.name];
    if (!method_) throw new Error(`${desc.typeName}.${method.name} missing from the generated client`);
    const invoke = method_.bind(raw);
    if (method.methodKind === 'client_streaming') {
      typed[method.localName] = (requests: AsyncIterable<MessageInitShape<DescMessage>> | Iterable<MessageInitShape<DescMessage>>, options?: CallOptions) =>
        new Promise((resolve, reject) => {
          const stream = (invoke as unknown as RawClientStream)(metadataOf(options), deadlineOf(options), (err, response) => (err ? reject(err) : resolve(response)));
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
    typed[method.localName] =
      method.methodKind === 'unary'
        ? (request: MessageInitShape<DescMessage>, options?: CallOptions) =>
            new Promise((resolve, reject) =>
              (invoke as RawUnary)(create(method.input, request), metadataOf(options), deadlineOf(options), (err, response) =>
                err ? reject(err) : resolve(response),
              ),
            )
        : (request: MessageInitShape<DescMessage>, options?: CallOptions) =>
            (invoke as RawStream)(create(method.input, request), metadataOf(options), deadlineOf(options));
  }
  return typed as TypedClient<S>;
}
