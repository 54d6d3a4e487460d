// The embedded backend on its own: revisions, transactions, listings at past revisions,
// watches, leases and compaction, plus what only it has (reopen, in-process lock).
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openEmbeddedStore } from '../../src/store/embedded/store.js';
import { rangeEnd } from '../../src/store/embedded/keys.js';
import { CompactedError, NotFoundError, StoreUnavailableError } from '../../src/store/errors.js';
import type { Store, WatchEvent } from '../../src/store/store.js';

const enc = (text: string) => new TextEncoder().encode(text);
const dec = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
const root = mkdtempSync(join(tmpdir(), 'debvisor-embedded-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

let counter = 0;
const freshDir = () => join(root, `s${++counter}`);

async function take(iterable: AsyncIterable<WatchEvent>, count: number): Promise<WatchEvent[]> {
  const events: WatchEvent[] = [];
  if (count === 0) return events;
  for await (const event of iterable) {
    events.push(event);
    if (events.length === count) break;
  }
  return events;
}

const show = (events: WatchEvent[]) => events.map((e) => `${e.modRevision} ${e.type} ${e.key} ${dec(e.value)}`);

describe('embedded store', () => {
  let dir: string;
  let store: Store;

  beforeEach(async () => {
    dir = freshDir();
    store = await openEmbeddedStore({ dir, leaseSweepIntervalMs: 50 });
  });
  afterEach(() => store.close());

  it('creates its directory 0700 and survives a reopen', async () => {
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    await store.put('/k', enc('v'));
    const lease = await store.grantLease(60);
    await store.put('/leased', enc('l'), { lease });
    await store.close();
    store = await openEmbeddedStore({ dir });
    expect(await store.revision()).toBe(2);
    expect(dec((await store.get('/k'))!.value)).toBe('v');
    expect((await store.get('/leased'))!.lease).toBe(lease);
    await store.revokeLease(lease);
    expect(await store.get('/leased')).toBeUndefined();
  });

  it('refuses a second open of the same directory in this process, and allows it after close', async () => {
    await expect(openEmbeddedStore({ dir })).rejects.toThrow(/data directory .* is in use by .*\(pid \d+\)/);
    await store.close();
    store = await openEmbeddedStore({ dir });
    await store.ping();
  });

  it('advances the revision once per write, never for a no-op', async () => {
    expect(await store.revision()).toBe(0);
    expect((await store.put('/a', enc('1'))).revision).toBe(1);
    expect(await store.delete('/missing')).toEqual({ deleted: 0, revision: 1 });
    expect(await store.delete('/nothing/', { prefix: true })).toEqual({ deleted: 0, revision: 1 });
    const failed = await store.txn({ compare: [{ key: '/a', absent: true }], success: [{ type: 'put', key: '/b', value: enc('') }] });
    expect(failed).toEqual({ succeeded: false, revision: 1 });
    await store.put('/p/1', enc('x'));
    await store.put('/p/2', enc('y'));
    expect(await store.delete('/p/', { prefix: true })).toEqual({ deleted: 2, revision: 4 });
    const recreated = await store.put('/p/1', enc('z'));
    expect(await store.get('/p/1')).toMatchObject({ createRevision: recreated.revision, modRevision: recreated.revision, version: 1 });
    await store.put('/p/1', enc('w'));
    expect(await store.get('/p/1')).toMatchObject({ createRevision: recreated.revision, version: 2 });
  });

  it('stores empty and binary values', async () => {
    await store.put('/empty', new Uint8Array(0));
    await store.put('/bin', new Uint8Array([0, 255, 1]));
    expect((await store.get('/empty'))!.value).toHaveLength(0);
    expect([...(await store.get('/bin'))!.value]).toEqual([0, 255, 1]);
  });

  it('treats modRevision 0 and createRevision 0 as absent, and refuses duplicate keys in a txn', async () => {
    expect((await store.txn({ compare: [{ key: '/c', modRevision: 0 }], success: [{ type: 'put', key: '/c', value: enc('1') }] })).succeeded).toBe(true);
    expect((await store.txn({ compare: [{ key: '/c', createRevision: 0 }], success: [] })).succeeded).toBe(false);
    expect((await store.txn({ compare: [{ key: '/nope', value: enc('') }], success: [] })).succeeded).toBe(false);
    const duplicate = { type: 'put' as const, key: '/d', value: enc('') };
    await expect(store.txn({ compare: [], success: [duplicate, duplicate] })).rejects.toThrow(/duplicate key/);
    await expect(store.txn({ compare: [], success: [duplicate, { type: 'delete', key: '/', prefix: true }] })).rejects.toThrow(/duplicate key/);
    expect(await store.revision()).toBe(1);
  });

  it('rolls a txn back entirely when an op fails', async () => {
    await expect(
      store.txn({ compare: [], success: [{ type: 'put', key: '/x', value: enc('1') }, { type: 'put', key: '/y', value: enc('2'), lease: '12345' }] }),
    ).rejects.toBeInstanceOf(NotFoundError);
    expect(await store.get('/x')).toBeUndefined();
    expect(await store.revision()).toBe(0);
    expect((await store.put('/x', enc('1'))).revision).toBe(1);
  });

  it('lists in byte order with pages, and reads past revisions from history', async () => {
    // U+FF5E sorts after U+1F600 in UTF-16 but before it in UTF-8 (byte) order.
    for (const key of ['/l/b', '/l/a', '/l/\u{1F600}', '/l/\uFF5E', '/lz', '/l']) await store.put(key, enc(key));
    const all = await store.list('/l/');
    expect(all.kvs.map((kv) => kv.key)).toEqual(['/l/a', '/l/b', '/l/\uFF5E', '/l/\u{1F600}']);
    expect(all).toMatchObject({ more: false, revision: 6 });
    const first = await store.list('/l/', { limit: 2 });
    expect(first.kvs.map((kv) => kv.key)).toEqual(['/l/a', '/l/b']);
    expect(first.more).toBe(true);

    await store.put('/l/a', enc('changed'));
    await store.delete('/l/b');
    await store.put('/l/c', enc('new'));
    const rest = await store.list('/l/', { startAfter: '/l/a', revision: first.revision });
    expect(rest.kvs.map((kv) => kv.key)).toEqual(['/l/b', '/l/\uFF5E', '/l/\u{1F600}']);
    expect(rest.revision).toBe(6);
    const old = await store.list('/l/', { revision: 6, limit: 1 });
    expect(old.kvs.map((kv) => [kv.key, dec(kv.value), kv.modRevision, kv.version])).toEqual([['/l/a', '/l/a', 2, 1]]);
    expect(old.more).toBe(true);
    expect((await store.list('', { revision: 6 })).kvs).toHaveLength(6);
    expect((await store.list('/l/', { startAfter: '/l/\u{1F600}' })).kvs).toEqual([]);
    await expect(store.list('/l/', { revision: 100 })).rejects.toThrow(/future/);

    await store.compact(8);
    await expect(store.list('/l/', { revision: 7 })).rejects.toBeInstanceOf(CompactedError);
    const atCompaction = await store.list('/l/', { revision: 8 });
    expect(atCompaction.kvs.map((kv) => `${kv.key}=${dec(kv.value)}`)).toEqual(['/l/a=changed', '/l/\uFF5E=/l/\uFF5E', '/l/\u{1F600}=/l/\u{1F600}']);
  });

  it('computes prefix range ends in code-point order', () => {
    expect(rangeEnd('')).toBeUndefined();
    expect(rangeEnd('/a/')).toBe('/a0');
    expect(rangeEnd('x\u{10FFFF}')).toBe('y');
    expect(rangeEnd('\uD7FF')).toBe('\uE000');
  });

  it('replays history, then follows live events, with no gap or duplicate', async () => {
    await store.put('/w/a', enc('1'));
    await store.put('/other', enc('-'));
    await store.txn({ compare: [], success: [{ type: 'put', key: '/w/b', value: enc('2') }, { type: 'delete', key: '/w/a' }] });
    const controller = new AbortController();
    const iterator = store.watch('/w/', { fromRevision: 1, signal: controller.signal })[Symbol.asyncIterator]();
    const first = await iterator.next(); // subscribed, replay under way
    await store.put('/w/c', enc('3'));
    const rest: WatchEvent[] = [];
    for (let i = 0; i < 3; i++) rest.push((await iterator.next()).value as WatchEvent);
    expect(show([first.value as WatchEvent, ...rest])).toEqual(['1 put /w/a 1', '3 put /w/b 2', '3 delete /w/a ', '4 put /w/c 3']);
    const pending = iterator.next();
    controller.abort();
    expect((await pending).done).toBe(true);
  });

  it('replays a long history across chunks while writes continue', async () => {
    for (let i = 0; i < 1500; i += 100) {
      await store.txn({ compare: [], success: Array.from({ length: 100 }, (_, j) => ({ type: 'put' as const, key: `/h/${i + j}`, value: enc(String(i + j)) })) });
    }
    const watching = take(store.watch('/h/', { fromRevision: 1 }), 1600);
    for (let i = 1500; i < 1600; i++) await store.put(`/h/${i}`, enc(String(i)));
    const events = await watching;
    expect(events.map((e) => Number(dec(e.value)))).toEqual(Array.from({ length: 1600 }, (_, i) => i));
  });

  it('delivers nothing once the signal aborts, even events already buffered', async () => {
    const controller = new AbortController();
    const iterator = store.watch('/', { fromRevision: 1, signal: controller.signal })[Symbol.asyncIterator]();
    const pending = iterator.next();
    await sleep(10);
    controller.abort();
    await store.put('/late', enc('x')); // committed before the watch gets to run again
    expect((await pending).done).toBe(true);
  });

  it('watches from a future revision and from 0 (now)', async () => {
    const future = take(store.watch('/f/', { fromRevision: 3 }), 1);
    const now = take(store.watch('/f/', { fromRevision: 0 }), 2);
    await store.put('/f/1', enc('1'));
    await store.put('/f/2', enc('2'));
    await store.put('/f/3', enc('3'));
    expect(show(await future)).toEqual(['3 put /f/3 3']);
    expect(show(await now)).toEqual(['1 put /f/1 1', '2 put /f/2 2']);
  });

  it('ends watches on close, and refuses every call after it', async () => {
    const iterator = store.watch('/', { fromRevision: 1 })[Symbol.asyncIterator]();
    const pending = iterator.next();
    await sleep(10);
    await store.close();
    expect((await pending).done).toBe(true);
    await expect(store.get('/a')).rejects.toBeInstanceOf(StoreUnavailableError);
    await expect(store.ping()).rejects.toBeInstanceOf(StoreUnavailableError);
    await expect(take(store.watch('/', { fromRevision: 1 }), 1)).rejects.toBeInstanceOf(StoreUnavailableError);
    await store.close(); // idempotent
    store = await openEmbeddedStore({ dir });
  });

  it('fails a watch from before the compacted revision', async () => {
    for (let i = 1; i <= 5; i++) await store.put('/c/k', enc(String(i)));
    await store.compact(4);
    await store.compact(2); // older than the last compaction: nothing to do
    await expect(take(store.watch('/c/', { fromRevision: 3 }), 1)).rejects.toEqual(new CompactedError(4));
    expect(show(await take(store.watch('/c/', { fromRevision: 4 }), 2))).toEqual(['4 put /c/k 4', '5 put /c/k 5']);
    await expect(store.compact(99)).rejects.toThrow(/future/);
  });

  it('compacts automatically, keeping the configured number of revisions', async () => {
    await store.close();
    store = await openEmbeddedStore({ dir, compactionIntervalMs: 20, retainRevisions: 5 });
    for (let i = 1; i <= 20; i++) await store.put(`/auto/${i % 3}`, enc(String(i)));
    await sleep(100);
    await expect(take(store.watch('/', { fromRevision: 14 }), 1)).rejects.toBeInstanceOf(CompactedError);
    expect((await take(store.watch('/', { fromRevision: 15 }), 6)).map((e) => e.modRevision)).toEqual([15, 16, 17, 18, 19, 20]);
    expect((await store.list('/auto/')).kvs.map((kv) => dec(kv.value))).toEqual(['18', '19', '20']);
  });

  it('expires leases with delete events, and revokes at once', async () => {
    const short = await store.grantLease(0.2);
    const long = await store.grantLease(60);
    await store.put('/lease/a', enc('a'), { lease: short });
    await store.put('/lease/b', enc('b'), { lease: short });
    await store.put('/lease/c', enc('c'), { lease: long });
    await store.put('/lease/d', enc('d'), { lease: long });
    await expect(store.put('/lease/x', enc('x'), { lease: '42' })).rejects.toBeInstanceOf(NotFoundError);
    expect(await store.keepAliveOnce(long)).toBe(60);
    const events = take(store.watch('/lease/', { fromRevision: 5 }), 4);
    await sleep(400);
    expect((await store.list('/lease/')).kvs.map((kv) => kv.key)).toEqual(['/lease/c', '/lease/d']);
    await expect(store.keepAliveOnce(short)).rejects.toBeInstanceOf(NotFoundError);
    await expect(store.put('/lease/e', enc('e'), { lease: short })).rejects.toBeInstanceOf(NotFoundError);
    await store.revokeLease(long);
    await store.revokeLease(long); // unknown: no-op
    expect(show(await events)).toEqual(['5 delete /lease/a ', '5 delete /lease/b ', '6 delete /lease/c ', '6 delete /lease/d ']);
    expect(await store.revision()).toBe(6);
    await expect(store.keepAliveOnce('7')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('detaches a key from its lease when it is put without one', async () => {
    const lease = await store.grantLease(60);
    await store.put('/det', enc('1'), { lease });
    await store.put('/det', enc('2'));
    await store.revokeLease(lease);
    expect((await store.get('/det'))!.lease).toBeUndefined();
  });
});
