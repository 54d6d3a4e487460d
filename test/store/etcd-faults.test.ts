// etcd backend under faults: a stopped member (every call fails fast with
// StoreUnavailableError, the same Store recovers), member restarts under a live
// watch, a frozen process and a half-dead connection (the watch watchdog).
import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openEtcdStore } from '../../src/store/etcd/store.js';
import { StoreUnavailableError } from '../../src/store/errors.js';
import type { Store, WatchEvent } from '../../src/store/store.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const REQUEST_TIMEOUT_MS = 1_500;

/** Times a call that must fail with StoreUnavailableError; returns the elapsed ms. */
async function failsUnavailable(what: string, call: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  const error = await call().then(
    () => new Error(`${what} unexpectedly succeeded`),
    (e: unknown) => e,
  );
  const elapsed = performance.now() - t0;
  expect(error, what).toBeInstanceOf(StoreUnavailableError);
  expect(elapsed, `${what} took ${elapsed.toFixed(0)} ms`).toBeLessThan(REQUEST_TIMEOUT_MS + 1_000);
  return elapsed;
}

async function eventually<T>(call: () => Promise<T>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await call();
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await sleep(100);
    }
  }
}

/** Consumes a watch in the background, recording events and the error that ended it. */
function follow(store: Store, prefix: string, fromRevision: number) {
  const controller = new AbortController();
  const events: WatchEvent[] = [];
  let error: unknown;
  const done = (async () => {
    try {
      for await (const e of store.watch(prefix, { fromRevision, signal: controller.signal })) events.push(e);
    } catch (e) {
      error = e;
    }
  })();
  return {
    events,
    error: () => error,
    async waitFor(count: number, timeoutMs = 10_000): Promise<void> {
      const deadline = Date.now() + timeoutMs;
      while (events.length < count) {
        if (error !== undefined) throw error instanceof Error ? error : new Error('watch failed', { cause: error });
        if (Date.now() > deadline) throw new Error(`watch got ${events.length}/${count} events`);
        await sleep(10);
      }
    },
    async stop(): Promise<void> {
      controller.abort();
      await done;
    },
    done,
  };
}

/** Revisions must be consecutive writes of ours: no gap, no duplicate. */
function expectKeys(events: WatchEvent[], keys: string[]): void {
  expect(events.map((e) => e.key)).toEqual(keys);
  for (let i = 1; i < events.length; i++) expect(events[i]!.modRevision).toBeGreaterThan(events[i - 1]!.modRevision);
}

describe('etcd store: member stopped and restarted', () => {
  let etcd: EtcdCluster;
  let store: Store;

  beforeAll(async () => {
    etcd = await startEtcd();
    store = await openEtcdStore({ endpoints: etcd.endpoints, requestTimeoutMs: REQUEST_TIMEOUT_MS });
  });
  afterAll(async () => {
    await store.close();
    await etcd.stop();
  });

  it('every call fails fast with StoreUnavailableError, then the same store recovers', async () => {
    const lease = await store.grantLease(60);
    const from = (await store.put('/down/a', enc('1'))).revision;
    const live = follow(store, '/down/', from);
    await live.waitFor(1);

    await etcd.stopMember(0);
    const stoppedAt = performance.now();
    await failsUnavailable('get', () => store.get('/down/a'));
    await failsUnavailable('list', () => store.list('/down/'));
    await failsUnavailable('put', () => store.put('/down/b', enc('2')));
    await failsUnavailable('delete', () => store.delete('/down/a'));
    await failsUnavailable('txn', () => store.txn({ compare: [{ key: '/down/a', absent: true }], success: [] }));
    await failsUnavailable('grantLease', () => store.grantLease(10));
    await failsUnavailable('keepAliveOnce', () => store.keepAliveOnce(lease));
    await failsUnavailable('revokeLease', () => store.revokeLease(lease));
    await failsUnavailable('compact', () => store.compact(from));
    await failsUnavailable('revision', () => store.revision());
    await failsUnavailable('ping', () => store.ping());
    await failsUnavailable('new watch', async () => {
      for await (const e of store.watch('/down/', { fromRevision: from })) return e;
      return undefined;
    });
    // The watch that was live when etcd went away gives up within the request timeout too.
    await live.done;
    expect(live.error()).toBeInstanceOf(StoreUnavailableError);
    expect(performance.now() - stoppedAt).toBeLessThan(15 * (REQUEST_TIMEOUT_MS + 1_000));

    await etcd.startMember(0);
    const t0 = performance.now();
    await eventually(() => store.ping());
    console.log(`etcd store recovered ${(performance.now() - t0).toFixed(0)} ms after the member was healthy`);
    expect((await store.get('/down/a'))?.value).toEqual(enc('1'));
    await store.put('/down/b', enc('2'));
    expect(await store.keepAliveOnce(lease)).toBeGreaterThan(0);
    const events: WatchEvent[] = [];
    for await (const e of store.watch('/down/', { fromRevision: from })) {
      events.push(e);
      if (events.length === 2) break;
    }
    expectKeys(events, ['/down/a', '/down/b']);
  });

  it('openEtcdStore fails with StoreUnavailableError within the dial timeout when etcd is down', async () => {
    await etcd.stopMember(0);
    try {
      const t0 = performance.now();
      await expect(openEtcdStore({ endpoints: etcd.endpoints, dialTimeoutMs: 500 })).rejects.toBeInstanceOf(StoreUnavailableError);
      expect(performance.now() - t0).toBeLessThan(1_500);
    } finally {
      await etcd.startMember(0);
    }
  });

  it('a watch survives a member restart with no missed or repeated event', async () => {
    const watchStore = await openEtcdStore({ endpoints: etcd.endpoints, requestTimeoutMs: 5_000 });
    try {
      const from = (await store.revision()) + 1;
      const w = follow(watchStore, '/restart/', from);
      const keys: string[] = [];
      for (let i = 0; i < 10; i++) keys.push(`/restart/a${i}`);
      for (const k of keys) await store.put(k, enc(k));
      await w.waitFor(5); // some delivered, the rest maybe in flight
      await etcd.restartMember(0);
      // Writes right after the restart, possibly before the watch is back.
      for (let i = 0; i < 10; i++) {
        const k = `/restart/b${i}`;
        await eventually(() => store.put(k, enc(k)));
        keys.push(k);
      }
      await w.waitFor(keys.length);
      await sleep(200); // nothing extra (no replayed duplicates) may follow
      expectKeys(w.events, keys);
      expect(w.error()).toBeUndefined();
      await w.stop();
    } finally {
      await watchStore.close();
    }
  });

  it('a watch rides out a frozen (SIGSTOPped) member longer than the watchdog timeout', async () => {
    const watchStore = await openEtcdStore({ endpoints: etcd.endpoints, requestTimeoutMs: 5_000, watchProgressTimeoutMs: 500 });
    try {
      const from = (await store.revision()) + 1;
      const w = follow(watchStore, '/frozen/', from);
      await store.put('/frozen/1', enc('1'));
      await w.waitFor(1);
      await etcd.pauseMember(0);
      await sleep(1_500);
      await etcd.resumeMember(0);
      await eventually(() => store.put('/frozen/2', enc('2')));
      await store.put('/frozen/3', enc('3'));
      await w.waitFor(3);
      expectKeys(w.events, ['/frozen/1', '/frozen/2', '/frozen/3']);
      expect(w.error()).toBeUndefined();
      await w.stop();
    } finally {
      await etcd.resumeMember(0).catch(() => undefined);
      await watchStore.close();
    }
  });
});

