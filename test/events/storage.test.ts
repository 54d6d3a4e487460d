// Volume and snapshot events from the StorageManager: real lvm2 on a metadata-only VG (volumes,
// snapshot deletes over real snapshot metadata, and snapshot creation, which this kernel refuses),
// the in-memory RBD stand-in for what needs Ceph (snapshots, templates, clones, provisioning),
// and a real QuotaManager on the embedded store. Each change publishes once, after it is made,
// naming "pool/volume" with its pool, the caller and its trace id; refused or failed changes
// publish nothing.
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LvmBackend } from '../../src/backends/lvm/lvm.js';
import type { Config } from '../../src/config/schema.js';
import { causeOf } from '../../src/events/cause.js';
import { EventKind } from '../../src/gen/debvisor/v1/event_pb.js';
import { ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { OperationManager } from '../../src/operations/manager.js';
import { QuotaManager } from '../../src/quota/manager.js';
import type { CallContext } from '../../src/rpc/context.js';
import type { Principal } from '../../src/rpc/principal.js';
import { CLONE_RBD_FROM_TEMPLATE, registerStorageOperationKinds } from '../../src/services/storage.js';
import { StorageManager, type ImageTool } from '../../src/storage/manager.js';
import { RecordCache } from '../../src/store/cache.js';
import { LeaseHolder } from '../../src/store/lease-holder.js';
import { createRepositories } from '../../src/store/repositories.js';
import type { Store } from '../../src/store/store.js';
import { FakeRbd, MIB } from '../support/fake-rbd.js';
import { startLvm, writeSnapshotMetadata, type TestLvm } from '../support/lvm.js';
import { RecordingSink } from '../support/recording-sink.js';
import { embeddedHarness, type StoreHarness } from '../support/store-harness.js';

const silent = pino({ level: 'silent' });
const settings = (() => ({ quota: { defaults: { concurrent_operations: 5, snapshots: 100, storage_gb: 2 }, recompute_min_interval_seconds: 0 } })) as unknown as () => Config;
const stopping = new AbortController();
const alice: Principal = { id: 'alice', kind: 'certificate' };
const ctx = (traceId: string): CallContext => ({ traceId, principal: alice, deadline: new Date(Date.now() + 60_000), signal: stopping.signal, peer: 'test' });
const change = (traceId: string) => ({ cause: causeOf(ctx(traceId)) });

let harness: StoreHarness;
let store: Store;
let lease: LeaseHolder;
let quotas: QuotaManager;
let lvm: TestLvm | undefined;

beforeAll(async () => {
  harness = await embeddedHarness();
  store = await harness.open();
  lease = new LeaseHolder(store, 15, silent);
  quotas = new QuotaManager(store, createRepositories(store), settings, () => lease.lease());
  lvm = await startLvm({ sizeMiB: 256 });
});

afterAll(async () => {
  stopping.abort();
  await lvm?.stop();
  await lease.release();
  await store.close();
  await harness.cleanup();
});

function managerWith(backends: ConstructorParameters<typeof StorageManager>[0]['backends'], images?: ImageTool) {
  const sink = new RecordingSink();
  const quotaSink = new RecordingSink();
  const counted = new QuotaManager(store, createRepositories(store), settings, () => lease.lease(), quotaSink);
  const manager = new StorageManager({ backends, quotas: counted, images, imagesDir: () => import.meta.dirname, events: { sink, node: 'node-a' } });
  return { sink, quotaSink, manager };
}

describe('storage events on real LVM', () => {
  it('volume created, resized, snapshots deleted one by one and by prune, volume deleted; nothing for what failed', async () => {
    const vg = lvm!.vg;
    const { sink, quotaSink, manager } = managerWith({ lvm: new LvmBackend({ vgs: [vg], systemDir: lvm!.systemDir }) });
    const key = { backend: 'lvm' as const, pool: vg, name: 'data' };
    const resource = { kind: ResourceKind.VOLUME, node: 'node-a', name: `${vg}/data`, pool: vg };

    await manager.createVolume(key, 8n * MIB, {}, 'alice', change('t-create'));
    expect(sink.events).toMatchObject([
      { kind: EventKind.VOLUME_CREATED, resource, actor: { principal: 'alice' }, traceId: 't-create', payload: { case: 'volume', value: { backend: 'lvm', sizeBytes: 8n * MIB } } },
    ]);
    sink.clear();

    // Refused or failed: an existing name, a shrink without allow_shrink, growth over the storage_gb quota, a snapshot this kernel cannot make.
    await expect(manager.createVolume(key, 8n * MIB, {}, 'alice', change('t-again'))).rejects.toThrow();
    await expect(manager.resizeVolume(key, 4n * MIB, false, 'alice', change('t-shrink'))).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
    await expect(manager.resizeVolume(key, 3584n * MIB, false, 'alice', change('t-quota'))).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
    await expect(manager.createSnapshot(key, 'snap', '', 'alice', change('t-snap'))).rejects.toThrow();
    expect(sink.events).toEqual([]);
    expect(quotaSink.events).toMatchObject([
      { kind: EventKind.QUOTA_EXCEEDED, resource: { kind: ResourceKind.PRINCIPAL, name: 'alice', owner: 'alice' }, traceId: 't-quota', payload: { value: { dimension: 'storage_gb', used: 0n, requested: 3n, limit: 2n } } },
    ]);

    await manager.resizeVolume(key, 16n * MIB, false, 'alice', change('t-grow'));
    expect(sink.events).toMatchObject([{ kind: EventKind.VOLUME_RESIZED, resource, traceId: 't-grow', payload: { value: { backend: 'lvm', sizeBytes: 16n * MIB } } }]);
    sink.clear();

    for (const [day, name] of ['2026-01-01', '2026-01-02', '2026-01-03', '2026-01-04'].entries()) {
      await writeSnapshotMetadata(lvm!, { origin: 'data', name: `s${name.replaceAll('-', '')}`, createTime: new Date(`2026-01-0${day + 1}T00:00:00Z`) });
    }
    const results = await manager.deleteSnapshots(key, ['s20260101', 'missing'], change('t-delete-snaps'));
    expect(results.map((r) => r.error === undefined)).toEqual([true, false]);
    expect(sink.events).toMatchObject([
      { kind: EventKind.SNAPSHOT_DELETED, resource, traceId: 't-delete-snaps', payload: { case: 'volumeSnapshot', value: { volume: 'data', snapshot: 's20260101' } } },
    ]);
    sink.clear();

    const pruned = await manager.prune(key, { keepLast: 2, keepDailyDays: 0, keepWeeklyWeeks: 0 }, false, { ...change('t-prune'), now: new Date('2026-01-10T00:00:00Z') });
    expect(pruned.deleted).toEqual(['s20260102']);
    expect(sink.events).toMatchObject([{ kind: EventKind.SNAPSHOT_DELETED, traceId: 't-prune', payload: { value: { snapshot: 's20260102' } } }]);
    sink.clear();

    await manager.deleteVolume(key, true, change('t-delete'));
    // Its snapshots first (in the backend's order), then the volume.
    const described = sink.events.map((e) => [e.kind, e.payload?.case === 'volumeSnapshot' ? e.payload.value.snapshot : e.payload?.case, e.traceId]);
    expect(described.slice(0, 2).sort()).toEqual([
      [EventKind.SNAPSHOT_DELETED, 's20260103', 't-delete'],
      [EventKind.SNAPSHOT_DELETED, 's20260104', 't-delete'],
    ]);
    expect(described.slice(2)).toEqual([[EventKind.VOLUME_DELETED, 'volume', 't-delete']]);
  });
});

describe('storage events on the RBD stand-in', () => {
  const writes: ImageTool = { info: () => Promise.resolve({ format: 'raw', virtualSizeBytes: MIB }), convert: () => Promise.resolve() };
  const image = basename(fileURLToPath(import.meta.url));

  it('snapshot and template created; clone and provisioning publish VOLUME_CREATED only once the volume is complete', async () => {
    const rbd = new FakeRbd();
    const { sink, manager } = managerWith({ rbd }, writes);
    await rbd.createVolume({ pool: 'p', name: 'golden', sizeBytes: MIB, tags: {}, owner: 'alice' });
    const golden = { backend: 'rbd' as const, pool: 'p', name: 'golden' };

    await manager.createSnapshot(golden, 'daily', 'label', 'alice', change('t-snap'));
    await manager.createTemplateSnapshot('p', 'golden', 'v1', 'alice', change('t-template'));
    expect(sink.events).toMatchObject([
      { kind: EventKind.SNAPSHOT_CREATED, resource: { kind: ResourceKind.VOLUME, name: 'p/golden', pool: 'p' }, traceId: 't-snap', payload: { value: { volume: 'golden', snapshot: 'daily' } } },
      { kind: EventKind.SNAPSHOT_CREATED, traceId: 't-template', payload: { value: { volume: 'golden', snapshot: 'v1' } } },
    ]);
    sink.clear();

    rbd.fail.protect = 'yes';
    await expect(manager.createTemplateSnapshot('p', 'golden', 'v2', 'alice', change('t-unprotected'))).rejects.toThrow();
    rbd.fail = { flatten: 'yes' };
    await expect(manager.clone({ pool: 'p', image: 'golden', snapshot: 'v1' }, { pool: 'p', image: 'half', owner: 'alice' }, true, change('t-half'))).rejects.toThrow();
    rbd.fail = {};
    const failing = managerWith({ rbd }, { ...writes, convert: () => Promise.reject(new Error('write failed')) });
    await expect(failing.manager.provision({ backend: 'rbd', pool: 'p', name: 'broken' }, { sizeBytes: MIB, tags: {}, owner: 'alice', imagePath: image }, change('t-broken'))).rejects.toThrow();
    expect([...sink.events, ...failing.sink.events]).toEqual([]);

    await manager.provision({ backend: 'rbd', pool: 'p', name: 'disk' }, { sizeBytes: MIB, tags: {}, owner: 'alice', imagePath: image }, change('t-provision'));
    expect(sink.events).toMatchObject([{ kind: EventKind.VOLUME_CREATED, resource: { name: 'p/disk', pool: 'p' }, traceId: 't-provision', payload: { value: { backend: 'rbd', sizeBytes: MIB } } }]);
  });

  it('a clone run as an operation names the launching call', async () => {
    const rbd = new FakeRbd();
    const { sink, manager } = managerWith({ rbd });
    await rbd.createVolume({ pool: 'p', name: 'golden', sizeBytes: MIB, tags: {}, owner: 'alice' });
    await manager.createTemplateSnapshot('p', 'golden', 'v1', 'alice');
    sink.clear();
    const repos = createRepositories(store);
    const cache = new RecordCache(repos.operations, () => undefined);
    await cache.start(stopping.signal);
    const operations = new OperationManager(repos, cache, quotas, 'node-a', silent, () => 3_600_000);
    registerStorageOperationKinds(operations, manager);
    const op = await operations.launch(ctx('t-clone-call'), CLONE_RBD_FROM_TEMPLATE, {
      target: 'rbd:p/copy',
      params: { from: { pool: 'p', image: 'golden', snapshot: 'v1' }, to: { pool: 'p', image: 'copy', owner: 'alice' }, flatten: false },
    });
    expect(await sink.next((e) => e.kind === EventKind.VOLUME_CREATED)).toMatchObject({ resource: { name: 'p/copy', pool: 'p' }, actor: { principal: 'alice' }, traceId: 't-clone-call' });
    expect((await operations.wait(op.id, 30_000, stopping.signal))?.state).toBe('SUCCEEDED');
    operations.stop();
  });
});
