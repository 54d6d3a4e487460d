// A store write whose answer is lost (etcd: "request timed out", a leader change, a
// dropped connection after the write reached the server) may or may not have been
// applied. Launching an operation stays exactly-once either way: the slot and the
// record are found or written once, and nothing is left held when the launch fails. A
// write applied after the launch gave up leaves a slot no operation holds: the slot sweep
// drops it.
//
// The fault is forced with a wrapper over the real embedded store: its txn applies the
// request (or not) and then throws StoreUnavailableError, as the etcd store does when a
// write may have been applied. No real etcd can be made to lose one chosen answer.
import { randomUUID } from 'node:crypto';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import type { Config } from '../../src/config/schema.js';
import { OperationKind } from '../../src/gen/debvisor/v1/operation_pb.js';
import { defineOperationKind } from '../../src/operations/kinds.js';
import { OperationManager } from '../../src/operations/manager.js';
import { QuotaManager } from '../../src/quota/manager.js';
import type { CallContext } from '../../src/rpc/context.js';
import { RecordCache } from '../../src/store/cache.js';
import { StoreUnavailableError } from '../../src/store/errors.js';
import { LAYOUT } from '../../src/store/layout.js';
import { LeaseHolder } from '../../src/store/lease-holder.js';
import { createRepositories } from '../../src/store/repositories.js';
import type { Store, TxnRequest } from '../../src/store/store.js';
import { embeddedHarness, type StoreHarness } from '../support/store-harness.js';

const SHUTDOWN = defineOperationKind(OperationKind.SHUTDOWN_VM, z.object({ vmName: z.string() }), 'shutdown');
const silent = pino({ level: 'silent' });
const settings = (() => ({ quota: { defaults: { concurrent_operations: 2, snapshots: 100, storage_gb: 100 }, recompute_min_interval_seconds: 0 } })) as unknown as () => Config;
const stopping = new AbortController();

type Fault = 'applied' | 'not-applied';

/** The real store, except that txns matching a planted fault lose their answer. */
function lossyStore(real: Store): { store: Store; plant: (touches: string, faults: Fault[]) => void } {
  const planted: { touches: string; faults: Fault[] }[] = [];
  const store = new Proxy(real, {
    get(target, property, receiver) {
      if (property !== 'txn') return Reflect.get(target, property, receiver) as unknown;
      return async (request: TxnRequest) => {
        const plan = planted.find((p) => p.faults.length > 0 && request.success.some((op) => op.key.startsWith(p.touches)));
        const fault = plan?.faults.shift();
        if (fault === undefined) return target.txn(request);
        if (fault === 'applied') await target.txn(request);
        throw new StoreUnavailableError(`lost answer (${fault}) in a test`);
      };
    },
  });
  return { store, plant: (touches, faults) => planted.push({ touches, faults }) };
}

let harness: StoreHarness;
let real: Store;
let lease: LeaseHolder;

beforeAll(async () => {
  harness = await embeddedHarness();
  real = await harness.open();
  lease = new LeaseHolder(real, 15, silent);
});

afterAll(async () => {
  stopping.abort();
  await lease.release();
  await real.close();
  await harness.cleanup();
});

async function daemon() {
  const { store, plant } = lossyStore(real);
  const repos = createRepositories(store);
  const cache = new RecordCache(repos.operations, () => undefined);
  await cache.start(stopping.signal);
  const quotas = new QuotaManager(store, repos, settings, () => lease.lease());
  const operations = new OperationManager(repos, cache, quotas, 'node-a', silent, () => 3_600_000, undefined);
  const held = new Map<string, () => void>();
  operations.register(SHUTDOWN, {
    run: async (op) => {
      // vmName "held-…": runs until the test releases it.
      if (op.params.vmName.startsWith('held-')) await new Promise<void>((resolve) => held.set(op.params.vmName, resolve));
      return { case: 'shutdown', value: { vmName: op.params.vmName, forced: false } };
    },
  });
  return { operations, plant, repos, held };
}

function ctxFor(principal: string): CallContext {
  return { traceId: randomUUID(), principal: { id: principal, kind: 'certificate' }, deadline: new Date(Date.now() + 60_000), signal: stopping.signal, peer: 'test' };
}

const slotsOf = async (principal: string) => (await real.list(`${LAYOUT.slots}${principal}/`)).kvs.length;
const operationsOf = async (principal: string) => (await real.list(LAYOUT.operations)).kvs.filter((kv) => new TextDecoder().decode(kv.value).includes(principal)).length;

