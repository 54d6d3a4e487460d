// A resync (a fresh listing after the watch fell behind a compaction) must keep the very
// object of every unchanged record and tell listeners only about what changed: caches
// keyed by a record (the API key verified per connection) would otherwise all miss.
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { RecordCache } from '../../src/store/cache.js';
import { CompactedError } from '../../src/store/errors.js';
import { Repository } from '../../src/store/repository.js';
import type { KeyValue, ListResult, Store, WatchEvent, WatchOptions } from '../../src/store/store.js';

const schema = z.object({ schema_version: z.literal(1), name: z.string() });
type Item = z.infer<typeof schema>;
const PREFIX = '/items/';
const encode = (name: string) => new TextEncoder().encode(JSON.stringify({ schema_version: 1, name }));
const kv = (id: string, name: string, modRevision: number): KeyValue => ({ key: PREFIX + id, value: encode(name), createRevision: 1, modRevision, version: 1, lease: undefined });

/** Lists whatever `listing` holds; its first watch reports a compaction, later ones wait for the signal. */
class ResyncingStore {
  listing: KeyValue[] = [];
  lists = 0;
  private watches = 0;
  list(): Promise<ListResult> {
    this.lists++;
    return Promise.resolve({ kvs: this.listing, more: false, revision: 10 * this.lists });
  }
  watch(_prefix: string, options: WatchOptions): AsyncIterable<WatchEvent> {
    const first = this.watches++ === 0;
    return {
      [Symbol.asyncIterator]: () => ({
        next: async (): Promise<IteratorResult<WatchEvent>> => {
          if (first) {
            // Let the test change the listing before the resync happens.
            await new Promise((resolve) => setTimeout(resolve, 20));
            throw new CompactedError(5);
          }
          await new Promise((resolve) => options.signal?.addEventListener('abort', resolve, { once: true }));
          return { done: true, value: undefined };
        },
      }),
    };
  }
}

describe('RecordCache', () => {
  it('a resync keeps unchanged records (same objects) and reports only changes', async () => {
    const store = new ResyncingStore();
    store.listing = [kv('a', 'alpha', 2), kv('b', 'beta', 3), kv('c', 'gamma', 4)];
    const cache = new RecordCache<Item>(new Repository(store as unknown as Store, PREFIX, schema), () => undefined);
    const stop = new AbortController();
    await cache.start(stop.signal);
    const before = { a: cache.get('a'), b: cache.get('b') };
    const seen: Array<[string, string | undefined]> = [];
    cache.subscribe((id, value) => seen.push([id, value?.name]));
    // b changes, c goes away, d appears; a is untouched.
    store.listing = [kv('a', 'alpha', 2), kv('b', 'beta 2', 7), kv('d', 'delta', 8)];
    await expect.poll(() => store.lists).toBe(2);
    await expect.poll(() => seen.length).toBe(3);
    expect(seen.sort()).toEqual([
      ['b', 'beta 2'],
      ['c', undefined],
      ['d', 'delta'],
    ]);
    expect(cache.get('a')).toBe(before.a);
    expect(cache.get('b')).not.toBe(before.b);
    expect(cache.get('c')).toBeUndefined();
    stop.abort();
  });
});
