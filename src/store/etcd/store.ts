// The etcd backend of the Store: etcd v3 over one `etcd3` client per member and its
// low-level RPC clients (the builder API hides revisions and limits).
//
// Fault handling is ours, not cockatiel's defaults (3 retries, then a 5 s open circuit):
// - one budget per call: requestTimeoutMs, capped by the deadline of the RPC the call
//   runs for (src/rpc/call-scope.ts), so a handler's sequential store calls never
//   outlive its client's deadline;
// - members are ranked, never refused (src/store/etcd/members.ts): a frozen or dead
//   member is found by the first call or probe that goes unanswered, and later calls
//   go elsewhere;
// - a read (or a write that provably never reached a server) gets attemptTimeoutMs per
//   member, then moves to the next one; a write that may have been applied is never
//   repeated by the store, it fails with StoreUnavailableError (outcome unknown);
// - when every member has been tried and one of them said the cluster itself is busy
//   (electing a leader), reads try again with a short backoff while the budget lasts;
//   when every member is unreachable, calls fail at once.
import { EventEmitter, on } from 'node:events';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { CallOptions } from '@grpc/grpc-js';
import { noop } from 'cockatiel';
import {
  CompareResult,
  CompareTarget,
  GRPCDeadlineExceededError,
  type ICompare,
  type ILeaseKeepAliveRequest,
  type ILeaseKeepAliveResponse,
  type IOptions,
  type IRequestOp,
  type IResponseHeader,
  type IResponseStream,
  type ISnapshotResponse,
} from 'etcd3';
import { CompactedError, NotFoundError, StoreError, StoreUnavailableError } from '../errors.js';
import type { Compare, KeyValue, LeaseId, ListOptions, ListResult, Op, Store, TxnRequest, TxnResult, WatchEvent, WatchOptions } from '../store.js';
import { currentCallScope } from '../../rpc/call-scope.js';
import { Members, PROBE_KEY, type Member } from './members.js';
import {
  discardStream,
  invalidateAuthToken,
  isInvalidAuthToken,
  isCompactedMessage,
  isClusterBusy,
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
} from './util.js';
import { WatchFeed } from './watch.js';

/** The chunks of an etcd snapshot stream in order; the call is cancelled if `signal` aborts or the reader stops early. */
async function* snapshotChunks(stream: IResponseStream<ISnapshotResponse>, signal?: AbortSignal): AsyncIterable<Uint8Array> {
  // etcd3 types the stream by its events only; it is grpc-js's client stream, an EventEmitter with cancel().
  if (!(stream instanceof EventEmitter)) throw new StoreUnavailableError('etcd snapshot: unexpected stream object from the etcd client');
  const progress = { ended: false };
  stream.once('end', () => (progress.ended = true));
  try {
    for await (const [response] of on(stream, 'data', { close: ['end'], signal })) {
      const { blob } = response as ISnapshotResponse;
      if (blob.length > 0) yield blob;
    }
  } finally {
    if (!progress.ended && 'cancel' in stream && typeof stream.cancel === 'function') Reflect.apply(stream.cancel, stream, []);
  }
}

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
  /**
   * Budget of every call (capped by the deadline of the RPC it runs for); also how long
   * a watch may stay disconnected (default 5000).
   */
  readonly requestTimeoutMs?: number;
  /**
   * How long one member may take to answer a read, or a liveness probe, before the next
   * member is asked (default 1000, at most half the request timeout).
   */
  readonly attemptTimeoutMs?: number;
  /**
   * A watch silent (no event, no answer to a progress request) this long moves to
   * another member (default 1000).
   */
  readonly watchProgressTimeoutMs?: number;
}

const DEFAULT_DIAL_TIMEOUT_MS = 3_000;
const DEFAULT_REQUEST_TIMEOUT_MS = 5_000;
const DEFAULT_ATTEMPT_TIMEOUT_MS = 1_000;
const DEFAULT_WATCH_PROGRESS_TIMEOUT_MS = 1_000;
/** Grace beyond the gRPC deadline before our own timer gives up on a call. */
const SAFETY_MARGIN_MS = 100;
/** First pause before asking the members again while the cluster elects a leader. */
const BUSY_RETRY_DELAY_MS = 25;