async function eventually(check: () => Promise<boolean>): Promise<void> {
  for (const deadline = Date.now() + 30_000; !(await check()); ) {
    if (Date.now() > deadline) throw new Error('condition not met within 30 s');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe('launching an operation when a store write loses its answer', () => {
  it.each<[string, Fault[], Fault[]]>([
    ['the slot write was applied', ['applied'], []],
    ['the slot write was not applied', ['not-applied'], []],
    ['the record write was applied', [], ['applied']],
    ['the record write was not applied, twice', [], ['not-applied', 'not-applied']],
    ['both were applied', ['applied'], ['applied']],
  ])('%s: one operation, run once, and its slot given back', async (_, slotFaults, recordFaults) => {
    const principal = `p-${randomUUID()}`;
    const { operations, plant } = await daemon();
    plant(`${LAYOUT.slots}${principal}/`, slotFaults);
    plant(LAYOUT.operations, recordFaults);
    const started = await operations.launch(ctxFor(principal), SHUTDOWN, { target: 'vm:web', params: { vmName: 'web' }, requestId: 'once' });
    const done = await operations.wait(started.id, 30_000, stopping.signal);
    expect(done?.state).toBe('SUCCEEDED');
    expect(await operationsOf(principal)).toBe(1);
    await eventually(async () => (await slotsOf(principal)) === 0);
    // The same request again is the same operation.
    expect((await operations.launch(ctxFor(principal), SHUTDOWN, { target: 'vm:web', params: { vmName: 'web' }, requestId: 'once' })).id).toBe(started.id);
    operations.stop();
  });

  it('a record write that never lands fails the launch with UNAVAILABLE, holding no slot and leaving no record', async () => {
    const principal = `p-${randomUUID()}`;
    const { operations, plant } = await daemon();
    plant(LAYOUT.operations, Array<Fault>(10).fill('not-applied'));
    const failure = await operations.launch(ctxFor(principal), SHUTDOWN, { target: 'vm:web', params: { vmName: 'web' } }).catch((err: unknown) => err);
    expect(failure).toBeInstanceOf(StoreUnavailableError);
    expect(await operationsOf(principal)).toBe(0);
    expect(await slotsOf(principal)).toBe(0);
    operations.stop();
  });

  it('a slot write that never lands fails the launch with UNAVAILABLE, holding no slot and leaving no record', async () => {
    const principal = `p-${randomUUID()}`;
    const { operations, plant } = await daemon();
    plant(`${LAYOUT.slots}${principal}/`, Array<Fault>(100).fill('not-applied'));
    const failure = await operations.launch(ctxFor(principal), SHUTDOWN, { target: 'vm:web', params: { vmName: 'web' } }).catch((err: unknown) => err);
    expect(failure).toBeInstanceOf(StoreUnavailableError);
    expect(await operationsOf(principal)).toBe(0);
    expect(await slotsOf(principal)).toBe(0);
    operations.stop();
  });

  it('the slot sweep drops a slot that no operation holds (a lost write applied late), and keeps those of running operations', async () => {
    const principal = `p-${randomUUID()}`;
    const { operations, held } = await daemon();
    const running = await operations.launch(ctxFor(principal), SHUTDOWN, { target: 'vm:held-1', params: { vmName: 'held-1' } });
    const finishedOp = await operations.launch(ctxFor(principal), SHUTDOWN, { target: 'vm:web', params: { vmName: 'web' } });
    expect((await operations.wait(finishedOp.id, 30_000, stopping.signal))?.state).toBe('SUCCEEDED');
    await eventually(async () => (await slotsOf(principal)) === 1);
    // Late writes: a slot for an operation never recorded, and one for an operation already finished.
    const orphan = randomUUID();
    await real.put(`${LAYOUT.slots}${principal}/${orphan}`, new TextEncoder().encode(new Date().toISOString()), { lease: await lease.lease() });
    await real.put(`${LAYOUT.slots}${principal}/${finishedOp.id}`, new TextEncoder().encode(new Date().toISOString()), { lease: await lease.lease() });
    expect(await slotsOf(principal)).toBe(3);
    expect(await operations.sweepSlots()).toBe(2);
    expect((await real.list(`${LAYOUT.slots}${principal}/`)).kvs.map((kv) => kv.key)).toEqual([`${LAYOUT.slots}${principal}/${running.id}`]);
    held.get('held-1')?.();
    expect((await operations.wait(running.id, 30_000, stopping.signal))?.state).toBe('SUCCEEDED');
    await eventually(async () => (await slotsOf(principal)) === 0);
    operations.stop();
  });
});

