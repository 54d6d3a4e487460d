// Helpers shared by the etcd store and its watch feeds: byte keys, revision
// parsing, error mapping, raw gRPC streams through etcd3's connection pool.
import type { CallOptions, Metadata } from '@grpc/grpc-js';
import { isBrokenCircuitError } from 'cockatiel';
import {
  ClientClosedError,
  Etcd3,
  EtcdLeaseInvalidError,
  isRecoverableError,
  type ICallable,
  type IKeyValue,
} from 'etcd3';
import { StoreError, StoreUnavailableError } from '../errors.js';
import type { KeyValue } from '../store.js';

/** etcd3 exposes its connection pool only to subclasses; the raw streams need it. */
export class EtcdClient extends Etcd3 {
  get connectionPool(): ICallable<unknown> {
    return this.pool;
  }
}

/** The part of a grpc-js ClientDuplexStream the store uses. */
export interface RawDuplex<Req, Res> {
  readonly writable: boolean;
  write(request: Req): boolean;
  end(): void;
  cancel(): void;
  on(event: 'data', listener: (response: Res) => void): this;
  on(event: 'error', listener: (error: Error) => void): this;
  on(event: 'end', listener: () => void): this;
}

type StreamMethod = 'watch' | 'leaseKeepAlive';

/**
 * Opens a bidirectional stream on one healthy host of the pool, with etcd's
 * "require leader" metadata (a member cut off from its cluster ends the stream
 * instead of silently stalling it). Stream errors mark the host failed, as
 * etcd3's own stream helpers do.
 */
export function openRawStream<Req, Res>(
  pool: ICallable<unknown>,
  service: 'Watch' | 'Lease',
  method: StreamMethod,
  options: CallOptions,
): Promise<RawDuplex<Req, Res>> {
  return openTrackedStream<Req, Res>(pool, service, method, options).then(({ stream }) => stream);
}

export interface TrackedStream<Req, Res> {
  readonly stream: RawDuplex<Req, Res>;
  /** Reports the stream's host as failed: etcd3 then drops and rebuilds that host's channels. */
  readonly markHostFailed: (reason: string) => void;
}

/** openRawStream, plus a way to report the host when the stream goes silent. */
export function openTrackedStream<Req, Res>(
  pool: ICallable<unknown>,
  service: 'Watch' | 'Lease',
  method: StreamMethod,
  options: CallOptions,
): Promise<TrackedStream<Req, Res>> {
  return pool.withConnection(service, ({ resource, client, metadata }) => {
    const md: Metadata = metadata.clone();
    md.set('hasleader', 'true');
    const open = (client as unknown as Record<StreamMethod, (md: Metadata, options: CallOptions) => RawDuplex<Req, Res>>)[method];
    const stream = open.call(client, md, options);
    stream.on('error', (error) => {
      if (stream.writable) pool.markFailed(resource, error);
    });
    return {
      stream,
      markHostFailed: (reason: string) => {
        // A plain Error with DEADLINE_EXCEEDED is cast to a "recoverable" error, which resets the host.
        pool.markFailed(resource, Object.assign(new Error(reason), { code: 4 }));
      },
    };
  });
}

/** Ends and cancels a stream without reporting its host as failed. */
export function discardStream(stream: RawDuplex<unknown, unknown>): void {
  stream.on('error', () => undefined);
  try {
    stream.end(); // writable turns false first, so the cancel below does not mark the host failed
    stream.cancel();
  } catch {
    // already closed
  }
}

export function toBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

export function toBytes(data: Buffer | undefined): Uint8Array {
  return data === undefined ? new Uint8Array(0) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

const ZERO_KEY = Buffer.from([0]);

/** The smallest byte key greater than every key starting with `prefix` (etcd's "\0" = to the end). */
export function prefixEndBytes(prefix: Buffer): Buffer {
  for (let i = prefix.length - 1; i >= 0; i--) {
    const byte = prefix.readUInt8(i);
    if (byte < 0xff) {
      const end = Buffer.from(prefix.subarray(0, i + 1));
      end[i] = byte + 1;
      return end;
    }
  }
  return ZERO_KEY;
}

/** The range start for a prefix: etcd treats an empty key with range_end "\0" as "all keys". */
export function prefixStart(prefix: Buffer): Buffer {
  return prefix.length === 0 ? ZERO_KEY : prefix;
}

/** int64 strings from etcd (proto-loader `longs: String`) as numbers. */
export function rev(value: string | number | undefined | null): number {
  if (value === undefined || value === null || value === '') return 0;
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new StoreError(`etcd returned a non-integer revision: ${String(value)}`);
  return n;
}

export function toKeyValue(kv: IKeyValue): KeyValue {
  const lease = kv.lease === '0' || kv.lease === '' ? undefined : kv.lease;
  return {
    key: kv.key.toString('utf8'),
    value: toBytes(kv.value),
    createRevision: rev(kv.create_revision),
    modRevision: rev(kv.mod_revision),
    version: rev(kv.version),
    lease,
  };
}

export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export function isCompactedMessage(error: unknown): boolean {
  return errorMessage(error).includes('required revision has been compacted');
}

export function isLeaseNotFound(error: unknown): boolean {
  return error instanceof EtcdLeaseInvalidError || errorMessage(error).includes('requested lease not found');
}

/** etcd's simple auth tokens expire (5 min idle by default); etcd3 renews them only for unary calls. */
export function isInvalidAuthToken(error: unknown): boolean {
  return errorMessage(error).includes('invalid auth token');
}

/** Makes etcd3 fetch a fresh auth token before the next call or stream. */
export function invalidateAuthToken(pool: ICallable<unknown>): void {
  const authenticator = (pool as { authenticator?: { invalidateMetadata?: () => void } }).authenticator;
  authenticator?.invalidateMetadata?.();
}

/** gRPC status code of an error, when it carries one. */
function grpcCode(error: unknown): number | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error && typeof error.code === 'number') return error.code;
  return undefined;
}

/** The request provably never reached a server (no connection), so even a write may be retried. */
export function notSent(error: unknown): boolean {
  if (isBrokenCircuitError(error)) return false;
  const message = errorMessage(error);
  return /No connection established|ECONNREFUSED|Connection refused|etcdserver: no leader/i.test(message);
}

/** The cluster, not the member asked, is the problem: it is electing a leader. */
export function isClusterBusy(error: unknown): boolean {
  return /etcdserver: (no leader|leader changed|request timed out)/i.test(errorMessage(error));
}

/** Transient by nature: the store was unreachable, overloaded, or electing a leader. */
export function isTransient(error: unknown): boolean {
  if (error instanceof StoreUnavailableError) return true;
  if (isBrokenCircuitError(error) || error instanceof ClientClosedError) return true;
  if (typeof error === 'object' && error !== null && isRecoverableError(error as Error)) return true;
  const code = grpcCode(error);
  if (code === 14 || code === 4 || code === 1) return true;
  // A stream cut by a restarting member surfaces as INTERNAL from the transport, not from etcd.
  return code === 13 && /RST_STREAM|without gRPC status|Connection dropped|ECONNRESET|socket hang up/i.test(errorMessage(error));
}

/** Maps an etcd3/grpc error to the store's typed errors (compaction is handled by the callers). */
export function mapError(error: unknown, what: string): Error {
  if (error instanceof StoreError) return error;
  if (isTransient(error)) {
    return new StoreUnavailableError(`etcd ${what}: ${errorMessage(error)}`, { cause: error });
  }
  return new StoreError(`etcd ${what}: ${errorMessage(error)}`, { cause: error });
}
