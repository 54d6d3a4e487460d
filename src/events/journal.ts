// The event journal: what sources publish, coalesced into batch records in the store (one
// write per batch window per node), followed back by ONE store watch per daemon into an
// in-memory ring of the retained window. Every stream of the daemon reads that ring by its
// own cursor, so a daemon on a shared etcd serves the events of every node, and a stream
// costs no memory of its own whatever it lags.
//
//   /debvisor/events/batches/<node>/<ms>-<nonce>-<seq>   one batch: size-delimited Event messages
//   /debvisor/events/floor                               {"revision": n}: the newest pruned batch
//
// An event's position is (the batch's store revision, its index in the batch). Each node
// prunes its own batches once they fall out of the window; the floor, moved in the same
// transaction, makes "is this token expired?" the same answer on every daemon.
import { randomBytes } from 'node:crypto';
import { create, fromBinary } from '@bufbuild/protobuf';
import { sizeDelimitedEncode, sizeDelimitedPeek } from '@bufbuild/protobuf/wire';
import { timestampFromMs, timestampMs } from '@bufbuild/protobuf/wkt';
import { EventSchema, type Event } from '../gen/debvisor/v1/event_pb.js';
import { runInformer } from '../store/informer.js';
import { LAYOUT, segment } from '../store/layout.js';
import type { KeyValue, Store, WatchEvent } from '../store/store.js';
import { END, after, encodeToken, type Position } from './position.js';
import type { EventSink, NewEvent } from './types.js';

export interface JournalSettings {
  /** At most one store write per this window and node: events published within it share it. */
  readonly batchMs: number;
  /** The retained window: at least this many of the newest events ... */
  readonly retainEvents: number;
  /** ... and at least every event of this many seconds. */
  readonly retainSeconds: number;
}

export interface JournalHooks {
  /** Store trouble the journal recovers from by itself (a failed write is retried). */
  readonly onProblem: (err: unknown, what: string) => void;
  /** Events dropped because the store stayed unwritable while too many piled up. */
  readonly onDropped?: (count: number) => void;
}

/** One stored batch, as the ring holds it. */
interface Batch {
  readonly key: string;
  readonly revision: number;
  readonly node: string;
  /** Publication time of its first event: its age for retention. */
  readonly timeMs: number;
  /** Each event with its position, made once for every reader. */
  readonly entries: readonly PositionedEvent[];
}

export interface PositionedEvent {
  /** With its resume token set; shared by every reader, so never to be changed. */
  readonly event: Event;
  readonly position: Position;
}

/** A page of events after a cursor, and the cursor to read the next page from. */
export interface Page {
  readonly events: readonly PositionedEvent[];
  readonly cursor: Position;
}