/**
 * Opens the etcd store and waits (up to dialTimeoutMs) for a first answer from the
 * cluster, like clientv3's DialTimeout: StoreUnavailableError if none comes. The
 * returned store recovers by itself when etcd comes back later.
 */
export async function openEtcdStore(options: EtcdStoreOptions): Promise<Store> {
  const { hosts, clientOpts } = await clientOptions(options);
  const store = new EtcdStore(hosts, clientOpts, options);
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

/** The members' URLs and the options of each member's etcd3 client. */
async function clientOptions(options: EtcdStoreOptions): Promise<{ hosts: string[]; clientOpts: IOptions }> {
  if (options.endpoints.length === 0) throw new StoreError('etcd: no endpoints configured');
  const hosts = options.endpoints.map(normalizeEndpoint);
  const secure = hosts.filter((h) => h.startsWith('https:')).length;
  if (secure !== 0 && secure !== hosts.length) throw new StoreError('etcd endpoints mix http:// and https://');
  if (options.tls !== undefined && secure === 0) throw new StoreError('etcd TLS is configured but the endpoints are http://');
  const requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  const deadline = (): CallOptions => ({ deadline: new Date(Date.now() + requestTimeoutMs) });
  const tls = options.tls;
  const clientOpts: IOptions = {
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
    // Each member has its own client with one host: EtcdStore.call picks the member.
    faultHandling: { global: noop, host: () => noop },
  };
  return { hosts, clientOpts };
}

class EtcdStore implements Store {
  readonly backend = 'etcd' as const;
  private readonly members: Members;
  private readonly requestTimeoutMs: number;
  private readonly attemptTimeoutMs: number;
  private readonly watchProgressTimeoutMs: number;
  private readonly feeds = new Set<WatchFeed>();
  private closed = false;

  constructor(hosts: readonly string[], clientOpts: IOptions, options: EtcdStoreOptions) {
    this.requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.attemptTimeoutMs = Math.min(options.attemptTimeoutMs ?? DEFAULT_ATTEMPT_TIMEOUT_MS, Math.max(1, Math.floor(this.requestTimeoutMs / 2)));
    this.watchProgressTimeoutMs = options.watchProgressTimeoutMs ?? DEFAULT_WATCH_PROGRESS_TIMEOUT_MS;
    this.members = new Members(hosts, clientOpts, this.attemptTimeoutMs);
  }

  /**
   * Runs one RPC within the call's budget, on the best member; see the header for when
   * it moves to another member. `fn` gets the member and the gRPC deadline of the attempt.
   */
  private async call<T>(
    what: string,
    idempotent: boolean,
    fn: (member: Member, options: CallOptions) => Promise<T>,
    { budgetMs = this.requestTimeoutMs, pinned }: { budgetMs?: number; pinned?: Member } = {},
  ): Promise<T> {
    if (this.closed) throw new StoreUnavailableError('etcd store is closed');
    const scope = currentCallScope();
    const deadline = Math.min(Date.now() + budgetMs, scope?.deadline ?? Infinity);
    const ended = (): boolean => scope?.signal.aborted === true;
    const tried = new Set<Member>();
    let busy = false;
    let authRenewed = false;
    for (let round = 0; ; ) {
      if (ended() || Date.now() >= deadline) {
        throw new StoreUnavailableError(`etcd ${what}: the call's deadline passed before etcd answered`);
      }
      const member = pinned ?? this.members.pick(tried);
      tried.add(member);
      // A read gets attemptTimeoutMs while another member is left to ask, the last one
      // the rest of the budget (a lone member is never cut short on a busy host); a
      // write, which the store never repeats once it may have been applied, waits for
      // its member up to the deadline.
      const othersLeft = pinned === undefined && tried.size < this.members.all.length;
      const attemptEnd = idempotent && othersLeft ? Math.min(deadline, Date.now() + this.attemptTimeoutMs) : deadline;
      // Silence counts against the member only when it had a whole attempt's time to answer.
      const fullAttempt = attemptEnd - Date.now() >= this.attemptTimeoutMs;
      try {
        const result = await attemptOn(member, fn(member, { deadline: new Date(attemptEnd) }), idempotent, attemptEnd + SAFETY_MARGIN_MS, what, scope?.signal);
        member.answered();
        return result;
      } catch (error) {
        if (isInvalidAuthToken(error) && !authRenewed) {
          // Streams (keepalive) are not covered by etcd3's token renewal; the request was rejected, so retry is safe.
          authRenewed = true;
          invalidateAuthToken(member.pool);
          tried.delete(member);
          continue;
        }
        if (!isTransient(error)) {
          member.answered();
          throw mapError(error, what);
        }
        const clusterBusy = isClusterBusy(error);
        member.failed(!clusterBusy && fullAttempt && isUnanswered(error));
        busy ||= clusterBusy;
        if (!(idempotent || notSent(error)) || ended()) throw mapError(error, what);
        if (pinned !== undefined || tried.size >= this.members.all.length) {
          // Every member tried: ask again only if the cluster, not the members, was the problem.
          if (!busy || Date.now() + BUSY_RETRY_DELAY_MS >= deadline) throw mapError(error, what);
          await sleep(Math.min(BUSY_RETRY_DELAY_MS * 2 ** round, deadline - Date.now()));
          round++;
          tried.clear();
          busy = false;
        }
      }
    }
  }

  async get(key: string): Promise<KeyValue | undefined> {
    const res = await this.call('get', true, (m, o) => m.client.kv.range({ key: Buffer.from(key, 'utf8') }, o));
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
      res = await this.call('list', true, (m, o) =>
        m.client.kv.range(
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
    const res = await this.call('put', false, (m, o) =>
      m.client.kv.put(
        { key: Buffer.from(key, 'utf8'), value: toBuffer(value), ...(options.lease !== undefined ? { lease: options.lease } : {}) },
        o,
      ),
    );
    return { revision: headerRevision(res.header) };
  }

  async delete(key: string, options: { prefix?: boolean } = {}): Promise<{ deleted: number; revision: number }> {
    const keyBytes = Buffer.from(key, 'utf8');
    const res = await this.call('delete', false, (m, o) =>
      m.client.kv.deleteRange(
        options.prefix === true ? { key: prefixStart(keyBytes), range_end: prefixEndBytes(keyBytes) } : { key: keyBytes },
        o,
      ),
    );
    return { deleted: rev(res.deleted), revision: headerRevision(res.header) };
  }

  async txn(request: TxnRequest): Promise<TxnResult> {
    const res = await this.call('txn', false, (m, o) =>
      m.client.kv.txn(
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
      members: this.members,
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
    const res = await this.call('grant lease', false, (m, o) => m.client.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: 0 }, o));
    if (res.error) throw new StoreError(`etcd grant lease: ${res.error}`);
    return res.ID;
  }

  async keepAliveOnce(lease: LeaseId): Promise<number> {
    const ttl = await this.call('keep lease alive', true, (m, o) => this.keepAliveRpc(m, lease, o));
    if (ttl <= 0) throw new NotFoundError(`lease ${lease} expired or was revoked`);
    return ttl;
  }

  /** One LeaseKeepAlive round trip on a short-lived stream; resolves with the TTL granted (<= 0: lease gone). */
  private async keepAliveRpc(member: Member, lease: LeaseId, options: CallOptions): Promise<number> {
    const stream = await openRawStream<ILeaseKeepAliveRequest, ILeaseKeepAliveResponse>(member.pool, 'Lease', 'leaseKeepAlive', options);
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
      await this.call('revoke lease', false, (m, o) => m.client.leaseClient.leaseRevoke({ ID: lease }, o));
    } catch (error) {
      if (isLeaseNotFound(error) || isLeaseNotFound((error as { cause?: unknown }).cause)) return;
      throw error;
    }
  }

  async compact(revision: number): Promise<void> {
    try {
      await this.call('compact', false, (m, o) => m.client.kv.compact({ revision, physical: true }, o));
    } catch (error) {
      // Compacting at or below the current compaction point is a no-op.
      if (isCompactedMessage(error)) return;
      throw error;
    }
  }

  async revision(): Promise<number> {
    const res = await this.call('revision', true, (m, o) => m.client.kv.range({ key: PROBE_KEY, count_only: true }, o));
    return headerRevision(res.header);
  }

  /**
   * Answers when any member answers a linearizable read, that is when a quorum is
   * reachable: all members are asked at once, so one slow member costs nothing.
   */
  async ping(timeoutMs = this.requestTimeoutMs): Promise<void> {
    const read = (m: Member, o: CallOptions) => m.client.kv.range({ key: PROBE_KEY, count_only: true }, o);
    if (this.members.all.length === 1) {
      await this.call('ping', true, read, { budgetMs: timeoutMs });
      return;
    }
    try {
      await Promise.any(this.members.all.map((member) => this.call('ping', true, read, { budgetMs: timeoutMs, pinned: member })));
    } catch (error) {
      throw error instanceof AggregateError ? mapError(error.errors[0], 'ping') : error;
    }
  }

  /** An etcd snapshot (what `etcdctl snapshot save` writes) from one answering member. */
  async *snapshot(signal?: AbortSignal): AsyncIterable<Uint8Array> {
    if (this.closed) throw new StoreUnavailableError('etcd store is closed');
    const member = this.members.pick();
    try {
      yield* snapshotChunks(await member.client.maintenance.snapshot(), signal);
    } catch (error) {
      throw signal?.aborted ? error : mapError(error, 'snapshot');
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const feed of [...this.feeds]) feed.fail(new StoreUnavailableError('etcd store is closed'));
    this.feeds.clear();
    this.members.close();
    await Promise.resolve();
  }

  /**
   * The oldest revision still kept, for a CompactedError: etcd's range error does not
   * say it, but a watch from revision 1 is canceled with it. Falls back to `requested + 1`.
   */
  private async compactRevisionHint(requested: number): Promise<number> {
    const fallback = requested + 1;
    try {
      return await this.call('compact revision', true, async (m, o) => {
        const stream = await openRawStream<unknown, { canceled: boolean; created: boolean; compact_revision: string }>(
          m.pool,
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

/** A member did not answer in time; `reported`: the member was already found hung. */
class NoAnswerError extends StoreUnavailableError {
  constructor(
    message: string,
    readonly reported: boolean,
  ) {
    super(message);
  }
}

/** Whether the member said nothing at all (as opposed to answering with an error). */
function isUnanswered(error: unknown): boolean {
  if (error instanceof NoAnswerError) return !error.reported;
  return error instanceof GRPCDeadlineExceededError || (typeof error === 'object' && error !== null && 'code' in error && error.code === 4);
}

/**
 * One attempt's answer, or NoAnswerError at `endMs` or, for a read (`movable`), as soon
 * as the member is found hung; the call's abort ends the wait too. A write keeps waiting
 * for its member: a probe that merely ran slow on a busy host must not fail it.
 */
function attemptOn<T>(member: Member, attempt: Promise<T>, movable: boolean, endMs: number, what: string, signal: AbortSignal | undefined): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let unsubscribe: (() => void) | undefined;
  let onAbort: (() => void) | undefined;
  const stop = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new NoAnswerError(`etcd ${what}: no answer from ${member.endpoint} in time`, false));
    }, Math.max(0, endMs - Date.now()));
    if (movable) {
      unsubscribe = member.onHung(() => {
        reject(new NoAnswerError(`etcd ${what}: ${member.endpoint} stopped answering`, true));
      });
    }
    onAbort = () => {
      reject(new StoreUnavailableError(`etcd ${what}: the call ended (deadline or cancellation) before etcd answered`));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
  return Promise.race([attempt, stop]).finally(() => {
    clearTimeout(timer);
    unsubscribe?.();
    if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort);
  });
}
