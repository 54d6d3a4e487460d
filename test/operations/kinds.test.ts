// Operation kinds typed end to end (src/operations/kinds.ts): the stored kind is the enum
// value's name, as daemons have always written it; params are parsed by the kind's schema
// before the runner sees them; the result goes through the Operation.result oneof and back.
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import type { Config } from '../../src/config/schema.js';
import { OperationKind } from '../../src/gen/debvisor/v1/operation_pb.js';
import { StorageBackend } from '../../src/gen/debvisor/v1/storage_types_pb.js';
import { decodeResult, defineOperationKind, encodeResult, kindOfStored, storedKindName } from '../../src/operations/kinds.js';
import { OperationManager } from '../../src/operations/manager.js';
import { QuotaManager } from '../../src/quota/manager.js';
import type { CallContext } from '../../src/rpc/context.js';
import { compilePolicy } from '../../src/rpc/policy.js';
import { API_SERVICES } from '../../src/services/registry.js';
import type { Principal } from '../../src/rpc/principal.js';
import { operationMessage } from '../../src/services/operations.js';
import { RecordCache } from '../../src/store/cache.js';
import { LeaseHolder } from '../../src/store/lease-holder.js';
import { createRepositories } from '../../src/store/repositories.js';
import type { Store } from '../../src/store/store.js';
import { embeddedHarness, type StoreHarness } from '../support/store-harness.js';

describe('stored kind names', () => {
  it('are the names earlier daemons stored, and read back as the enum', () => {
    const historic = ['MIGRATE_VM', 'FAILOVER_VM', 'PROVISION_VOLUME', 'PRUNE_SNAPSHOTS', 'CLONE_RBD_FROM_TEMPLATE', 'SHUTDOWN_VM', 'TEST'];
    for (const name of historic) {
      const kind = kindOfStored(name);
      expect(kind, name).toBeDefined();
      expect(storedKindName(kind ?? OperationKind.UNSPECIFIED)).toBe(name);
    }
  });

  it('leave a name this daemon does not know undefined, never a guess', () => {
    expect(kindOfStored('SHUTDOWN_V')).toBeUndefined();
    expect(kindOfStored('UNSPECIFIED')).toBeUndefined();
    expect(kindOfStored('toString')).toBeUndefined();
  });
});

describe('results', () => {
  it('round-trip through their stored JSON form', () => {
    const migration = { case: 'migration', value: { vmName: 'vm1', sourceNode: 'a', targetNode: 'b', downtime: durationFromMs(1500), transferredBytes: 42n } } as const;
    const stored = encodeResult(migration);
    expect(stored).toEqual({ case: 'migration', value: { vmName: 'vm1', sourceNode: 'a', targetNode: 'b', downtime: '1.500s', transferredBytes: '42' } });
    const back = decodeResult(JSON.parse(JSON.stringify(stored)));
    expect(back?.case).toBe('migration');
    if (back?.case !== 'migration') return;
    expect(back.value.transferredBytes).toBe(42n);
    expect(back.value.downtime?.seconds).toBe(1n);
  });

  it('decode what earlier daemons stored', () => {
    const legacy = { case: 'prunePlan', value: { dataset: { backend: 'STORAGE_BACKEND_RBD', pool: 'p', name: 'v' }, kept: ['s2'], deleted: ['s1'], removedCount: 1 } };
    const back = decodeResult(legacy);
    expect(back?.case).toBe('prunePlan');
    if (back?.case !== 'prunePlan') return;
    expect(back.value.dataset?.backend).toBe(StorageBackend.RBD);
    expect(back.value.removedCount).toBe(1);
  });

  it('store nothing for no result, and decode a malformed one as none', () => {
    expect(encodeResult({ case: undefined })).toBeUndefined();
    expect(decodeResult(undefined)).toBeUndefined();
    expect(decodeResult({ case: 'nothing', value: {} })).toBeUndefined();
    expect(decodeResult({ case: 'shutdown', value: { forced: 'yes' } })).toBeUndefined();
  });
});