const BATCHES = `${LAYOUT.events}batches/`;
const FLOOR_KEY = `${LAYOUT.events}floor`;
/** Events in one store record: well under etcd's 1.5 MiB request limit for the small payloads events carry. */
const MAX_BATCH_EVENTS = 500;
/** Unwritten events kept while the store is down; the oldest go beyond it (an etcd outage must not grow the heap). */
const MAX_PENDING_EVENTS = 50_000;
const RETRY_MS = 1000;
const PRUNE_INTERVAL_MS = 10_000;
/** Batches of a node gone for good are pruned by any node, once twice as old as the window. */
const ABANDONED_FACTOR = 2;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function encodeBatch(events: readonly Event[]): Uint8Array {
  const parts = events.map((event) => sizeDelimitedEncode(EventSchema, event));
  const out = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function decodeBatch(bytes: Uint8Array): Event[] {
  const events: Event[] = [];
  let rest = bytes;
  while (rest.length > 0) {
    const peek = sizeDelimitedPeek(rest);
    if (peek.eof || peek.offset + peek.size > rest.length) throw new Error('truncated event batch');
    events.push(fromBinary(EventSchema, rest.subarray(peek.offset, peek.offset + peek.size)));
    rest = rest.subarray(peek.offset + peek.size);
  }
  return events;
}

function nodeOfKey(key: string): string {
  return decodeURIComponent(key.slice(BATCHES.length).split('/')[0] ?? '');
}

export class EventJournal implements EventSink {
  private pending: Event[] = [];
  private flushTimer: NodeJS.Timeout | undefined;
  private lastWriteMs = 0;
  private pruneTimer: NodeJS.Timeout | undefined;
  private writing = false;
  private pruning = false;
  private seq = 0;
  private readonly nonce = randomBytes(4).toString('hex');

  /** The retained batches by revision, exactly what the store holds under the prefix as of `head`. */
  private ring: Batch[] = [];
  private eventCount = 0;
  /** Events the ring has received since the start, of every node. */
  private nextSeq = 0;
  /** The newest pruned batch's revision: positions before it are expired. */
  private floor = 0;
  private floorModRevision = 0;
  /** The store revision the ring reflects. */
  private head = 0;
  private readonly loaded = Promise.withResolvers<undefined>();
  private isLoaded = false;
  private readonly listeners = new Set<() => void>();
  private stopped = false;
  private streamsEnded = false;
  private readonly abort = new AbortController();

  constructor(
    private readonly store: Store,
    private readonly node: string,
    private readonly settings: () => JournalSettings,
    private readonly hooks: JournalHooks,
  ) {
    // Nobody may be waiting on it (a journal stopped before it loaded).
    this.loaded.promise.catch(() => undefined);
  }

  /** Follows the store until stop(); resolves once the ring holds the store's events. */
  start(): Promise<undefined> {
    void runInformer(
      this.store,
      LAYOUT.events,
      {
        onReset: (kvs, revision) => this.reset(kvs, revision),
        onEvent: (event) => this.apply(event),
        onRecover: (err) => this.hooks.onProblem(err, 'event journal: store watch interrupted, re-listing'),
      },
      { signal: this.abort.signal },
    ).catch((err: unknown) => this.hooks.onProblem(err, 'event journal: store watch failed'));
    this.pruneTimer = setInterval(() => void this.prune(), Math.min(PRUNE_INTERVAL_MS, this.settings().retainSeconds * 1000));
    this.pruneTimer.unref();
    return this.loaded.promise;
  }

  /** True once the ring holds the store's events. */
  get isReady(): boolean {
    return this.isLoaded;
  }

  /** True once streams must end (the daemon is stopping); publishing goes on until stop(). */
  get closed(): boolean {
    return this.streamsEnded || this.stopped;
  }

  /** Ends every stream (they see `closed`), while calls still in flight may go on publishing. */
  endStreams(): void {
    this.streamsEnded = true;
    this.notify();
  }

  publish(event: NewEvent): void {
    if (this.stopped) return;
    this.pending.push(create(EventSchema, { ...event, time: timestampFromMs(Date.now()) }));
    if (this.pending.length > MAX_PENDING_EVENTS) {
      const dropped = this.pending.length - MAX_PENDING_EVENTS;
      this.pending.splice(0, dropped);
      this.hooks.onDropped?.(dropped);
    }
    this.schedule(0);
  }

  /**
   * At most one write per batch window: the first event after a quiet spell is written at once
   * (after the current tick, so what is published together shares it), later ones wait for the
   * window to pass.
   */
  private schedule(notBeforeMs: number): void {
    if (this.flushTimer || this.stopped) return;
    const delayMs = Math.max(notBeforeMs, this.lastWriteMs + this.settings().batchMs - Date.now(), 0);
    this.flushTimer = setTimeout(() => void this.flush(), delayMs);
  }

  /** Writes what is pending now, one batch record per call (the timer writes the rest). */
  async flush(): Promise<void> {
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    if (this.writing || this.pending.length === 0) return;
    this.writing = true;
    const events = this.pending.splice(0, MAX_BATCH_EVENTS);
    let delayMs = 0;
    this.lastWriteMs = Date.now();
    try {
      const key = `${BATCHES}${segment(this.node)}/${String(Date.now()).padStart(15, '0')}-${this.nonce}-${this.seq++}`;
      await this.store.put(key, encodeBatch(events));
      void this.prune();
    } catch (err) {
      this.pending.unshift(...events);
      delayMs = RETRY_MS;
      this.hooks.onProblem(err, 'event journal: could not write a batch; retrying');
    } finally {
      this.writing = false;
      if (this.pending.length > 0) this.schedule(delayMs);
    }
  }

  /** The position just past every event the ring holds: where a stream without a token starts. */
  headPosition(): Position {
    return { revision: this.head, index: END };
  }

  /** True if events after `cursor` may have been pruned: the stream must re-list. */
  expired(cursor: Position): boolean {
    return cursor.revision < this.floor || (cursor.revision === this.floor && cursor.index !== END);
  }

  /** Up to `limit` events after `cursor`, or 'expired' when some after it are gone. */
  read(cursor: Position, limit: number): Page | 'expired' {
    if (this.expired(cursor)) return 'expired';
    const events: PositionedEvent[] = [];
    for (let b = this.firstBatchFrom(cursor.revision); b < this.ring.length; b++) {
      const batch = this.ring[b];
      if (!batch) break;
      const start = batch.revision === cursor.revision ? cursor.index + 1 : 0;
      for (let index = start; index < batch.entries.length; index++) {
        const entry = batch.entries[index];
        if (!entry) break;
        events.push(entry);
        if (events.length === limit) return { events, cursor: entry.position };
      }
    }
    // Everything up to the head was read: a token from a daemon further ahead stays as it is.
    const end = this.headPosition();
    return { events, cursor: after(end, cursor) ? end : cursor };
  }

  /** Events the ring has received since the journal started (any node): a clock for lag. */
  get published(): number {
    return this.nextSeq;
  }

  /** Calls `listener` at every change of the ring (new events, pruning, a reload) and at stop, until the returned function is called. */
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Events the ring holds (all nodes). */
  size(): number {
    return this.eventCount;
  }

  /**
   * Deletes this node's batches that fell out of the window (and batches of nodes gone for
   * longer than twice the window), moving the floor in the same transaction. Returns how
   * many batches it deleted (0 when another daemon moved the floor first: the next run retries).
   */
  async prune(now = Date.now()): Promise<number> {
    if (this.pruning || !this.isLoaded || this.stopped) return 0;
    const { retainEvents, retainSeconds } = this.settings();
    const windowMs = retainSeconds * 1000;
    let newer = this.eventCount;
    const doomed: Batch[] = [];
    for (const batch of this.ring) {
      newer -= batch.entries.length;
      // In the window while within the time span, or while fewer events than the count came after it.
      if (batch.timeMs > now - windowMs || newer < retainEvents) break;
      if (batch.node === this.node || batch.timeMs < now - ABANDONED_FACTOR * windowMs) doomed.push(batch);
    }
    if (doomed.length === 0) return 0;
    this.pruning = true;
    try {
      const floor = Math.max(this.floor, ...doomed.map((batch) => batch.revision));
      const result = await this.store.txn({
        compare: [this.floorModRevision === 0 ? { key: FLOOR_KEY, absent: true } : { key: FLOOR_KEY, modRevision: this.floorModRevision }],
        success: [...doomed.map((batch) => ({ type: 'delete' as const, key: batch.key })), { type: 'put', key: FLOOR_KEY, value: encoder.encode(JSON.stringify({ revision: floor })) }],
      });
      return result.succeeded ? doomed.length : 0;
    } catch (err) {
      this.hooks.onProblem(err, 'event journal: pruning failed; retrying later');
      return 0;
    } finally {
      this.pruning = false;
    }
  }

  /** Stops following the store and wakes every stream (they end); writes what is pending once. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    await this.flush().catch(() => undefined);
    this.stopped = true;
    clearTimeout(this.flushTimer);
    clearInterval(this.pruneTimer);
    this.abort.abort();
    this.loaded.reject(new Error('event journal stopped'));
    this.notify();
  }

  private notify(): void {
    for (const listener of [...this.listeners]) listener();
  }

  /** The index of the first batch whose revision is at least `revision` (binary search). */
  private firstBatchFrom(revision: number): number {
    let lo = 0;
    let hi = this.ring.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.ring[mid]?.revision ?? 0) < revision) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private parseBatch(kv: { key: string; value: Uint8Array; modRevision: number }): Batch | undefined {
    try {
      const events = decodeBatch(kv.value);
      // Stamped once here: every stream sends the very same message (encoded once, src/rpc/adapter.ts).
      events.forEach((event, index) => (event.resumeToken = encodeToken({ revision: kv.modRevision, index })));
      const first = events[0];
      if (!first) return undefined;
      const entries = events.map((event, index) => ({ event, position: { revision: kv.modRevision, index } }));
      return { key: kv.key, revision: kv.modRevision, node: nodeOfKey(kv.key), timeMs: first.time ? timestampMs(first.time) : 0, entries };
    } catch (err) {
      this.hooks.onProblem(err, `event journal: skipping an undecodable batch ${kv.key}`);
      return undefined;
    }
  }

  private setFloor(value: Uint8Array, modRevision: number): void {
    try {
      const parsed = JSON.parse(decoder.decode(value)) as { revision?: unknown };
      if (typeof parsed.revision === 'number') this.floor = Math.max(this.floor, parsed.revision);
    } catch (err) {
      this.hooks.onProblem(err, 'event journal: undecodable floor record');
    }
    this.floorModRevision = modRevision;
  }

  /**
   * The whole prefix, at start and after a watch had to be re-listed (compaction, outage).
   * Batches already in the ring keep their place; those written meanwhile are appended in
   * revision order, so streams see each event exactly once.
   */
  private reset(kvs: KeyValue[], revision: number): void {
    const known = new Map(this.ring.map((batch) => [batch.key, batch]));
    const ring: Batch[] = [];
    let seq = this.nextSeq;
    const fresh = kvs.filter((kv) => kv.key.startsWith(BATCHES)).sort((a, b) => a.modRevision - b.modRevision);
    for (const kv of fresh) {
      const kept = known.get(kv.key);
      if (kept) {
        ring.push(kept);
        continue;
      }
      const batch = this.parseBatch(kv);
      if (!batch) continue;
      seq += batch.entries.length;
      ring.push(batch);
    }
    const floor = kvs.find((kv) => kv.key === FLOOR_KEY);
    if (floor) this.setFloor(floor.value, floor.modRevision);
    this.ring = ring;
    this.nextSeq = seq;
    this.eventCount = ring.reduce((n, batch) => n + batch.entries.length, 0);
    this.head = Math.max(this.head, revision);
    if (!this.isLoaded) {
      this.isLoaded = true;
      this.loaded.resolve(undefined);
    }
    this.notify();
  }

  private apply(event: WatchEvent): void {
    this.head = Math.max(this.head, event.modRevision);
    if (event.key === FLOOR_KEY) {
      if (event.type === 'put') this.setFloor(event.value, event.modRevision);
      else this.floorModRevision = 0;
    } else if (event.key.startsWith(BATCHES)) {
      if (event.type === 'put') {
        const last = this.ring[this.ring.length - 1];
        const batch = (!last || last.revision < event.modRevision) && this.parseBatch(event);
        if (batch) {
          this.ring.push(batch);
          this.eventCount += batch.entries.length;
          this.nextSeq += batch.entries.length;
        }
      } else {
        const at = this.ring.findIndex((batch) => batch.key === event.key);
        const gone = at >= 0 ? this.ring.splice(at, 1)[0] : undefined;
        if (gone) this.eventCount -= gone.entries.length;
      }
    }
    this.notify();
  }
}
