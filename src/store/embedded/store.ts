// The embedded backend: one host, one SQLite file (node:sqlite, no native build).
//
// Layout: `kv` holds the current state; `history` every event (a row per put or
// delete, tagged with its revision) for watch replay and reads at past revisions;
// `meta` the current and compacted revisions; `leases` the granted leases. Each write
// is one SQLite transaction in WAL mode with synchronous=FULL, so an acknowledged write
// survives `kill -9` and power loss. The database is opened with locking_mode=EXCLUSIVE
// and locked at once: that OS lock (released when the process dies) keeps a second
// daemon off the same directory; `<dir>/LOCK` only names the holder's pid for the error.
//
// node:sqlite is synchronous: every method runs to completion before the next starts,
// so the in-memory revision and lease table need no further locking.
import { randomBytes } from 'node:crypto';
import { createReadStream, mkdirSync, readFileSync, readdirSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { DatabaseSync, backup, type SQLInputValue, type StatementSync } from 'node:sqlite';
import { CompactedError, NotFoundError, StoreError, StoreUnavailableError } from '../errors.js';
import { WatchHub } from './hub.js';
import { bytesEqual, compareKeys, rangeEnd } from './keys.js';
import type { Compare, KeyValue, LeaseId, ListOptions, ListResult, Op, Store, TxnRequest, TxnResult, WatchEvent, WatchOptions } from '../store.js';

export interface EmbeddedStoreOptions {
  /** Data directory; created (mode 0700) if missing. Holds store.sqlite and LOCK. */
  readonly dir: string;
  /** How often old history is compacted away (default 5 minutes). */
  readonly compactionIntervalMs?: number;
  /** How many revisions of history automatic compaction keeps (default 10,000). */
  readonly retainRevisions?: number;
  /** How often expired leases are looked for (default 500 ms). */
  readonly leaseSweepIntervalMs?: number;
  /** Errors of the background timers (sweeps, compaction), which have no caller to throw to. */
  readonly onBackgroundError?: (err: unknown) => void;
}

const PUT = 0;
const DELETE = 1;
const EMPTY = new Uint8Array(0);
/** History rows read per step of a watch's replay. */
const REPLAY_CHUNK = 512;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv (
  key TEXT PRIMARY KEY, value BLOB NOT NULL, create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL,
  version INTEGER NOT NULL, lease TEXT);
CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease) WHERE lease IS NOT NULL;
CREATE TABLE IF NOT EXISTS history (
  id INTEGER PRIMARY KEY, rev INTEGER NOT NULL, key TEXT NOT NULL, type INTEGER NOT NULL, value BLOB,
  create_rev INTEGER NOT NULL, version INTEGER NOT NULL, lease TEXT);
