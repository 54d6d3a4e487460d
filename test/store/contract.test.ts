// One contract, two backends: everything the daemon relies on from its store.
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CompactedError, NotFoundError, StoreUnavailableError } from '../../src/store/errors.js';
import { runInformer } from '../../src/store/informer.js';
import type { KeyValue, Store, WatchEvent, WatchOptions } from '../../src/store/store.js';
import { HARNESSES, type StoreHarness } from '../support/store-harness.js';

const enc = (text: string) => new TextEncoder().encode(text);
const dec = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

/** Collects `count` events from a watch, or fails after `timeoutMs`. */
async function collect(store: Store, prefix: string, fromRevision: number, count: number, timeoutMs = 10_000): Promise<WatchEvent[]> {
  const signal = AbortSignal.timeout(timeoutMs);
  const events: WatchEvent[] = [];
  for await (const event of store.watch(prefix, { fromRevision, signal })) {
    events.push(event);
    if (events.length === count) break;
  }
  return events;
}

/** A store whose watches can be cut, as if the network dropped, while other calls work. */
class FlakyLink {
  private down = false;
  private readonly live = new Set<AbortController>();
  readonly store: Store;

  constructor(target: Store) {
    const watch = (prefix: string, options: WatchOptions): AsyncIterable<WatchEvent> => this.watch(target, prefix, options);
    this.store = new Proxy(target, {
      get: (object, property, receiver) => (property === 'watch' ? watch : Reflect.get(object, property, receiver) as unknown),
    });
  }

  cut(): void {
    this.down = true;
    for (const controller of this.live) controller.abort();
  }

  restore(): void {
    this.down = false;
  }

  private async *watch(target: Store, prefix: string, options: WatchOptions): AsyncIterable<WatchEvent> {
    if (this.down) throw new StoreUnavailableError('link is down');
    const controller = new AbortController();
    this.live.add(controller);
    const signal = options.signal ? AbortSignal.any([options.signal, controller.signal]) : controller.signal;
    try {
      yield* target.watch(prefix, { fromRevision: options.fromRevision, signal });
    } finally {
      this.live.delete(controller);
    }
    if (controller.signal.aborted) throw new StoreUnavailableError('link went down');
  }
}

async function eventually(check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await sleep(50);
  }
}