describe('OperationManager with a typed kind', () => {
  let harness: StoreHarness;
  let store: Store;
  let lease: LeaseHolder;
  const stopping = new AbortController();

  beforeAll(async () => {
    harness = await embeddedHarness();
    store = await harness.open();
    lease = new LeaseHolder(store, 15, pino({ level: 'silent' }));
  });

  afterAll(async () => {
    stopping.abort();
    await lease.release();
    await store.close();
    await harness.cleanup();
  });

  it('stores the enum name and params, runs with parsed params and keeps the typed result', async () => {
    const settings = (() => ({ quota: { defaults: { concurrent_operations: 5, snapshots: 100, storage_gb: 100 }, recompute_min_interval_seconds: 0 } })) as unknown as () => Config;
    const repos = createRepositories(store);
    const cache = new RecordCache(repos.operations, () => undefined);
    await cache.start(stopping.signal);
    const operations = new OperationManager(repos, cache, new QuotaManager(store, repos, settings, () => lease.lease()), 'node-a', pino({ level: 'silent' }), () => 3_600_000);
    const shutdown = defineOperationKind(OperationKind.SHUTDOWN_VM, z.object({ vmName: z.string(), force: z.boolean() }), 'shutdown');
    const seen: { vmName: string; force: boolean }[] = [];
    operations.register(shutdown, {
      run: (op) => {
        seen.push(op.params);
        return Promise.resolve({ case: 'shutdown', value: { vmName: op.params.vmName, forced: op.params.force } });
      },
    });
    expect(operations.has(OperationKind.SHUTDOWN_VM)).toBe(true);
    expect(() => operations.register(shutdown, { run: () => Promise.resolve({ case: 'shutdown', value: {} }) })).toThrow(/registered twice/);

    const ctx: CallContext = { traceId: 't', principal: { id: 'alice', kind: 'certificate' } satisfies Principal, deadline: new Date(Date.now() + 60_000), signal: stopping.signal, peer: 'test' };
    const started = await operations.launch(ctx, shutdown, { target: 'vm:web-1', params: { vmName: 'web-1', force: true } });
    expect(started.kind).toBe('SHUTDOWN_VM');
    expect(started.params).toEqual({ vmName: 'web-1', force: true });

    const done = await operations.wait(started.id, 30_000, stopping.signal);
    expect(done?.state).toBe('SUCCEEDED');
    expect(seen).toEqual([{ vmName: 'web-1', force: true }]);
    const message = operationMessage(done ?? started);
    expect(message.kind).toBe(OperationKind.SHUTDOWN_VM);
    expect(message.result?.case).toBe('shutdown');
    if (message.result?.case === 'shutdown') expect(message.result.value).toMatchObject({ vmName: 'web-1', forced: true });
    expect(operations.list({ kind: OperationKind.SHUTDOWN_VM }).map((op) => op.id)).toEqual([started.id]);
    expect(operations.list({ kind: OperationKind.TEST })).toEqual([]);

    // A handler reads its RPC's compiled policy: launching a kind its RPC does not declare is refused.
    const method = (name: string) => API_SERVICES.flatMap((service) => service.methods).find((m) => m.name === name)!;
    const shutdownVm = { ...ctx, policy: compilePolicy(method('ShutdownVm')) };
    await expect(operations.launch({ ...ctx, policy: compilePolicy(method('PruneSnapshots')) }, shutdown, { target: 'vm:web-2', params: { vmName: 'web-2', force: false } })).rejects.toThrow(
      /PruneSnapshots declares operation kind PRUNE_SNAPSHOTS but launched SHUTDOWN_VM/,
    );
    await expect(operations.launch(shutdownVm, shutdown, { target: 'vm:web-2', params: { vmName: 'web-2', force: false } })).resolves.toMatchObject({ kind: 'SHUTDOWN_VM' });
    operations.stop();
  });
});
