// The etcd backend of the Store: etcd v3 over the `etcd3` client's connection pool
// and its low-level RPC clients (the builder API hides revisions and limits).
//
// Every call carries one deadline (requestTimeoutMs from the call's start). Fault
// handling is ours, not cockatiel's defaults (3 retries, then a 5 s open circuit):
// no global retry; with several endpoints each host gets a circuit breaker that
// skips it for a second after a failure, and a call is retried on another host
// when it is a read or when it provably never reached a server. Connection
// failures, deadlines and unavailability become StoreUnavailableError.
import { readFile } from 'node:fs/promises';
import type { CallOptions } from '@grpc/grpc-js';
import { ConsecutiveBreaker, circuitBreaker, handleWhen, noop } from 'cockatiel';
import {
  CompareResult,
  CompareTarget,
  isRecoverableError,
  type ICallable,
  type ICompare,
  type ILeaseKeepAliveRequest,
  type ILeaseKeepAliveResponse,
  type IOptions,
  type IRequestOp,
  type IResponseHeader,
} from 'etcd3';
import { CompactedError, NotFoundError, StoreError, StoreUnavailableError } from './errors.js';
import type { Compare, KeyValue, LeaseId, ListOptions, ListResult, Op, Store, TxnRequest, TxnResult, WatchEvent, WatchOptions } from './store.js';
import {
  EtcdClient,
  discardStream,
  invalidateAuthToken,
  isInvalidAuthToken,
  isCompactedMessage,
  isLeaseNotFound,
  isTransient,
  mapError,
  notSent,
  openRawStream,
  prefixEndBytes,
  prefixStart,
  rev,
  toBuffer,
  toKeyValue,
} from './etcd/util.js';
import { WatchFeed } from './etcd/watch.js';

export interface EtcdStoreOptions {
  /** Client URLs, all http:// or all https://. */
  readonly endpoints: string[];
  /** mTLS: CA bundle, and the client certificate and key when etcd wants client certs. */
  readonly tls?: { readonly caFile: string; readonly certFile?: string; readonly keyFile?: string };
  readonly auth?: { readonly username: string; readonly password: string };
  /** How long openEtcdStore waits for a first answer before failing (default 3000). */
  readonly dialTimeoutMs?: number;
  /**
   * Wait for a first answer before returning (default true). The daemon passes false:
   * it starts NOT_SERVING and follows the store's readiness instead of exiting.
   */
  readonly waitForCluster?: boolean;
  /** Deadline of every call; also how long a watch may stay disconnected (default 5000). */
  readonly requestTimeoutMs?: number;
  /** A watch silent (no event, no progress) this long is re-created (default 15000). */
  readonly watchProgressTimeoutMs?: number;
}

const DEFAULT_DIAL_TIMEOUT_MS = 3_000;
const DEFAULT_REQUEST_TIMEOUT_MS = 5_000;
const DEFAULT_WATCH_PROGRESS_TIMEOUT_MS = 15_000;
/** Grace beyond the gRPC deadline before our own timer gives up on a call. */
const SAFETY_MARGIN_MS = 250;
const HOST_HALF_OPEN_AFTER_MS = 1_000;
/** A key no one writes: the cheap linearizable read behind ping() and revision(). */
const PROBE_KEY = Buffer.from('/debvisor/.probe');

/**
 * Opens the etcd store and waits (up to dialTimeoutMs) for a first answer from the
 * cluster, like clientv3's DialTimeout: StoreUnavailableError if none comes. The
 * returned store recovers by itself when etcd comes back later.
 */
export async function openEtcdStore(options: EtcdStoreOptions): Promise<Store> {
  const store = new EtcdStore(await clientOptions(options), options);
  if (options.waitForCluster === false) return store;
  try {
    await store.ping(options.dialTimeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS);
  } catch (error) {
    await store.close();
    throw error;
  }
  return store;
}