CREATE INDEX IF NOT EXISTS history_rev ON history (rev);
CREATE INDEX IF NOT EXISTS history_key ON history (key, rev);
CREATE TABLE IF NOT EXISTS leases (id TEXT PRIMARY KEY, ttl_seconds REAL NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('schema', 1), ('revision', 0), ('compact_revision', 0);
`;

interface KvRow {
  readonly key: string;
  readonly value: Uint8Array;
  readonly create_rev: number;
  readonly mod_rev: number;
  readonly version: number;
  readonly lease: string | null;
}

interface HistoryRow {
  readonly id: number;
  readonly rev: number;
  readonly key: string;
  readonly type: number;
  readonly value: Uint8Array | null;
  readonly create_rev: number;
}

/** Directories open in this process (the SQLite lock also holds between connections, but this names the problem). */
const openDirs = new Set<string>();

export function openEmbeddedStore(options: EmbeddedStoreOptions): Promise<Store> {
  try {
    return Promise.resolve(new EmbeddedStore(options));
  } catch (err) {
    return Promise.reject(asError(err));
  }
}

function asError(err: unknown): Error {
  if (err instanceof StoreError) return err;
  if (err instanceof Error && (err as { code?: unknown }).code === 'ERR_SQLITE_ERROR') {
    return new StoreUnavailableError(`embedded store: ${err.message}`, { cause: err });
  }
  return err instanceof Error ? err : new Error(String(err));
}

function toKeyValue(row: KvRow): KeyValue {
  return {
    key: row.key,
    value: row.value,
    createRevision: row.create_rev,
    modRevision: row.mod_rev,
    version: row.version,
    lease: row.lease ?? undefined,
  };
}

function inUseError(dir: string, cause?: unknown): StoreUnavailableError {
  let holder = 'another debvisor-rpcd';
  try {
    const pid = readFileSync(join(dir, 'LOCK'), 'utf8').trim();
    if (/^\d+$/.test(pid)) holder += ` (pid ${pid})`;
  } catch {
    // no pid file: the holder is just starting or stopping
  }
  return new StoreUnavailableError(`data directory ${dir} is in use by ${holder}`, { cause });
}

const SNAPSHOT_CHUNK_BYTES = 64 * 1024;
const SNAPSHOT_FILE = /^snapshot-[0-9a-f]{16}\.sqlite\.tmp$/;

class EmbeddedStore implements Store {
  readonly backend = 'embedded' as const;
  private readonly dir: string;
  private readonly lockKey: string;
  private readonly db: DatabaseSync;
  private readonly hub = new WatchHub();
  private readonly leases = new Map<LeaseId, { ttlSeconds: number; deadline: number }>();
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly onBackgroundError: (err: unknown) => void;
  private readonly listStatements = new Map<string, StatementSync>();
  private rev: number;
  private compactRev: number;
  private closed = false;

  private readonly s: ReturnType<typeof prepare>;

  constructor(options: EmbeddedStoreOptions) {
    this.dir = resolve(options.dir);
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    this.lockKey = realpathSync(this.dir);
    if (openDirs.has(this.lockKey)) {
      throw new StoreUnavailableError(`data directory ${this.dir} is in use by another store in this process (pid ${process.pid})`);
    }
    this.db = new DatabaseSync(join(this.dir, 'store.sqlite'), { timeout: 0 });
    try {
      try {
        // Exclusive before the first access: the lock is kept until close, and WAL needs no shared memory.
        this.db.exec('PRAGMA locking_mode = EXCLUSIVE');
        this.db.exec('PRAGMA journal_mode = WAL');
        this.db.exec('BEGIN EXCLUSIVE; COMMIT');
      } catch (err) {
        const code = (err as { errcode?: unknown }).errcode;
        if (code === 5 || code === 6) throw inUseError(this.dir, err); // SQLITE_BUSY, SQLITE_LOCKED
        throw err;
      }
      const mode = this.db.prepare('PRAGMA journal_mode').get()?.journal_mode;
      if (mode !== 'wal') throw new StoreUnavailableError(`embedded store: cannot enable WAL mode in ${this.dir} (journal_mode is ${String(mode)})`);
      this.db.exec('PRAGMA synchronous = FULL');
      this.db.exec(SCHEMA);
      writeFileSync(join(this.dir, 'LOCK'), `${process.pid}\n`, { mode: 0o600 });
      // A backup cut short by a crash leaves its copy behind.
      for (const name of readdirSync(this.dir)) if (SNAPSHOT_FILE.test(name)) rmSync(join(this.dir, name), { force: true });
      this.s = prepare(this.db);
    } catch (err) {
      this.db.close();
      throw err;
    }
    openDirs.add(this.lockKey);

    this.rev = this.meta('revision');
    this.compactRev = this.meta('compact_revision');
    // Like etcd after a leader change, surviving leases get a full TTL from now.
    const now = performance.now();
    for (const row of this.s.allLeases.all() as unknown as { id: string; ttl_seconds: number }[]) {
      this.leases.set(row.id, { ttlSeconds: row.ttl_seconds, deadline: now + row.ttl_seconds * 1000 });
    }

    this.onBackgroundError = options.onBackgroundError ?? (() => undefined);
    const retain = options.retainRevisions ?? 10_000;
    this.every(options.leaseSweepIntervalMs ?? 500, () => this.sweepLeases());
    this.every(options.compactionIntervalMs ?? 5 * 60_000, () => {
      const target = this.rev - retain;
      if (target > this.compactRev) this.compactSync(target);
    });
  }

  // ---- reads ----

  get(key: string): Promise<KeyValue | undefined> {
    return this.run(() => {
      const row = this.s.get.get(key) as unknown as KvRow | undefined;
      return row && toKeyValue(row);
    });
  }

  list(prefix: string, options: ListOptions = {}): Promise<ListResult> {
    return this.run(() => {
      const revision = options.revision !== undefined && options.revision > 0 ? options.revision : this.rev;
      if (revision > this.rev) throw new Error(`revision ${revision} is in the future (current ${this.rev})`);
      if (revision < this.compactRev) throw new CompactedError(this.compactRev);
      const past = revision < this.rev;
      const end = rangeEnd(prefix);
      const strict = options.startAfter !== undefined && compareKeys(options.startAfter, prefix) >= 0;
      const limit = options.limit && options.limit > 0 ? options.limit : 0;
      const args: SQLInputValue[] = [strict ? (options.startAfter ?? '') : prefix];
      if (end !== undefined) args.push(end);
      if (past) args.push(revision);
      args.push(limit > 0 ? limit + 1 : -1);
      const rows = this.listStatement(past, strict, end !== undefined).all(...args) as unknown as KvRow[];
      const more = limit > 0 && rows.length > limit;
      if (more) rows.length = limit;
      return { kvs: rows.map(toKeyValue), more, revision };
    });
  }

  private listStatement(past: boolean, strict: boolean, bounded: boolean): StatementSync {
    const name = `${past}${strict}${bounded}`;
    let statement = this.listStatements.get(name);
    if (!statement) {
      const where = `key ${strict ? '>' : '>='} ?${bounded ? ' AND key < ?' : ''}`;
      statement = this.db.prepare(
        past
          ? // The latest event of each key at or before the revision; a delete means absent. (SQLite takes
            // the bare columns of a max() aggregate from the row holding the maximum.)
            `SELECT key, value, create_rev, mod_rev, version, lease FROM (
               SELECT key, max(rev) AS mod_rev, type, value, create_rev, version, lease FROM history
               WHERE ${where} AND rev <= ? GROUP BY key)
             WHERE type = ${PUT} ORDER BY key LIMIT ?`
          : `SELECT key, value, create_rev, mod_rev, version, lease FROM kv WHERE ${where} ORDER BY key LIMIT ?`,
      );
      this.listStatements.set(name, statement);
    }
    return statement;
  }

  revision(): Promise<number> {
    return this.run(() => this.rev);
  }

  ping(): Promise<void> {
    return this.run(() => undefined);
  }

  // ---- writes ----

  put(key: string, value: Uint8Array, options: { lease?: LeaseId } = {}): Promise<{ revision: number }> {
    return this.run(() => {
      this.write((rev, events) => this.applyPut(key, value, options.lease, rev, events));
      return { revision: this.rev };
    });
  }

  delete(key: string, options: { prefix?: boolean } = {}): Promise<{ deleted: number; revision: number }> {
    return this.run(() => {
      const deleted = this.write((rev, events) => this.applyDelete(key, options.prefix === true, rev, events));
      return { deleted, revision: this.rev };
    });
  }

  txn(request: TxnRequest): Promise<TxnResult> {
    return this.run(() => {
      checkOps(request.success);
      if (request.failure) checkOps(request.failure);
      const succeeded = this.write((rev, events) => {
        const ok = request.compare.every((compare) => this.holds(compare));
        for (const op of ok ? request.success : (request.failure ?? [])) {
          if (op.type === 'put') this.applyPut(op.key, op.value, op.lease, rev, events);
          else this.applyDelete(op.key, op.prefix === true, rev, events);
        }
        return ok;
      });
      return { succeeded, revision: this.rev };
    });
  }

  private holds(compare: Compare): boolean {
    const row = this.s.get.get(compare.key) as unknown as KvRow | undefined;
    if ('absent' in compare) return row === undefined;
    if ('modRevision' in compare) return (row?.mod_rev ?? 0) === compare.modRevision;
    if ('createRevision' in compare) return (row?.create_rev ?? 0) === compare.createRevision;
    return row !== undefined && bytesEqual(row.value, compare.value);
  }

  /**
   * Runs `body` in one SQLite transaction at revision current+1. The revision advances,
   * and watchers hear of it, only if the body wrote an event.
   */
  private write<T>(body: (rev: number, events: WatchEvent[]) => T): T {
    const rev = this.rev + 1;
    const events: WatchEvent[] = [];
    this.s.begin.run();
    let result: T;
    try {
      result = body(rev, events);
      if (events.length > 0) this.s.setMeta.run('revision', rev);
      this.s.commit.run();
    } catch (err) {
      if (this.db.isTransaction) this.s.rollback.run();
      throw err;
    }
    if (events.length > 0) {
      this.rev = rev;
      this.hub.publish(events);
    }
    return result;
  }

  private applyPut(key: string, value: Uint8Array, lease: LeaseId | undefined, rev: number, events: WatchEvent[]): void {
    if (key.length === 0) throw new Error('key is not provided');
    const leaseId = lease === undefined || lease === '' || lease === '0' ? null : lease;
    if (leaseId !== null && !this.liveLease(leaseId)) throw new NotFoundError(`lease ${leaseId} not found`);
    const copy = new Uint8Array(value);
    const row = this.s.putKv.get(key, copy, rev, rev, leaseId) as unknown as { create_rev: number; version: number };
    this.s.addHistory.run(rev, key, PUT, copy, row.create_rev, row.version, leaseId);
    events.push({ type: 'put', key, value: copy, modRevision: rev, createRevision: row.create_rev });
  }

  private applyDelete(key: string, prefix: boolean, rev: number, events: WatchEvent[]): number {
    let keys: string[];
    if (prefix) {
      const end = rangeEnd(key);
      const rows = (end === undefined ? this.s.keysFrom.all(key) : this.s.keysIn.all(key, end)) as unknown as { key: string }[];
      keys = rows.map((row) => row.key);
    } else {
      keys = [key];
    }
    return this.deleteKeys(keys, rev, events);
  }

  private deleteKeys(keys: readonly string[], rev: number, events: WatchEvent[]): number {
    let deleted = 0;
    for (const key of keys) {
      if (this.s.deleteKv.run(key).changes === 0) continue;
      this.s.addHistory.run(rev, key, DELETE, null, 0, 0, null);
      events.push({ type: 'delete', key, value: EMPTY, modRevision: rev, createRevision: 0 });
      deleted++;
    }
    return deleted;
  }

  // ---- watch ----

  watch(prefix: string, options: WatchOptions): AsyncIterable<WatchEvent> {
    return this.watchEvents(prefix, options);
  }

  private async *watchEvents(prefix: string, options: WatchOptions): AsyncGenerator<WatchEvent> {
    this.assertOpen();
    const signal = options.signal;
    if (signal?.aborted) return;
    // Subscribe first, then replay: whatever commits meanwhile is buffered, and dropped if replayed.
    const subscription = this.hub.subscribe(prefix);
    const onAbort = () => subscription.poke();
    signal?.addEventListener('abort', onAbort);
    try {
      const from = options.fromRevision > 0 ? options.fromRevision : this.rev + 1;
      let delivered = from - 1; // the last revision yielded
      let cursor = this.replayStart(from);
      const end = rangeEnd(prefix);
      while (cursor !== undefined) {
        if (this.watchOver(signal)) return;
        // Compaction may have run while we yielded: the rest of the replay (which may
        // continue the revision last yielded) must still be in history.
        if (Math.max(delivered, from) < this.compactRev) throw new CompactedError(this.compactRev);
        const rows = (end === undefined ? this.s.replayFrom.all(cursor, prefix, REPLAY_CHUNK) : this.s.replayIn.all(cursor, prefix, end, REPLAY_CHUNK)) as unknown as HistoryRow[];
        // A short chunk was read to the end of history in one synchronous step: after it,
        // every buffered live event at or below `delivered` is a duplicate.
        cursor = rows.length < REPLAY_CHUNK ? undefined : (rows.at(-1)?.id ?? 0) + 1;
        for (const row of rows) {
          if (this.watchOver(signal)) return;
          delivered = row.rev;
          yield { type: row.type === PUT ? 'put' : 'delete', key: row.key, value: row.value ?? EMPTY, modRevision: row.rev, createRevision: row.create_rev };
        }
      }
      for (;;) {
        let event: WatchEvent | undefined;
        while ((event = subscription.shift()) !== undefined) {
          if (this.watchOver(signal)) return; // nothing more once the watch is over
          if (event.modRevision <= delivered) continue;
          yield event;
        }
        if (this.watchOver(signal) || subscription.ended) return;
        await subscription.wait();
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      this.hub.unsubscribe(subscription);
    }
  }

  /** A method, not an inline check, so the compiler does not assume it unchanged across a yield. */
  private watchOver(signal: AbortSignal | undefined): boolean {
    return this.closed || signal?.aborted === true;
  }

  /** The id of the first history row at or after `from`, or undefined if there is none yet. */
  private replayStart(from: number): number | undefined {
    if (from < this.compactRev) throw new CompactedError(this.compactRev);
    const row = this.s.replayStart.get(from) as { id: number | null } | undefined;
    return row?.id ?? undefined;
  }

  // ---- leases ----

  grantLease(ttlSeconds: number): Promise<LeaseId> {
    return this.run(() => {
      if (!(ttlSeconds > 0) || !Number.isFinite(ttlSeconds)) throw new Error(`lease TTL must be a positive number of seconds, not ${ttlSeconds}`);
      let id: LeaseId;
      do id = (randomBytes(8).readBigUInt64BE() >> 1n).toString();
      while (id === '0' || this.leases.has(id));
      this.s.addLease.run(id, ttlSeconds);
      this.leases.set(id, { ttlSeconds, deadline: performance.now() + ttlSeconds * 1000 });
      return id;
    });
  }

  keepAliveOnce(lease: LeaseId): Promise<number> {
    return this.run(() => {
      const entry = this.liveLease(lease);
      if (!entry) throw new NotFoundError(`lease ${lease} not found`);
      // Deadlines live in memory only: a keepalive is not worth a disk sync.
      entry.deadline = performance.now() + entry.ttlSeconds * 1000;
      return entry.ttlSeconds;
    });
  }

  revokeLease(lease: LeaseId): Promise<void> {
    return this.run(() => this.revokeSync(lease));
  }

  /** The lease if it is granted and unexpired; an expired one is revoked on the spot. */
  private liveLease(lease: LeaseId): { ttlSeconds: number; deadline: number } | undefined {
    const entry = this.leases.get(lease);
    if (!entry) return undefined;
    if (entry.deadline > performance.now()) return entry;
    // Inside a write transaction the sweep will get it; outside, revoke at once.
    if (!this.db.isTransaction) this.revokeSync(lease);
    return undefined;
  }

  private revokeSync(lease: LeaseId): void {
    if (!this.leases.has(lease)) return;
    this.write((rev, events) => {
      const keys = (this.s.keysOfLease.all(lease) as unknown as { key: string }[]).map((row) => row.key);
      this.deleteKeys(keys, rev, events);
      this.s.deleteLease.run(lease);
    });
    this.leases.delete(lease);
  }

  private sweepLeases(): void {
    const now = performance.now();
    for (const [id, entry] of this.leases) {
      if (entry.deadline <= now) this.revokeSync(id);
    }
  }

  // ---- compaction ----

  compact(revision: number): Promise<void> {
    return this.run(() => {
      if (revision > this.rev) throw new Error(`cannot compact to revision ${revision}: it is in the future (current ${this.rev})`);
      this.compactSync(revision);
    });
  }

  /** Drops history before `revision`, except each key's state at it (so reads at `revision` still work). */
  private compactSync(revision: number): void {
    if (revision <= this.compactRev) return;
    this.s.begin.run();
    try {
      this.s.compact.run(revision);
      this.s.setMeta.run('compact_revision', revision);
      this.s.commit.run();
    } catch (err) {
      if (this.db.isTransaction) this.s.rollback.run();
      throw err;
    }
    this.compactRev = revision;
  }

  // ---- backup ----

  /**
   * SQLite's online backup through the daemon's own connection (the database is opened
   * with an exclusive lock, so no other process could read it), into a temporary file in
   * the data directory: writes made during the copy are carried into it.
   */
  async *snapshot(signal?: AbortSignal): AsyncIterable<Uint8Array> {
    this.assertOpen();
    const path = join(this.dir, `snapshot-${randomBytes(8).toString('hex')}.sqlite.tmp`);
    try {
      try {
        await backup(this.db, path);
      } catch (err) {
        throw new StoreUnavailableError(`embedded store: backup failed: ${asError(err).message}`, { cause: err });
      }
      for await (const chunk of createReadStream(path, { highWaterMark: SNAPSHOT_CHUNK_BYTES, signal })) yield chunk as Buffer;
    } finally {
      await rm(path, { force: true });
    }
  }

  // ---- lifecycle ----

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    for (const timer of this.timers) clearInterval(timer);
    this.hub.endAll();
    openDirs.delete(this.lockKey);
    try {
      rmSync(join(this.dir, 'LOCK'), { force: true });
      this.db.close();
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(asError(err));
    }
  }

  private every(intervalMs: number, task: () => void): void {
    const timer = setInterval(() => {
      if (this.closed) return;
      try {
        task();
      } catch (err) {
        this.onBackgroundError(err);
      }
    }, intervalMs);
    timer.unref();
    this.timers.push(timer);
  }

  private assertOpen(): void {
    if (this.closed) throw new StoreUnavailableError('the embedded store is closed');
  }

  /** Runs a synchronous body as an async call: errors become rejections, SQLite's as StoreUnavailableError. */
  private run<T>(body: () => T): Promise<T> {
    try {
      this.assertOpen();
      return Promise.resolve(body());
    } catch (err) {
      return Promise.reject(asError(err));
    }
  }

  private meta(name: string): number {
    const row = this.s.getMeta.get(name) as { value: number } | undefined;
    return row?.value ?? 0;
  }
}

/** etcd refuses a transaction branch that writes one key twice. */
function checkOps(ops: readonly Op[]): void {
  const puts = new Set<string>();
  for (const op of ops) {
    if (op.type !== 'put') continue;
    if (puts.has(op.key)) throw new Error(`duplicate key given in txn request: ${op.key}`);
    puts.add(op.key);
  }
  if (puts.size === 0) return;
  for (const op of ops) {
    if (op.type !== 'delete') continue;
    const overlaps = op.prefix === true ? [...puts].some((key) => key.startsWith(op.key)) : puts.has(op.key);
    if (overlaps) throw new Error(`duplicate key given in txn request: a put and a delete of ${op.key}`);
  }
}

function prepare(db: DatabaseSync) {
  return {
    begin: db.prepare('BEGIN'),
    commit: db.prepare('COMMIT'),
    rollback: db.prepare('ROLLBACK'),
    getMeta: db.prepare('SELECT value FROM meta WHERE name = ?'),
    setMeta: db.prepare('UPDATE meta SET value = ?2 WHERE name = ?1'),
    get: db.prepare('SELECT key, value, create_rev, mod_rev, version, lease FROM kv WHERE key = ?'),
    putKv: db.prepare(
      `INSERT INTO kv (key, value, create_rev, mod_rev, version, lease) VALUES (?, ?, ?, ?, 1, ?)
       ON CONFLICT (key) DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev, version = version + 1, lease = excluded.lease
       RETURNING create_rev, version`,
    ),
    deleteKv: db.prepare('DELETE FROM kv WHERE key = ?'),
    keysIn: db.prepare('SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key'),
    keysFrom: db.prepare('SELECT key FROM kv WHERE key >= ? ORDER BY key'),
    keysOfLease: db.prepare('SELECT key FROM kv WHERE lease = ? ORDER BY key'),
    addHistory: db.prepare('INSERT INTO history (rev, key, type, value, create_rev, version, lease) VALUES (?, ?, ?, ?, ?, ?, ?)'),
    replayStart: db.prepare('SELECT min(id) AS id FROM history WHERE rev >= ?'),
    // `+key`: walk history in id order, filtering by key, rather than by the key index.
    replayIn: db.prepare('SELECT id, rev, key, type, value, create_rev FROM history WHERE id >= ? AND +key >= ? AND +key < ? ORDER BY id LIMIT ?'),
    replayFrom: db.prepare('SELECT id, rev, key, type, value, create_rev FROM history WHERE id >= ? AND +key >= ? ORDER BY id LIMIT ?'),
    // Keep, per key, its latest put at or before the revision; drop everything else before it.
    compact: db.prepare(
      `DELETE FROM history WHERE rev < ?1 AND (type = ${DELETE}
         OR EXISTS (SELECT 1 FROM history AS later WHERE later.key = history.key AND later.rev > history.rev AND later.rev <= ?1))`,
    ),
    allLeases: db.prepare('SELECT id, ttl_seconds FROM leases'),
    addLease: db.prepare('INSERT INTO leases (id, ttl_seconds) VALUES (?, ?)'),
    deleteLease: db.prepare('DELETE FROM leases WHERE id = ?'),
  };
}
