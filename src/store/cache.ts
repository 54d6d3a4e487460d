// An in-memory copy of one repository, kept current by list-then-watch. The hot path
// (API key lookup, role bindings) reads it with no store round trip per call.
import { runInformer } from './informer.js';
import type { Repository } from './repository.js';

interface Entry<T> {
  /** Undefined: deleted (a tombstone, so an older event cannot bring the record back). */
  readonly value: T | undefined;
  readonly modRevision: number;
}

export class RecordCache<T extends { readonly schema_version: number }> {
  private entries = new Map<string, Entry<T>>();
  private readyPromise: Promise<void> | undefined;
  private readonly listeners = new Set<(id: string, value: T | undefined) => void>();

  /** Called after every change (watch event, resync or local write). Returns an unsubscribe function. */
  subscribe(listener: (id: string, value: T | undefined) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(id: string, value: T | undefined): void {
    for (const listener of this.listeners) listener(id, value);
  }

  constructor(
    private readonly repository: Repository<T>,
    private readonly onProblem: (err: unknown) => void,
  ) {}

  /** Starts following the store; resolves once the first full listing is loaded. */
  start(signal: AbortSignal): Promise<void> {
    if (this.readyPromise) return this.readyPromise;
    this.readyPromise = new Promise<void>((resolve) => {
      runInformer(
        this.repository.store,
        this.repository.prefix,
        {
          onReset: (kvs) => {
            // A resync keeps the very object of every record it finds unchanged (same
            // revision) and tells listeners only about what changed: caches keyed by a
            // record (the API key verified per connection) stay valid across it.
            const previous = this.entries;
            const next = new Map<string, Entry<T>>();
            const changed: string[] = [];
            for (const kv of kvs) {
              const id = this.repository.idOfKey(kv.key);
              const known = previous.get(id);
              if (known?.value !== undefined && known.modRevision === kv.modRevision) {
                next.set(id, known);
                continue;
              }
              const value = this.decodeOrReport(kv.key, kv.value);
              if (!value) continue;
              next.set(id, { value, modRevision: kv.modRevision });
              changed.push(id);
            }
            this.entries = next;
            for (const id of changed) this.emit(id, next.get(id)?.value);
            for (const [id, entry] of previous) if (entry.value !== undefined && !next.has(id)) this.emit(id, undefined);
            resolve();
          },
          onEvent: (event) => {
            const id = this.repository.idOfKey(event.key);
            const current = this.entries.get(id);
            // A local write-through may already be newer than this event.
            if (current && current.modRevision > event.modRevision) return;
            const value = event.type === 'put' ? this.decodeOrReport(event.key, event.value) : undefined;
            this.entries.set(id, { value, modRevision: event.modRevision });
            this.emit(id, value);
          },
          onRecover: (err) => this.onProblem(err),
        },
        { signal },
      ).catch((err: unknown) => this.onProblem(err));
    });
    return this.readyPromise;
  }

  get(id: string): T | undefined {
    return this.entries.get(id)?.value;
  }

  values(): T[] {
    const values: T[] = [];
    for (const entry of this.entries.values()) if (entry.value !== undefined) values.push(entry.value);
    return values;
  }

  /** Applies this daemon's own write at once, before the watch delivers it. */
  remember(id: string, value: T | undefined, modRevision: number): void {
    const current = this.entries.get(id);
    if (current && current.modRevision > modRevision) return;
    this.entries.set(id, { value, modRevision });
    this.emit(id, value);
  }

  private decodeOrReport(key: string, bytes: Uint8Array): T | undefined {
    try {
      return this.repository.decode(key, bytes);
    } catch (err) {
      this.onProblem(err);
      return undefined;
    }
  }
}