function normalizeEndpoint(endpoint: string): string {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw new StoreError(`etcd endpoint is not a URL: ${endpoint}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new StoreError(`etcd endpoint must be http(s): ${endpoint}`);
  return `${url.protocol}//${url.hostname.includes(':') ? `[${url.hostname.replace(/^\[|\]$/g, '')}]` : url.hostname}:${url.port || '2379'}`;
}

async function clientOptions(options: EtcdStoreOptions): Promise<IOptions> {
  if (options.endpoints.length === 0) throw new StoreError('etcd: no endpoints configured');
  const hosts = options.endpoints.map(normalizeEndpoint);
  const secure = hosts.filter((h) => h.startsWith('https:')).length;
  if (secure !== 0 && secure !== hosts.length) throw new StoreError('etcd endpoints mix http:// and https://');
  if (options.tls !== undefined && secure === 0) throw new StoreError('etcd TLS is configured but the endpoints are http://');
  const requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  const deadline = (): CallOptions => ({ deadline: new Date(Date.now() + requestTimeoutMs) });
  const tls = options.tls;
  return {
    hosts,
    ...(tls !== undefined
      ? {
          credentials: {
            rootCertificate: await readFile(tls.caFile),
            ...(tls.keyFile !== undefined && tls.keyFile !== '' ? { privateKey: await readFile(tls.keyFile) } : {}),
            ...(tls.certFile !== undefined && tls.certFile !== '' ? { certChain: await readFile(tls.certFile) } : {}),
          },
        }
      : {}),
    ...(options.auth !== undefined
      ? { auth: { username: options.auth.username, password: options.auth.password, callOptions: deadline } }
      : {}),
    // Unary calls get a deadline; streams must not (ours set their own where needed).
    defaultCallOptions: (context) => (context.isStream ? {} : deadline()),
    grpcOptions: {
      // Watch batches and list pages can exceed grpc-js's 4 MiB default.
      'grpc.max_receive_message_length': -1,
      'grpc.max_send_message_length': -1,
      // Detect dead connections under long-lived streams (etcd permits pings every >= 5 s).
      'grpc.keepalive_time_ms': 10_000,
      'grpc.keepalive_timeout_ms': 5_000,
      // One connection per etcd3 service client, not one shared by all: when etcd3
      // resets a failed host, its replacement clients really reconnect instead of
      // reusing a half-dead connection from grpc-js's global subchannel pool.
      'grpc.use_local_subchannel_pool': 1,
    },
    faultHandling: {
      global: noop,
      host: () =>
        hosts.length > 1
          ? circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: HOST_HALF_OPEN_AFTER_MS, breaker: new ConsecutiveBreaker(1) })
          : noop,
    },
  };
}

class EtcdStore implements Store {
  readonly backend = 'etcd' as const;
  private readonly client: EtcdClient;
  private readonly pool: ICallable<unknown>;
  private readonly hostCount: number;
  private readonly requestTimeoutMs: number;
  private readonly watchProgressTimeoutMs: number;
  private readonly feeds = new Set<WatchFeed>();
  private closed = false;

  constructor(clientOpts: IOptions, options: EtcdStoreOptions) {
    this.client = new EtcdClient(clientOpts);
    this.pool = this.client.connectionPool;
    this.hostCount = Array.isArray(clientOpts.hosts) ? clientOpts.hosts.length : 1;
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.watchProgressTimeoutMs = options.watchProgressTimeoutMs ?? DEFAULT_WATCH_PROGRESS_TIMEOUT_MS;
  }

