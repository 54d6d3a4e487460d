// OPERATION_UPDATED and OPERATION_FINISHED from the OperationManager on a real embedded store:
// resource, owner, actor and the launching call's trace id; progress throttled to about one event
// a second; FINISHED exactly once for succeeded, failed, cancelled and failed-by-restart; only the
// daemon running an operation publishes; a launch refused for its slot quota publishes
// QUOTA_EXCEEDED and no operation event.
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import type { Config } from '../../src/config/schema.js';
import { EventKind } from '../../src/gen/debvisor/v1/event_pb.js';
import { ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { OperationKind, OperationState } from '../../src/gen/debvisor/v1/operation_pb.js';
import { defineOperationKind } from '../../src/operations/kinds.js';
import { OperationManager } from '../../src/operations/manager.js';
import { QuotaManager } from '../../src/quota/manager.js';
import type { CallContext } from '../../src/rpc/context.js';
import { RpcError } from '../../src/rpc/errors.js';
import type { Principal } from '../../src/rpc/principal.js';
import { RecordCache } from '../../src/store/cache.js';
import { LeaseHolder } from '../../src/store/lease-holder.js';
import type { OperationRecord } from '../../src/store/records.js';
import { createRepositories, type Repositories } from '../../src/store/repositories.js';
import type { Store } from '../../src/store/store.js';
import { RecordingSink } from '../support/recording-sink.js';
import { embeddedHarness, type StoreHarness } from '../support/store-harness.js';

const SHUTDOWN = defineOperationKind(OperationKind.SHUTDOWN_VM, z.object({ vmName: z.string(), mode: z.enum(['ok', 'fail', 'block', 'progress']) }), 'shutdown');
const silent = pino({ level: 'silent' });
const settings = (() => ({ quota: { defaults: { concurrent_operations: 3, snapshots: 100, storage_gb: 100 }, recompute_min_interval_seconds: 0 } })) as unknown as () => Config;

const panel: Principal = { id: 'spiffe://debvisor/panel/web', kind: 'certificate' };
const alice: Principal = { id: 'user:alice', kind: 'user', delegation: { by: panel, groups: [] } };
const stopping = new AbortController();
const ctxOf = (principal: Principal, traceId: string): CallContext => ({ traceId, principal, deadline: new Date(Date.now() + 60_000), signal: stopping.signal, peer: 'test' });

let harness: StoreHarness;
let store: Store;
let lease: LeaseHolder;
let repos: Repositories;

/** A daemon's operation side: its own cache, quota manager, sink and node name. */
async function daemon(node: string) {
  const sink = new RecordingSink();
  const cache = new RecordCache(repos.operations, () => undefined);
  await cache.start(stopping.signal);
  const quotas = new QuotaManager(store, repos, settings, () => lease.lease(), sink);
  const operations = new OperationManager(repos, cache, quotas, node, silent, () => 3_600_000, sink);
  const release = new Map<string, () => void>();
  /** updated_at of each progress write (the cache reports a write both when made and when watched). */
  const progressWrites = new Set<string>();
  operations.register(SHUTDOWN, {
    run: async (op) => {
      if (op.params.mode === 'fail') throw new RpcError('DEADLINE_EXCEEDED', 'the guest did not shut down');
      if (op.params.mode === 'block') {
        await new Promise<void>((resolve, reject) => {
          release.set(op.params.vmName, resolve);
          op.signal.addEventListener('abort', () => reject(op.signal.reason as Error));
        });
      }
      if (op.params.mode === 'progress') {
        // Reports as fast as it likes; the manager writes every 250 ms and publishes about once a second.
        const unsubscribe = cache.subscribe((id, record) => {
          if (id === op.id && record?.state === 'RUNNING' && record.progress_percent > 0) progressWrites.add(record.updated_at);
        });
        for (let step = 1; progressWrites.size < 8; step++) {
          op.progress(Math.min(99, step / 10), `step ${step}`);
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
        unsubscribe();
      }
      return { case: 'shutdown', value: { vmName: op.params.vmName, forced: false } };
    },
  });
  return { sink, operations, release, progressWrites, cache };
}

const finishedOf = (sink: RecordingSink, id: string) => sink.next((e) => e.kind === EventKind.OPERATION_FINISHED && e.resource?.name === id);

beforeAll(async () => {
  harness = await embeddedHarness();
  store = await harness.open();
  lease = new LeaseHolder(store, 15, silent);
  repos = createRepositories(store);
});

afterAll(async () => {
  stopping.abort();
  await lease.release();
  await store.close();
  await harness.cleanup();
});

describe('operation events', () => {
  it('name the operation, its owner, the acting certificate and the launching trace id; FINISHED once with its outcome', async () => {
    const a = await daemon('node-a');
    const b = await daemon('node-b');
    const started = await a.operations.launch(ctxOf(alice, 'trace-ok'), SHUTDOWN, { target: 'vm:web-1', params: { vmName: 'web-1', mode: 'ok' } });
    const finished = await finishedOf(a.sink, started.id);
    expect(finished).toMatchObject({
      resource: { kind: ResourceKind.OPERATION, node: 'node-a', name: started.id, owner: 'user:alice' },
      actor: { principal: 'user:alice', impersonatedBy: panel.id },
      traceId: 'trace-ok',
      payload: { case: 'operation', value: { operationKind: OperationKind.SHUTDOWN_VM, state: OperationState.SUCCEEDED, progressPercent: 100, errorCode: '' } },
    });
    const mine = a.sink.events.filter((e) => e.resource?.name === started.id);
    // PENDING at launch, RUNNING, then the one FINISHED.
    expect(mine.map((e) => [e.kind, e.payload?.case === 'operation' ? e.payload.value.state : undefined])).toEqual([
      [EventKind.OPERATION_UPDATED, OperationState.PENDING],
      [EventKind.OPERATION_UPDATED, OperationState.RUNNING],
      [EventKind.OPERATION_FINISHED, OperationState.SUCCEEDED],
    ]);
    expect((await a.operations.wait(started.id, 1000, stopping.signal))?.trace_id).toBe('trace-ok');

    const failed = await a.operations.launch(ctxOf(panel, 'trace-fail'), SHUTDOWN, { target: 'vm:web-2', params: { vmName: 'web-2', mode: 'fail' } });
    expect(await finishedOf(a.sink, failed.id)).toMatchObject({
      actor: { principal: panel.id },
      traceId: 'trace-fail',
      payload: { value: { state: OperationState.FAILED, errorCode: 'DEADLINE_EXCEEDED' } },
    });

    const blocked = await a.operations.launch(ctxOf(panel, 'trace-cancel'), SHUTDOWN, { target: 'vm:web-3', params: { vmName: 'web-3', mode: 'block' } });
    await a.sink.next((e) => e.resource?.name === blocked.id && e.payload?.case === 'operation' && e.payload.value.state === OperationState.RUNNING);
    // Cancelled through the other daemon: node-a, which runs it, publishes; node-b publishes nothing.
    await b.operations.cancel(blocked.id);
    expect(await finishedOf(a.sink, blocked.id)).toMatchObject({ payload: { value: { state: OperationState.CANCELLED, errorCode: 'CANCELLED' } } });
    expect(a.sink.of(EventKind.OPERATION_FINISHED).filter((e) => e.resource?.name === blocked.id)).toHaveLength(1);
    expect(b.sink.events).toEqual([]);
    a.operations.stop();
    b.operations.stop();
  });

  it('publish progress at most about once a second, far fewer than the progress writes', async () => {
    const a = await daemon('node-c');
    const startedAt = Date.now();
    const op = await a.operations.launch(ctxOf(panel, 'trace-progress'), SHUTDOWN, { target: 'vm:web-4', params: { vmName: 'web-4', mode: 'progress' } });
    await finishedOf(a.sink, op.id);
    const elapsedMs = Date.now() - startedAt;
    const progress = a.sink.events.filter((e) => e.kind === EventKind.OPERATION_UPDATED && e.payload?.case === 'operation' && (e.payload.value.progressPercent ?? 0) > 0);
    expect(a.progressWrites.size).toBeGreaterThanOrEqual(8);
    expect(progress.length).toBeGreaterThanOrEqual(1);
    expect(progress.length).toBeLessThanOrEqual(Math.floor(elapsedMs / 1000) + 1);
    expect(progress.length).toBeLessThan(a.progressWrites.size);
    expect(progress.every((e) => e.traceId === 'trace-progress' && e.payload?.case === 'operation' && (e.payload.value.message ?? '').startsWith('step '))).toBe(true);
    a.operations.stop();
  });

  it('publish FINISHED once when a restarted daemon fails the operation it was running', async () => {
    const id = 'left-running';
    const now = new Date().toISOString();
    const record: OperationRecord = {
      schema_version: 1, id, kind: 'SHUTDOWN_VM', owner: panel.id, target: 'vm:web-5', node: 'node-d', state: 'RUNNING',
      progress_percent: 40, stage: 'running', cancel_requested: false, resumable: false, created_at: now, updated_at: now, trace_id: 'trace-before-restart',
    };
    await repos.operations.create(id, record);
    const restarted = await daemon('node-d');
    const other = await daemon('node-e');
    await Promise.all([restarted.operations.recover(), other.operations.recover()]);
    expect(restarted.sink.events).toMatchObject([
      { kind: EventKind.OPERATION_FINISHED, traceId: 'trace-before-restart', resource: { name: id, node: 'node-d' }, payload: { value: { state: OperationState.FAILED, errorCode: 'UNAVAILABLE' } } },
    ]);
    expect(other.sink.events).toEqual([]);
    restarted.operations.stop();
    other.operations.stop();
  });

  it('a launch refused for the concurrent-operations quota publishes QUOTA_EXCEEDED about the owner, and no operation event', async () => {
    const a = await daemon('node-f');
    const bob: Principal = { id: 'bob', kind: 'certificate' };
    const held = [];
    for (let i = 0; i < 3; i++) held.push(await a.operations.launch(ctxOf(bob, `trace-hold-${i}`), SHUTDOWN, { target: `vm:h${i}`, params: { vmName: `h${i}`, mode: 'block' } }));
    await Promise.all(held.map((op) => a.sink.next((e) => e.resource?.name === op.id && e.payload?.case === 'operation' && e.payload.value.state === OperationState.RUNNING)));
    a.sink.clear();
    await expect(a.operations.launch(ctxOf(bob, 'trace-refused'), SHUTDOWN, { target: 'vm:h3', params: { vmName: 'h3', mode: 'ok' } })).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
    expect(a.sink.events).toMatchObject([
      {
        kind: EventKind.QUOTA_EXCEEDED,
        resource: { kind: ResourceKind.PRINCIPAL, name: 'bob', owner: 'bob' },
        actor: { principal: 'bob' },
        traceId: 'trace-refused',
        payload: { case: 'quota', value: { dimension: 'concurrent_operations', used: 3n, requested: 1n, limit: 3n } },
      },
    ]);
    for (const op of held) await a.operations.cancel(op.id);
    await Promise.all(held.map((op) => finishedOf(a.sink, op.id)));
    a.operations.stop();
  });
});