describe.each(HARNESSES)('store contract: %s', (_name, makeHarness) => {
  let harness: StoreHarness;
  let store: Store;

  beforeAll(async () => {
    harness = await makeHarness();
    store = await harness.open();
  }, 60_000);

  afterAll(async () => {
    await store.close();
    await harness.cleanup();
  });

  it('puts, gets and deletes with etcd revision semantics', async () => {
    const start = await store.revision();
    const first = await store.put('/debvisor/t/crud/a', enc('1'));
    expect(first.revision).toBe(start + 1);
    const second = await store.put('/debvisor/t/crud/a', enc('2'));
    expect(second.revision).toBe(start + 2);
    const kv = await store.get('/debvisor/t/crud/a');
    expect(kv && dec(kv.value)).toBe('2');
    expect(kv).toMatchObject({ createRevision: first.revision, modRevision: second.revision, version: 2, lease: undefined });
    expect(await store.get('/debvisor/t/crud/missing')).toBeUndefined();

    await store.put('/debvisor/t/crud/b', enc('x'));
    await store.put('/debvisor/t/crudx', enc('outside'));
    const removed = await store.delete('/debvisor/t/crud/', { prefix: true });
    expect(removed.deleted).toBe(2);
    expect(await store.get('/debvisor/t/crud/a')).toBeUndefined();
    expect(await store.get('/debvisor/t/crudx')).toBeDefined();
    const none = await store.delete('/debvisor/t/crud/a');
    expect(none.deleted).toBe(0);

    const recreated = await store.put('/debvisor/t/crud/a', enc('3'));
    expect(await store.get('/debvisor/t/crud/a')).toMatchObject({ createRevision: recreated.revision, version: 1 });
  });

  it('runs transactions atomically on every kind of compare', async () => {
    const key = '/debvisor/t/txn/k';
    const created = await store.txn({ compare: [{ key, absent: true }], success: [{ type: 'put', key, value: enc('v1') }] });
    expect(created.succeeded).toBe(true);
    const again = await store.txn({ compare: [{ key, absent: true }], success: [{ type: 'put', key, value: enc('no') }], failure: [{ type: 'put', key: `${key}-lost`, value: enc('f') }] });
    expect(again.succeeded).toBe(false);
    expect(dec((await store.get(`${key}-lost`))!.value)).toBe('f');

    const kv = (await store.get(key))!;
    const both = await store.txn({
      compare: [{ key, modRevision: kv.modRevision }, { key, createRevision: kv.createRevision }, { key, value: enc('v1') }],
      success: [
        { type: 'put', key, value: enc('v2') },
        { type: 'put', key: `${key}-2`, value: enc('w') },
        { type: 'delete', key: `${key}-lost` },
      ],
    });
    expect(both.succeeded).toBe(true);
    // One transaction, one revision, shared by all its writes.
    expect((await store.get(key))!.modRevision).toBe(both.revision);
    expect((await store.get(`${key}-2`))!.modRevision).toBe(both.revision);
    expect(await store.get(`${key}-lost`)).toBeUndefined();

    const stale = await store.txn({ compare: [{ key, modRevision: kv.modRevision }], success: [{ type: 'put', key, value: enc('stale') }] });
    expect(stale.succeeded).toBe(false);
    expect(dec((await store.get(key))!.value)).toBe('v2');
  });

  it('pages through a prefix of 10,000 keys in order, at one revision', async () => {
    const prefix = '/debvisor/t/page/';
    const keys = Array.from({ length: 10_000 }, (_, i) => `${prefix}${String(i).padStart(5, '0')}`);
    for (let i = 0; i < keys.length; i += 100) {
      await store.txn({ compare: [], success: keys.slice(i, i + 100).map((key) => ({ type: 'put' as const, key, value: enc(key) })) });
    }
    const seen: KeyValue[] = [];
    let page = await store.list(prefix, { limit: 700 });
    const revision = page.revision;
    seen.push(...page.kvs);
    await store.put(`${prefix}99999-late`, enc('after the listing started'));
    while (page.more) {
      page = await store.list(prefix, { limit: 700, startAfter: seen[seen.length - 1]!.key, revision });
      seen.push(...page.kvs);
    }
    expect(seen.map((kv) => kv.key)).toEqual(keys);
    expect(dec(seen[1234]!.value)).toBe(keys[1234]);
    const unpaged = await store.list(prefix);
    expect(unpaged.kvs).toHaveLength(10_001);
    expect(unpaged.more).toBe(false);
    await store.delete(prefix, { prefix: true });
  }, 120_000);

  it('keeps a counter exact under a compare-and-swap race of 50 writers × 200 rounds', async () => {
    const key = '/debvisor/t/cas/counter';
    await store.put(key, enc('0'));
    let successes = 0;
    const writer = async () => {
      for (let round = 0; round < 200; round++) {
        const kv = (await store.get(key))!;
        const next = String(Number(dec(kv.value)) + 1);
        const result = await store.txn({ compare: [{ key, modRevision: kv.modRevision }], success: [{ type: 'put', key, value: enc(next) }] });
        if (result.succeeded) successes++;
      }
    };
    await Promise.all(Array.from({ length: 50 }, writer));
    expect(successes).toBeGreaterThan(0);
    expect(Number(dec((await store.get(key))!.value))).toBe(successes);
  }, 180_000);

  it('watches every event in revision order, from a given revision', async () => {
    const prefix = '/debvisor/t/watch1/';
    const from = (await store.revision()) + 1;
    const pending = collect(store, prefix, from, 5);
    await store.put(`${prefix}a`, enc('1'));
    await store.put('/debvisor/t/other', enc('not watched'));
    await store.put(`${prefix}b`, enc('2'));
    await store.txn({ compare: [], success: [{ type: 'put', key: `${prefix}c`, value: enc('3') }, { type: 'delete', key: `${prefix}a` }] });
    await store.put(`${prefix}b`, enc('4'));
    const events = await pending;
    expect(events.map((e) => `${e.type} ${e.key.slice(prefix.length)} ${dec(e.value)}`)).toEqual(['put a 1', 'put b 2', 'put c 3', 'delete a ', 'put b 4']);
    const revisions = events.map((e) => e.modRevision);
    expect([...revisions].sort((x, y) => x - y)).toEqual(revisions);
    expect(revisions[2]).toBe(revisions[3]); // one transaction
    // Replaying from the same revision later yields the same history.
    expect((await collect(store, prefix, from, 5)).map((e) => e.modRevision)).toEqual(revisions);
  });

  it('resumes a watch after the client reconnects', async () => {
    const prefix = '/debvisor/t/watch2/';
    const first = await store.put(`${prefix}1`, enc('a'));
    store = await harness.reconnect(store);
    await store.put(`${prefix}2`, enc('b'));
    const events = await collect(store, prefix, first.revision, 2);
    expect(events.map((e) => e.key)).toEqual([`${prefix}1`, `${prefix}2`]);
  });

  it('resumes a watch from a revision after the backend restarts', async () => {
    const prefix = '/debvisor/t/watch3/';
    const first = await store.put(`${prefix}1`, enc('a'));
    store = await harness.restart(store);
    await eventually(async () => (await store.put(`${prefix}2`, enc('b')).then(() => true, () => false)), 15_000);
    const events = await collect(store, prefix, first.revision, 2);
    expect(events.map((e) => e.key)).toEqual([`${prefix}1`, `${prefix}2`]);
    expect(dec((await store.get(`${prefix}1`))!.value)).toBe('a');
  }, 60_000);

  it('reports compaction as CompactedError, and list-then-watch recovers with no missed state', async () => {
    const prefix = '/debvisor/t/compact/';
    const old = await store.put(`${prefix}a`, enc('1'));
    await store.put(`${prefix}b`, enc('2'));
    const latest = await store.put(`${prefix}a`, enc('3'));
    await store.compact(latest.revision);
    await expect(collect(store, prefix, old.revision, 1, 5000)).rejects.toBeInstanceOf(CompactedError);

    // An informer is cut off, misses writes and a compaction, and must resync by re-listing.
    const link = new FlakyLink(store);
    const view = new Map<string, string>();
    const controller = new AbortController();
    let resets = 0;
    const informer = runInformer(
      link.store,
      prefix,
      {
        onReset: (kvs) => {
          resets++;
          view.clear();
          for (const kv of kvs) view.set(kv.key, dec(kv.value));
        },
        onEvent: (event) => (event.type === 'put' ? view.set(event.key, dec(event.value)) : view.delete(event.key)),
      },
      { signal: controller.signal, retryDelayMs: 200 },
    );
    await eventually(() => Promise.resolve(resets === 1), 5000);
    await store.put(`${prefix}c`, enc('4'));
    await eventually(() => Promise.resolve(view.get(`${prefix}c`) === '4'), 5000);

    link.cut();
    await store.delete(`${prefix}b`);
    const missed = await store.put(`${prefix}d`, enc('5'));
    await store.compact(missed.revision);
    link.restore();

    await eventually(() => Promise.resolve(resets === 2), 10_000);
    await store.put(`${prefix}e`, enc('6'));
    await eventually(() => Promise.resolve(view.get(`${prefix}e`) === '6'), 10_000);
    expect(Object.fromEntries(view)).toEqual({ [`${prefix}a`]: '3', [`${prefix}c`]: '4', [`${prefix}d`]: '5', [`${prefix}e`]: '6' });
    controller.abort();
    await informer;
  }, 30_000);

  it("deletes a lease's keys when it expires, and at once when revoked", async () => {
    const expiring = await store.grantLease(1);
    await store.put('/debvisor/t/lease/expiring', enc('x'), { lease: expiring });
    expect((await store.get('/debvisor/t/lease/expiring'))!.lease).toBe(expiring);
    expect(await store.keepAliveOnce(expiring)).toBeGreaterThan(0);
    await eventually(async () => (await store.get('/debvisor/t/lease/expiring')) === undefined, 6000);
    await expect(store.keepAliveOnce(expiring)).rejects.toBeInstanceOf(NotFoundError);

    const revoked = await store.grantLease(60);
    await store.put('/debvisor/t/lease/revoked/1', enc('x'), { lease: revoked });
    await store.put('/debvisor/t/lease/revoked/2', enc('y'), { lease: revoked });
    await store.revokeLease(revoked);
    expect((await store.list('/debvisor/t/lease/revoked/')).kvs).toEqual([]);
  }, 20_000);
});
