// Typed records on top of the raw store: JSON values validated on read and write,
// with a schema version so records can migrate later, and CAS for updates.
import type { z } from 'zod';
import { ConflictError, NotFoundError, StoreError } from './errors.js';
import { listAll } from './informer.js';
import { segment } from './layout.js';

/** A record's id: one string, or several parts for nested layouts (quotas: principal, resource). */
export type RecordId = string | readonly string[];
import type { LeaseId, Store } from './store.js';

/** A stored record failed validation: a bug or tampering, never the client's fault. */
export class CorruptRecordError extends StoreError {
  constructor(key: string, problem: string) {
    super(`record ${key} is invalid: ${problem}`);
    this.name = 'CorruptRecordError';
  }
}

export interface Versioned<T> {
  readonly value: T;
  /** Pass back to update/delete to make them compare-and-swap. */
  readonly modRevision: number;
}

export interface Page<T> {
  readonly items: Versioned<T>[];
  /** Empty when this was the last page. */
  readonly nextPageToken: string;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export class Repository<T extends { readonly schema_version: number }> {
  constructor(
    readonly store: Store,
    readonly prefix: string,
    private readonly schema: z.ZodType<T>,
    /** Upgrades an older stored shape to the current one; identity while there is one version. */
    private readonly migrate: (raw: unknown) => unknown = (raw) => raw,
  ) {}

  /** Each part of an id becomes one URI-encoded key segment: spiffe ids can't reach into other keys. */
  keyOf(id: RecordId): string {
    return this.prefix + (typeof id === 'string' ? [id] : id).map(segment).join('/');
  }

  /** The id of a key under this repository's prefix (the inverse of keyOf for one-part ids). */
  idOfKey(key: string): string {
    return key.slice(this.prefix.length).split('/').map(decodeURIComponent).join('/');
  }

  decode(key: string, bytes: Uint8Array): T {
    let raw: unknown;
    try {
      raw = JSON.parse(decoder.decode(bytes));
    } catch {
      throw new CorruptRecordError(key, 'not JSON');
    }
    const result = this.schema.safeParse(this.migrate(raw));
    if (!result.success) throw new CorruptRecordError(key, result.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
    return result.data;
  }

  encode(value: T): Uint8Array {
    return encoder.encode(JSON.stringify(this.schema.parse(value)));
  }

  async get(id: RecordId): Promise<Versioned<T> | undefined> {
    const key = this.keyOf(id);
    const kv = await this.store.get(key);
    return kv && { value: this.decode(key, kv.value), modRevision: kv.modRevision };
  }

  async require(id: RecordId, what: string): Promise<Versioned<T>> {
    const found = await this.get(id);
    if (!found) throw new NotFoundError(`${what} ${typeof id === 'string' ? id : id.join('/')} not found`);
    return found;
  }

  /** A page in key order. The token is the last key of the page, opaque to clients. */
  async list(options: { pageSize: number; pageToken?: string; under?: RecordId }): Promise<Page<T>> {
    const prefix = options.under ? this.keyOf(options.under) + '/' : this.prefix;
    const startAfter = options.pageToken ? Buffer.from(options.pageToken, 'base64url').toString() : undefined;
    if (startAfter !== undefined && !startAfter.startsWith(prefix)) throw new NotFoundError('page token does not belong to this listing');
    const page = await this.store.list(prefix, { limit: options.pageSize, ...(startAfter ? { startAfter } : {}) });
    const last = page.kvs[page.kvs.length - 1];
    return {
      items: page.kvs.map((kv) => ({ value: this.decode(kv.key, kv.value), modRevision: kv.modRevision })),
      nextPageToken: page.more && last ? Buffer.from(last.key).toString('base64url') : '',
    };
  }

  async all(): Promise<Versioned<T>[]> {
    const { kvs } = await listAll(this.store, this.prefix);
    return kvs.map((kv) => ({ value: this.decode(kv.key, kv.value), modRevision: kv.modRevision }));
  }

  /** Creates the record; ConflictError if it exists. */
  async create(id: RecordId, value: T, options?: { lease?: LeaseId }): Promise<Versioned<T>> {
    const key = this.keyOf(id);
    const result = await this.store.txn({ compare: [{ key, absent: true }], success: [{ type: 'put', key, value: this.encode(value), lease: options?.lease }] });
    if (!result.succeeded) throw new ConflictError(`${key} already exists`);
    return { value, modRevision: result.revision };
  }

  /** Replaces the record if it is still at `modRevision`; ConflictError otherwise. */
  async update(id: RecordId, value: T, modRevision: number): Promise<Versioned<T>> {
    const key = this.keyOf(id);
    const result = await this.store.txn({ compare: [{ key, modRevision }], success: [{ type: 'put', key, value: this.encode(value) }] });
    if (!result.succeeded) throw new ConflictError(`${key} changed concurrently`);
    return { value, modRevision: result.revision };
  }

  /** Read-modify-write with retries on conflict. `change` returns the new value, or undefined to leave it. */
  async mutate(id: RecordId, change: (current: T | undefined) => T | undefined, attempts = 10): Promise<Versioned<T> | undefined> {
    return retryOnConflict(async () => {
      const current = await this.get(id);
      const next = change(current?.value);
      if (next === undefined) return current;
      return current ? await this.update(id, next, current.modRevision) : await this.create(id, next);
    }, attempts);
  }

  async put(id: RecordId, value: T): Promise<Versioned<T>> {
    const { revision } = await this.store.put(this.keyOf(id), this.encode(value));
    return { value, modRevision: revision };
  }

  /** Deletes the record (only if still at `modRevision`, when given). Returns whether it existed. */
  async delete(id: RecordId, modRevision?: number): Promise<boolean> {
    const key = this.keyOf(id);
    if (modRevision === undefined) return (await this.store.delete(key)).deleted > 0;
    const result = await this.store.txn({ compare: [{ key, modRevision }], success: [{ type: 'delete', key }] });
    if (!result.succeeded) throw new ConflictError(`${key} changed concurrently`);
    return true;
  }
}

/**
 * Runs a read-modify-write again while it meets a concurrent change (ConflictError), at most
 * `attempts` times. Records other writers touch on their own (API key usage counters, quotas)
 * would otherwise make an administrator's change fail at random.
 */
export async function retryOnConflict<R>(attempt: () => Promise<R>, attempts = 10): Promise<R> {
  for (let tries = 1; ; tries++) {
    try {
      return await attempt();
    } catch (err) {
      if (!(err instanceof ConflictError) || tries >= attempts) throw err;
    }
  }
}
