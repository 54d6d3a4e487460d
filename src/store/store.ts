// The one storage interface. Two backends implement it: embedded (node:sqlite, one
// host) and etcd (a cluster shared by every host). Semantics follow etcd's v3 API:
// one global revision per write, create/mod revisions per key, atomic
// compare-then-ops transactions, ordered gap-free watches and leases.

/** Lease ids are decimal strings (etcd's are int64). */
export type LeaseId = string;

export interface KeyValue {
  readonly key: string;
  readonly value: Uint8Array;
  /** Revision of the write that created the key (since its last deletion). */
  readonly createRevision: number;
  /** Revision of the key's last write. */
  readonly modRevision: number;
  /** Writes since creation, starting at 1. */
  readonly version: number;
  /** The lease the key is attached to, if any. */
  readonly lease: LeaseId | undefined;
}

export interface ListOptions {
  /** At most this many keys (0 or absent: all). */
  readonly limit?: number;
  /** Page after this key (exclusive); from the previous page's `nextKey`. */
  readonly startAfter?: string;
  /** Read at this revision, so the pages of one listing are consistent. */
  readonly revision?: number;
}

export interface ListResult {
  readonly kvs: KeyValue[];
  /** True when keys beyond this page exist. */
  readonly more: boolean;
  /** The revision the listing reflects: watch from `revision + 1` to follow it. */
  readonly revision: number;
}

/** Equality conditions of a transaction. */
export type Compare =
  | { readonly key: string; readonly modRevision: number }
  | { readonly key: string; readonly createRevision: number }
  | { readonly key: string; readonly value: Uint8Array }
  | { readonly key: string; readonly absent: true };

export type Op =
  | { readonly type: 'put'; readonly key: string; readonly value: Uint8Array; readonly lease?: LeaseId | undefined }
  | { readonly type: 'delete'; readonly key: string; readonly prefix?: boolean };

export interface TxnRequest {
  readonly compare: readonly Compare[];
  readonly success: readonly Op[];
  readonly failure?: readonly Op[];
}

export interface TxnResult {
  /** Whether every compare held (and `success` ran) or not (`failure` ran). */
  readonly succeeded: boolean;
  /** The store's revision after the transaction. */
  readonly revision: number;
}

export interface WatchEvent {
  readonly type: 'put' | 'delete';
  readonly key: string;
  /** The new value (put); empty for delete. */
  readonly value: Uint8Array;
  /** Revision of the write; for a delete, the revision of the deletion. */
  readonly modRevision: number;
  readonly createRevision: number;
}

export interface WatchOptions {
  /** First revision to deliver (inclusive). Older than the compacted revision: CompactedError. */
  readonly fromRevision: number;
  /** Ends the watch. */
  readonly signal?: AbortSignal;
}

export interface Store {
  readonly backend: 'embedded' | 'etcd';
  get(key: string): Promise<KeyValue | undefined>;
  list(prefix: string, options?: ListOptions): Promise<ListResult>;
  put(key: string, value: Uint8Array, options?: { lease?: LeaseId }): Promise<{ revision: number }>;
  delete(key: string, options?: { prefix?: boolean }): Promise<{ deleted: number; revision: number }>;
  txn(request: TxnRequest): Promise<TxnResult>;
  /**
   * Every put and delete under `prefix` from `fromRevision`, in revision order with
   * no gaps. Ends through the signal or the store's close, or by throwing
   * (CompactedError when the watcher fell behind a compaction: re-list and re-watch;
   * StoreUnavailableError).
   */
  watch(prefix: string, options: WatchOptions): AsyncIterable<WatchEvent>;
  grantLease(ttlSeconds: number): Promise<LeaseId>;
  /** Refreshes the lease's TTL; NotFoundError if it already expired. Returns the TTL granted. */
  keepAliveOnce(lease: LeaseId): Promise<number>;
  /** Revokes the lease and deletes its keys at once. Revoking an unknown lease is a no-op. */
  revokeLease(lease: LeaseId): Promise<void>;
  /** Discards history up to `revision` (exclusive of it); later watches from before it fail. */
  compact(revision: number): Promise<void>;
  /** The current revision. */
  revision(): Promise<number>;
  /** A cheap round trip, for readiness: throws StoreUnavailableError when unreachable. */
  ping(): Promise<void>;
  /**
   * A consistent copy of the whole store, taken online, as the backend's own format
   * (an SQLite database file; an etcd snapshot), in chunks. Ends early through `signal`.
   */
  snapshot(signal?: AbortSignal): AsyncIterable<Uint8Array>;
  close(): Promise<void>;
}

export const STORE_ROOT = '/debvisor/';

/**
 * The smallest key greater than every key starting with `prefix`. Works on UTF-16
 * units, which equals byte order for the ASCII keys the layout produces (segments are
 * URI-encoded).
 */
export function prefixEnd(prefix: string): string {
  return prefix.length === 0 ? '\0' : prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1);
}