/** A TCP relay whose existing connections can be frozen (kept open, nothing forwarded). */
class FreezingProxy {
  private readonly server: Server;
  private readonly pairs = new Set<[Socket, Socket]>();
  port = 0;

  constructor(private readonly target: { host: string; port: number }) {
    this.server = createServer((client) => {
      const upstream = connect(this.target.port, this.target.host);
      const pair: [Socket, Socket] = [client, upstream];
      this.pairs.add(pair);
      client.pipe(upstream);
      upstream.pipe(client);
      const drop = (): void => {
        this.pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on('error', drop).on('close', drop);
      upstream.on('error', drop).on('close', drop);
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    const address = this.server.address();
    this.port = typeof address === 'object' && address ? address.port : 0;
  }

  /** Existing connections stay open but go silent; new ones still work. Returns how many froze. */
  freezeExisting(): number {
    for (const [client, upstream] of this.pairs) {
      client.unpipe(upstream);
      upstream.unpipe(client);
      client.pause();
      upstream.pause();
    }
    const n = this.pairs.size;
    this.pairs.clear();
    return n;
  }

  async close(): Promise<void> {
    this.server.close();
    await new Promise((r) => setImmediate(r));
  }
}

describe('etcd store: watch watchdog on a half-dead connection', () => {
  let etcd: EtcdCluster;
  let direct: Store;
  let proxy: FreezingProxy;
  const stores: Store[] = [];

  beforeAll(async () => {
    etcd = await startEtcd();
    direct = await openEtcdStore({ endpoints: etcd.endpoints });
    const url = new URL(etcd.endpoints[0]!);
    proxy = new FreezingProxy({ host: url.hostname, port: Number(url.port) });
    await proxy.listen();
  });
  afterEach(async () => {
    for (const s of stores.splice(0)) await s.close();
  });
  afterAll(async () => {
    await direct.close();
    await proxy.close();
    await etcd.stop();
  });

  it('re-creates a silent watch stream from the next revision, without loss or duplicates', async () => {
    const viaProxy = await openEtcdStore({
      endpoints: [`http://127.0.0.1:${proxy.port}`],
      requestTimeoutMs: 3_000,
      watchProgressTimeoutMs: 600,
    });
    stores.push(viaProxy);
    const from = (await direct.revision()) + 1;
    const w = follow(viaProxy, '/hd/', from);
    await direct.put('/hd/1', enc('1'));
    await w.waitFor(1);
    expect(proxy.freezeExisting()).toBeGreaterThan(0);
    const t0 = performance.now();
    // Written while the watch's connection is dead: must arrive over the new stream.
    await direct.put('/hd/2', enc('2'));
    await direct.put('/hd/3', enc('3'));
    await w.waitFor(3, 5_000);
    const recoveredMs = performance.now() - t0;
    console.log(`watchdog re-created the silent watch in ${recoveredMs.toFixed(0)} ms`);
    expect(recoveredMs).toBeLessThan(3_000);
    await direct.put('/hd/4', enc('4'));
    await w.waitFor(4);
    await sleep(100);
    expectKeys(w.events, ['/hd/1', '/hd/2', '/hd/3', '/hd/4']);
    expect(w.error()).toBeUndefined();
    // Unary calls on the frozen connection time out once, then reconnect.
    await eventually(() => viaProxy.get('/hd/1'));
    await w.stop();
  });

  it('without the watchdog firing, an idle healthy watch stays quiet and correct', async () => {
    const s = await openEtcdStore({ endpoints: etcd.endpoints, watchProgressTimeoutMs: 300 });
    stores.push(s);
    const from = (await direct.revision()) + 1;
    const w = follow(s, '/idle/', from);
    await sleep(1_500); // several watchdog periods with nothing to deliver: progress requests keep it alive
    await direct.put('/idle/1', enc('1'));
    await w.waitFor(1);
    expectKeys(w.events, ['/idle/1']);
    expect(w.error()).toBeUndefined();
    await w.stop();
  });
});