  /**
   * Runs one RPC under a single deadline. Retries on another host (there is one more
   * per endpoint) when the call is a read, or a write that never reached a server.
   */
  private async call<T>(what: string, idempotent: boolean, fn: (options: CallOptions) => Promise<T>, timeoutMs = this.requestTimeoutMs): Promise<T> {
    if (this.closed) throw new StoreUnavailableError('etcd store is closed');
    const deadline = Date.now() + timeoutMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await withTimer(fn({ deadline: new Date(deadline) }), deadline + SAFETY_MARGIN_MS - Date.now(), what);
      } catch (error) {
        if (isInvalidAuthToken(error) && attempt === 1) {
          // Streams (keepalive) are not covered by etcd3's token renewal; the request was rejected, so retry is safe.
          invalidateAuthToken(this.pool);
          continue;
        }
        const retry =
          attempt < this.hostCount && Date.now() < deadline && isTransient(error) && (idempotent || notSent(error));
        if (!retry) throw mapError(error, what);
      }
    }
  }

  async get(key: string): Promise<KeyValue | undefined> {
    const res = await this.call('get', true, (o) => this.client.kv.range({ key: Buffer.from(key, 'utf8') }, o));
    const kv = res.kvs[0];
    return kv === undefined ? undefined : toKeyValue(kv);
  }

  async list(prefix: string, options: ListOptions = {}): Promise<ListResult> {
    const prefixBytes = Buffer.from(prefix, 'utf8');
    let start = prefixStart(prefixBytes);
    if (options.startAfter !== undefined) {
      const after = Buffer.concat([Buffer.from(options.startAfter, 'utf8'), Buffer.from([0])]);
      if (Buffer.compare(after, start) > 0) start = after;
    }
    const atRevision = options.revision !== undefined && options.revision > 0 ? options.revision : undefined;
    const limit = options.limit !== undefined && options.limit > 0 ? options.limit : undefined;
    let res;
    try {
      res = await this.call('list', true, (o) =>
        this.client.kv.range(
          {
            key: start,
            range_end: prefixEndBytes(prefixBytes),
            ...(limit !== undefined ? { limit } : {}),
            ...(atRevision !== undefined ? { revision: atRevision } : {}),
          },
          o,
        ),
      );
    } catch (error) {
      if (atRevision !== undefined && isCompactedMessage(error)) throw new CompactedError(await this.compactRevisionHint(atRevision));
      throw error;
    }
    return {
      kvs: res.kvs.map(toKeyValue),
      more: res.more,
      revision: atRevision ?? headerRevision(res.header),
    };
  }

  async put(key: string, value: Uint8Array, options: { lease?: LeaseId } = {}): Promise<{ revision: number }> {
    const res = await this.call('put', false, (o) =>
      this.client.kv.put(
        { key: Buffer.from(key, 'utf8'), value: toBuffer(value), ...(options.lease !== undefined ? { lease: options.lease } : {}) },
        o,
      ),
    );
    return { revision: headerRevision(res.header) };
  }

  async delete(key: string, options: { prefix?: boolean } = {}): Promise<{ deleted: number; revision: number }> {
    const keyBytes = Buffer.from(key, 'utf8');
    const res = await this.call('delete', false, (o) =>
      this.client.kv.deleteRange(
        options.prefix === true ? { key: prefixStart(keyBytes), range_end: prefixEndBytes(keyBytes) } : { key: keyBytes },
        o,
      ),
    );
    return { deleted: rev(res.deleted), revision: headerRevision(res.header) };
  }

  async txn(request: TxnRequest): Promise<TxnResult> {
    const res = await this.call('txn', false, (o) =>
      this.client.kv.txn(
        {
          compare: request.compare.map(toCompare),
          success: request.success.map(toRequestOp),
          failure: (request.failure ?? []).map(toRequestOp),
        },
        o,
      ),
    );
    return { succeeded: res.succeeded, revision: headerRevision(res.header) };
  }

  async *watch(prefix: string, options: WatchOptions): AsyncIterable<WatchEvent> {
    if (this.closed) throw new StoreUnavailableError('etcd store is closed');
    const prefixBytes = Buffer.from(prefix, 'utf8');
    const feed = new WatchFeed({
      pool: this.pool,
      key: prefixStart(prefixBytes),
      rangeEnd: prefixEndBytes(prefixBytes),
      fromRevision: options.fromRevision,
      requestTimeoutMs: this.requestTimeoutMs,
      progressTimeoutMs: this.watchProgressTimeoutMs,
      signal: options.signal,
      onClose: (f) => this.feeds.delete(f),
    });
    this.feeds.add(feed);
    try {
      for (;;) {
        const event = await feed.take();
        if (event === undefined) return;
        yield event;
      }
    } finally {
      feed.close();
    }
  }

  async grantLease(ttlSeconds: number): Promise<LeaseId> {
    const res = await this.call('grant lease', false, (o) => this.client.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: 0 }, o));
    if (res.error) throw new StoreError(`etcd grant lease: ${res.error}`);
    return res.ID;
  }

  async keepAliveOnce(lease: LeaseId): Promise<number> {
    const ttl = await this.call('keep lease alive', true, (o) => this.keepAliveRpc(lease, o));
    if (ttl <= 0) throw new NotFoundError(`lease ${lease} expired or was revoked`);
    return ttl;
  }

  /** One LeaseKeepAlive round trip on a short-lived stream; resolves with the TTL granted (<= 0: lease gone). */
  private async keepAliveRpc(lease: LeaseId, options: CallOptions): Promise<number> {
    const stream = await openRawStream<ILeaseKeepAliveRequest, ILeaseKeepAliveResponse>(this.pool, 'Lease', 'leaseKeepAlive', options);
    try {
      return await new Promise<number>((resolve, reject) => {
        stream.on('data', (res) => {
          resolve(rev(res.TTL));
        });
        stream.on('error', reject);
        stream.on('end', () => {
          reject(new StoreUnavailableError('lease keepalive stream ended without an answer'));
        });
        stream.write({ ID: lease });
      });
    } finally {
      discardStream(stream);
    }
  }

  async revokeLease(lease: LeaseId): Promise<void> {
    try {
      await this.call('revoke lease', false, (o) => this.client.leaseClient.leaseRevoke({ ID: lease }, o));
    } catch (error) {
      if (isLeaseNotFound(error) || isLeaseNotFound((error as { cause?: unknown }).cause)) return;
      throw error;
    }
  }

  async compact(revision: number): Promise<void> {
    try {
      await this.call('compact', false, (o) => this.client.kv.compact({ revision, physical: true }, o));
    } catch (error) {
      // Compacting at or below the current compaction point is a no-op.
      if (isCompactedMessage(error)) return;
      throw error;
    }
  }

  async revision(): Promise<number> {
    const res = await this.call('revision', true, (o) => this.client.kv.range({ key: PROBE_KEY, count_only: true }, o));
    return headerRevision(res.header);
  }

  async ping(timeoutMs = this.requestTimeoutMs): Promise<void> {
    await this.call('ping', true, (o) => this.client.kv.range({ key: PROBE_KEY, count_only: true }, o), timeoutMs);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const feed of [...this.feeds]) feed.fail(new StoreUnavailableError('etcd store is closed'));
    this.feeds.clear();
    this.client.close();
    await Promise.resolve();
  }

  /**
   * The oldest revision still kept, for a CompactedError: etcd's range error does not
   * say it, but a watch from revision 1 is canceled with it. Falls back to `requested + 1`.
   */
  private async compactRevisionHint(requested: number): Promise<number> {
    const fallback = requested + 1;
    try {
      return await this.call('compact revision', true, async (o) => {
        const stream = await openRawStream<unknown, { canceled: boolean; created: boolean; compact_revision: string }>(
          this.pool,
          'Watch',
          'watch',
          o,
        );
        try {
          return await new Promise<number>((resolve, reject) => {
            stream.on('data', (res) => {
              if (res.canceled) resolve(rev(res.compact_revision) || fallback);
              else if (!res.created) resolve(fallback);
            });
            stream.on('error', reject);
            stream.on('end', () => {
              resolve(fallback);
            });
            stream.write({ create_request: { key: PROBE_KEY, start_revision: 1 } });
          });
        } finally {
          discardStream(stream);
        }
      });
    } catch {
      return fallback;
    }
  }
}

