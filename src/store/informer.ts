// List-then-watch with resync (Kubernetes' reflector): keeps a consumer's view of a
// prefix current through reconnects and compactions, with no missed state.
import { setTimeout as sleep } from 'node:timers/promises';
import { CompactedError, StoreUnavailableError } from './errors.js';
import type { KeyValue, Store, WatchEvent } from './store.js';

const PAGE = 1000;

/** Every key under `prefix`, read page by page at one revision so the result is consistent. */
export async function listAll(store: Store, prefix: string): Promise<{ kvs: KeyValue[]; revision: number }> {
  const first = await store.list(prefix, { limit: PAGE });
  const kvs = [...first.kvs];
  let more = first.more;
  while (more) {
    const page = await store.list(prefix, { limit: PAGE, startAfter: kvs[kvs.length - 1]?.key ?? '', revision: first.revision });
    kvs.push(...page.kvs);
    more = page.more;
  }
  return { kvs, revision: first.revision };
}

export interface InformerHandlers {
  /** The complete state of the prefix: at start, and again after every resync. */
  readonly onReset: (kvs: KeyValue[], revision: number) => void;
  readonly onEvent: (event: WatchEvent) => void;
  /** Problems the informer recovers from by itself (unavailable store, compaction). */
  readonly onRecover?: (err: Error) => void;
}

export interface InformerOptions {
  readonly signal: AbortSignal;
  readonly retryDelayMs?: number;
}

/** Runs until the signal aborts. Never throws for store trouble: it waits and resyncs. */
export async function runInformer(store: Store, prefix: string, handlers: InformerHandlers, options: InformerOptions): Promise<void> {
  const retryDelayMs = options.retryDelayMs ?? 1000;
  // A function, not a property read: the signal changes under TypeScript's narrowing.
  const stopped = () => options.signal.aborted;
  let lastRevision: number | undefined;
  while (!stopped()) {
    try {
      if (lastRevision === undefined) {
        const { kvs, revision } = await listAll(store, prefix);
        handlers.onReset(kvs, revision);
        lastRevision = revision;
      }
      for await (const event of store.watch(prefix, { fromRevision: lastRevision + 1, signal: options.signal })) {
        handlers.onEvent(event);
        lastRevision = event.modRevision;
      }
    } catch (err) {
      if (stopped()) return;
      if (err instanceof CompactedError) {
        lastRevision = undefined; // history is gone: the only safe recovery is a fresh list
        handlers.onRecover?.(err);
        continue;
      }
      if (!(err instanceof StoreUnavailableError)) throw err;
      handlers.onRecover?.(err);
      await sleep(retryDelayMs, undefined, { signal: options.signal }).catch(() => undefined);
    }
  }
}
