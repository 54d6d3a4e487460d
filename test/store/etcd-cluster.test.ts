// etcd backend against a three-member cluster: any member serves any client, a
// store given every endpoint rides out one member down (calls and watches), and a
// cluster without quorum fails fast with StoreUnavailableError.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openEtcdStore } from '../../src/store/etcd.js';
import { StoreUnavailableError } from '../../src/store/errors.js';
import type { Store, WatchEvent } from '../../src/store/store.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (b: Uint8Array): string => new TextDecoder().decode(b);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const REQUEST_TIMEOUT_MS = 1_500;

describe('etcd store on a three-member cluster', () => {
  let etcd: EtcdCluster;
  const stores: Store[] = [];
  const open = async (endpoints: string[]): Promise<Store> => {
    const s = await openEtcdStore({ endpoints, requestTimeoutMs: REQUEST_TIMEOUT_MS });
    stores.push(s);
    return s;
  };

  beforeAll(async () => {
    etcd = await startEtcd({ members: 3 });
  });
  afterAll(async () => {
    for (const s of stores) await s.close();
    await etcd.stop();
  });

  it('a write through one member is read through another', async () => {
    expect(etcd.endpoints).toHaveLength(3);
    const a = await open([etcd.endpoints[0]!]);
    const c = await open([etcd.endpoints[2]!]);
    const { revision } = await a.put('/cl/k', enc('v'));
    const kv = await c.get('/cl/k');
    expect(kv && dec(kv.value)).toBe('v');
    expect(kv?.modRevision).toBe(revision);
    expect(await c.revision()).toBeGreaterThanOrEqual(revision);
  });

  it('with every endpoint, calls and a watch ride out one member down', async () => {
    const all = await open(etcd.endpoints);
    const writer = await open([etcd.endpoints[1]!]);
    const from = (await all.revision()) + 1;
    const controller = new AbortController();
    const events: WatchEvent[] = [];
    let watchError: unknown;
    const watching = (async () => {
      try {
        for await (const e of all.watch('/ha/', { fromRevision: from, signal: controller.signal })) events.push(e);
      } catch (e) {
        watchError = e;
      }
    })();
    const keys: string[] = [];
    for (let i = 0; i < 5; i++) {
      keys.push(`/ha/a${i}`);
      await writer.put(keys.at(-1)!, enc('x'));
    }
    await etcd.stopMember(0);
    try {
      // Reads and writes through the multi-endpoint store keep working (another member answers).
      for (let i = 0; i < 20; i++) {
        keys.push(`/ha/b${i}`);
        await all.put(keys.at(-1)!, enc('y'));
        expect(await all.get(keys.at(-1)!)).toBeDefined();
      }
      for (let i = 0; i < 5; i++) {
        keys.push(`/ha/c${i}`);
        await writer.put(keys.at(-1)!, enc('z'));
      }
      const deadline = Date.now() + 10_000;
      while (events.length < keys.length && Date.now() < deadline && watchError === undefined) await sleep(20);
      expect(watchError).toBeUndefined();
      expect(events.map((e) => e.key)).toEqual(keys);
    } finally {
      await etcd.startMember(0);
    }
    controller.abort();
    await watching;
  });

  it('without quorum every call fails fast with StoreUnavailableError; it recovers with quorum', async () => {
    const s = await open([etcd.endpoints[2]!]);
    await s.put('/q/k', enc('1'));
    await etcd.stopMember(0);
    await etcd.stopMember(1);
    try {
      for (const [what, call] of [
        ['get', () => s.get('/q/k')],
        ['put', () => s.put('/q/k', enc('2'))],
        ['txn', () => s.txn({ compare: [], success: [{ type: 'delete', key: '/q/k' }] })],
        ['ping', () => s.ping()],
      ] as const) {
        const t0 = performance.now();
        await expect(call(), what).rejects.toBeInstanceOf(StoreUnavailableError);
        expect(performance.now() - t0, what).toBeLessThan(REQUEST_TIMEOUT_MS + 1_000);
      }
    } finally {
      await Promise.all([etcd.startMember(0), etcd.startMember(1)]);
    }
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        await s.ping();
        break;
      } catch (error) {
        if (Date.now() > deadline) throw error;
        await sleep(100);
      }
    }
    expect(dec((await s.get('/q/k'))!.value)).toBe('1');
  });
});
