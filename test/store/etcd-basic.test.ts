// etcd backend specifics against one real member: revisions, paging, txn compares,
// leases, compaction and watches as etcd reports them.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { extractEtcdSnapshot, saveBackup } from '../../src/store/backup-file.js';
import { openEtcdStore } from '../../src/store/etcd/store.js';
import { CompactedError, NotFoundError, StoreUnavailableError } from '../../src/store/errors.js';
import type { Store, WatchEvent } from '../../src/store/store.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (b: Uint8Array): string => new TextDecoder().decode(b);

async function collect(iterable: AsyncIterable<WatchEvent>, count: number): Promise<WatchEvent[]> {
  const out: WatchEvent[] = [];
  if (count === 0) return out;
  for await (const event of iterable) {
    out.push(event);
    if (out.length >= count) break;
  }
  return out;
}

describe('etcd store (single member)', () => {
  let etcd: EtcdCluster;
  let store: Store;

  beforeAll(async () => {
    etcd = await startEtcd();
    store = await openEtcdStore({ endpoints: etcd.endpoints, requestTimeoutMs: 2_000 });
  });
  afterAll(async () => {
    await store.close();
    await etcd.stop();
  });

  it('starts quickly on loopback and answers ping', async () => {
    expect(etcd.endpoints).toHaveLength(1);
    expect(etcd.endpoints[0]).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    await store.ping();
    expect(store.backend).toBe('etcd');
  });

  it('put/get report etcd revisions, versions and leases', async () => {
    const r1 = await store.put('/t/a', enc('1'));
    const r2 = await store.put('/t/a', enc('2'));
    expect(r2.revision).toBe(r1.revision + 1);
    const kv = await store.get('/t/a');
    expect(kv).toBeDefined();
    expect(dec(kv!.value)).toBe('2');
    expect(kv!.value).toBeInstanceOf(Uint8Array);
    expect(kv).toMatchObject({ key: '/t/a', createRevision: r1.revision, modRevision: r2.revision, version: 2, lease: undefined });
    expect(await store.get('/t/missing')).toBeUndefined();
    expect(await store.revision()).toBe(r2.revision);
  });

  it('lists a prefix in pages at one revision', async () => {
    for (const k of ['a', 'b', 'c', 'd', 'e']) await store.put(`/page/${k}`, enc(k));
    await store.put('/pagex', enc('outside'));
    await store.put('/pag', enc('outside'));
    const first = await store.list('/page/', { limit: 2 });
    expect(first.kvs.map((kv) => kv.key)).toEqual(['/page/a', '/page/b']);
    expect(first.more).toBe(true);
    await store.put('/page/bb', enc('later')); // not visible at first.revision
    const second = await store.list('/page/', { limit: 2, startAfter: '/page/b', revision: first.revision });
    expect(second.kvs.map((kv) => kv.key)).toEqual(['/page/c', '/page/d']);
    expect(second.revision).toBe(first.revision);
    const third = await store.list('/page/', { limit: 2, startAfter: '/page/d', revision: first.revision });
    expect(third.kvs.map((kv) => kv.key)).toEqual(['/page/e']);
    expect(third.more).toBe(false);
    const all = await store.list('/page/');
    expect(all.kvs.map((kv) => kv.key)).toEqual(['/page/a', '/page/b', '/page/bb', '/page/c', '/page/d', '/page/e']);
    expect(all.revision).toBe(await store.revision());
  });

  it('deletes one key or a prefix', async () => {
    await store.put('/del/a', enc('x'));
    await store.put('/del/b', enc('x'));
    await store.put('/del/c/d', enc('x'));
    await store.put('/dela', enc('x'));
    expect((await store.delete('/del/a')).deleted).toBe(1);
    expect((await store.delete('/del/zzz')).deleted).toBe(0);
    const res = await store.delete('/del/', { prefix: true });
    expect(res.deleted).toBe(2);
    expect(res.revision).toBe(await store.revision());
    expect(await store.get('/dela')).toBeDefined();
  });

  it('maps txn compares onto etcd targets', async () => {
    const { revision } = await store.put('/txn/k', enc('v1'));
    const ok = await store.txn({
      compare: [
        { key: '/txn/k', modRevision: revision },
        { key: '/txn/k', createRevision: revision },
        { key: '/txn/k', value: enc('v1') },
        { key: '/txn/none', absent: true },
      ],
      success: [
        { type: 'put', key: '/txn/k', value: enc('v2') },
        { type: 'put', key: '/txn/none', value: enc('n') },
      ],
    });
    expect(ok.succeeded).toBe(true);
    expect(ok.revision).toBe(revision + 1);
    const fail = await store.txn({
      compare: [{ key: '/txn/k', modRevision: revision }],
      success: [{ type: 'delete', key: '/txn/k' }],
      failure: [{ type: 'delete', key: '/txn/', prefix: true }],
    });
    expect(fail.succeeded).toBe(false);
    expect(fail.revision).toBe(revision + 2);
    expect((await store.list('/txn/')).kvs).toHaveLength(0);
    const absentFails = await store.txn({ compare: [{ key: '/dela', absent: true }], success: [] });
    expect(absentFails.succeeded).toBe(false);
  });

  it('grants, refreshes and revokes leases; keys go with them', async () => {
    const lease = await store.grantLease(30);
    expect(lease).toMatch(/^\d+$/);
    await store.put('/lease/a', enc('x'), { lease });
    expect((await store.get('/lease/a'))?.lease).toBe(lease);
    const ttl = await store.keepAliveOnce(lease);
    expect(ttl).toBeGreaterThanOrEqual(29);
    await store.txn({ compare: [], success: [{ type: 'put', key: '/lease/b', value: enc('y'), lease }] });
    await store.revokeLease(lease);
    expect(await store.get('/lease/a')).toBeUndefined();
    expect(await store.get('/lease/b')).toBeUndefined();
    await expect(store.keepAliveOnce(lease)).rejects.toBeInstanceOf(NotFoundError);
    await store.revokeLease(lease); // unknown: no-op
    await expect(store.keepAliveOnce('123456789')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('an expired lease is NotFound and its keys are gone', async () => {
    const lease = await store.grantLease(1);
    await store.put('/lease/short', enc('x'), { lease });
    await new Promise((r) => setTimeout(r, 2_500));
    await expect(store.keepAliveOnce(lease)).rejects.toBeInstanceOf(NotFoundError);
    expect(await store.get('/lease/short')).toBeUndefined();
  });

  it('watches a prefix from a past revision, in order, puts and deletes', async () => {
    const start = (await store.put('/w1/a', enc('1'))).revision;
    await store.put('/w1x', enc('not in prefix'));
    await store.put('/w1/b', enc('2'));
    await store.delete('/w1/a');
    await store.txn({ compare: [], success: [
      { type: 'put', key: '/w1/c', value: enc('3') },
      { type: 'put', key: '/w1/d', value: enc('4') },
    ] });
    const events = await collect(store.watch('/w1/', { fromRevision: start }), 5);
    expect(events.map((e) => [e.type, e.key, dec(e.value)])).toEqual([
      ['put', '/w1/a', '1'],
      ['put', '/w1/b', '2'],
      ['delete', '/w1/a', ''],
      ['put', '/w1/c', '3'],
      ['put', '/w1/d', '4'],
    ]);
    expect(events[0]!.modRevision).toBe(start);
    expect(events[0]!.createRevision).toBe(start);
    expect(events[3]!.modRevision).toBe(events[4]!.modRevision);
  });

  it('a live watch sees new writes and ends on abort', async () => {
    const controller = new AbortController();
    const from = (await store.revision()) + 1;
    const got: WatchEvent[] = [];
    const done = (async () => {
      for await (const e of store.watch('/w2/', { fromRevision: from, signal: controller.signal })) got.push(e);
    })();
    for (let i = 0; i < 20; i++) await store.put(`/w2/${i}`, enc(String(i)));
    while (got.length < 20) await new Promise((r) => setTimeout(r, 10));
    controller.abort();
    await done;
    expect(got.map((e) => e.key)).toEqual(Array.from({ length: 20 }, (_, i) => `/w2/${i}`));
    expect(got.map((e) => e.modRevision)).toEqual(Array.from({ length: 20 }, (_, i) => from + i));
  });

  it('compaction: old reads and watches fail with CompactedError', async () => {
    const old = (await store.put('/c/a', enc('1'))).revision;
    await store.put('/c/a', enc('2'));
    const now = (await store.put('/c/a', enc('3'))).revision;
    await store.compact(now);
    await store.compact(now); // again: no-op
    await store.compact(old); // below: no-op
    const listErr = await store.list('/c/', { revision: old }).catch((e: unknown) => e);
    expect(listErr).toBeInstanceOf(CompactedError);
    expect((listErr as CompactedError).compactRevision).toBe(now);
    const watchErr = await collect(store.watch('/c/', { fromRevision: old }), 1).catch((e: unknown) => e);
    expect(watchErr).toBeInstanceOf(CompactedError);
    expect((watchErr as CompactedError).compactRevision).toBe(now);
    // From the compaction point on, history is there.
    const events = await collect(store.watch('/c/', { fromRevision: now }), 1);
    expect(dec(events[0]!.value)).toBe('3');
  });

  it('snapshot: a backup file etcdctl accepts and restores, holding every key written before it', async () => {
    for (let i = 0; i < 50; i++) await store.put(`/snap/k${i}`, enc(`v${i}`));
    const revision = await store.revision();
    const dir = mkdtempSync(join(tmpdir(), 'debvisor-etcd-backup-'));
    try {
      await saveBackup(join(dir, 'b.backup'), { chunks: store.snapshot(), summary: () => ({ backend: 'etcd', takenBy: 'test' }) });
      await extractEtcdSnapshot(join(dir, 'b.backup'), join(dir, 'snapshot.db'));
      const env = { ...process.env, ETCDCTL_API: '3' };
      const status = JSON.parse(execFileSync('etcdctl', ['snapshot', 'status', join(dir, 'snapshot.db'), '-w', 'json'], { env, encoding: 'utf8' })) as { revision: number; totalKey: number };
      expect(status.revision).toBeGreaterThanOrEqual(revision);
      expect(status.totalKey).toBeGreaterThanOrEqual(50);
      execFileSync('etcdctl', ['snapshot', 'restore', join(dir, 'snapshot.db'), '--data-dir', join(dir, 'restored')], { env, stdio: 'ignore' });
      expect(statSync(join(dir, 'restored', 'member')).isDirectory()).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a closed store refuses calls and ends its watches', async () => {
    const other = await openEtcdStore({ endpoints: etcd.endpoints });
    const it = other.watch('/closed/', { fromRevision: (await other.revision()) + 1 })[Symbol.asyncIterator]();
    const pending = it.next();
    await new Promise((r) => setTimeout(r, 100));
    await other.close();
    await expect(pending).rejects.toBeInstanceOf(StoreUnavailableError);
    await expect(other.get('/x')).rejects.toBeInstanceOf(StoreUnavailableError);
  });
});