function headerRevision(header: IResponseHeader | undefined): number {
  return rev(header?.revision);
}

function toCompare(compare: Compare): ICompare {
  const key = Buffer.from(compare.key, 'utf8');
  if ('modRevision' in compare) return { key, target: CompareTarget.Mod, result: CompareResult.Equal, mod_revision: compare.modRevision };
  if ('createRevision' in compare) return { key, target: CompareTarget.Create, result: CompareResult.Equal, create_revision: compare.createRevision };
  if ('value' in compare) return { key, target: CompareTarget.Value, result: CompareResult.Equal, value: toBuffer(compare.value) };
  return { key, target: CompareTarget.Create, result: CompareResult.Equal, create_revision: 0 };
}

function toRequestOp(op: Op): IRequestOp {
  const key = Buffer.from(op.key, 'utf8');
  if (op.type === 'put') {
    return { request_put: { key, value: toBuffer(op.value), ...(op.lease !== undefined ? { lease: op.lease } : {}) } };
  }
  return {
    request_delete_range: op.prefix === true ? { key: prefixStart(key), range_end: prefixEndBytes(key) } : { key },
  };
}

function withTimer<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new StoreUnavailableError(`etcd ${what}: no answer within the request timeout`));
    }, Math.max(0, ms));
  });
  return Promise.race([promise, timeout]).finally(() => {
    clearTimeout(timer);
  });
}

