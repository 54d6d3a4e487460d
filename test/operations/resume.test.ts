// What a resumable operation's work sees across a restart, on the real embedded store: `resumed`
// is false on the launching daemon and true on the one that recovers it, and a step claimed by
// the first run is not claimed again by the resumed one (OperationHandle.claim), so an effect
// guarded by it (a quota refund) happens once. A cancel requested before the restart reaches the
// resumed work as an aborted signal: it still runs, to undo what the first run left.
import { randomUUID } from 'node:crypto';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { z } from 'zod';
import type { Config } from '../../src/config/schema.js';
import { OperationKind } from '../../src/gen/debvisor/v1/operation_pb.js';
import { defineOperationKind } from '../../src/operations/kinds.js';
import { OperationManager, type OperationHandle } from '../../src/operations/manager.js';
import { QuotaManager } from '../../src/quota/manager.js';
import type { CallContext } from '../../src/rpc/context.js';
import { RecordCache } from '../../src/store/cache.js';
import { LeaseHolder } from '../../src/store/lease-holder.js';
import { createRepositories, type Repositories } from '../../src/store/repositories.js';
import type { Store } from '../../src/store/store.js';
import { embeddedHarness, type StoreHarness } from '../support/store-harness.js';

const KIND = defineOperationKind(OperationKind.SHUTDOWN_VM, z.object({ vmName: z.string() }), 'shutdown');
const silent = pino({ level: 'silent' });
const settings = (() => ({ quota: { defaults: { concurrent_operations: 10 }, recompute_min_interval_seconds: 0 } })) as unknown as () => Config;
const stopping = new AbortController();
const WAIT = { timeout: 30_000, interval: 20 };

let harness: StoreHarness;
let store: Store;
let repos: Repositories;
let lease: LeaseHolder;

beforeAll(async () => {
  harness = await embeddedHarness();
  store = await harness.open();
  repos = createRepositories(store);
  lease = new LeaseHolder(store, 15, silent);
});

afterAll(async () => {
  stopping.abort();
  await lease.release();
  await store.close();
  await harness.cleanup();
});

interface Seen {
  readonly resumed: boolean;
  readonly claimed: boolean;
  readonly claimedAgain: boolean;
  readonly aborted: boolean;
}

/** A daemon's operation manager on the shared store; its work claims "refund" and, on its first run, waits until it is stopped. */
async function daemon(seen: Seen[]): Promise<OperationManager> {
  const cache = new RecordCache(repos.operations, () => undefined);
  await cache.start(stopping.signal);
  const operations = new OperationManager(repos, cache, new QuotaManager(store, repos, settings, () => lease.lease()), 'node-a', silent, () => 3_600_000);
  operations.register(KIND, {
    resumable: true,
    run: async (op: OperationHandle<{ vmName: string }>) => {
      const aborted = op.signal.aborted;
      seen.push({ resumed: op.resumed, claimed: await op.claim('refund'), claimedAgain: await op.claim('refund'), aborted });
      if (!op.resumed) await new Promise((_resolve, reject) => op.signal.addEventListener('abort', () => reject(op.signal.reason as Error)));
      op.signal.throwIfAborted();
      return { case: 'shutdown', value: { vmName: op.params.vmName, forced: false } };
    },
  });
  await operations.recover();
  return operations;
}

const ctx = (): CallContext => ({ traceId: randomUUID(), principal: { id: 'p', kind: 'certificate' }, deadline: new Date(Date.now() + 60_000), signal: stopping.signal, peer: 'test' });

describe('a resumable operation across a restart', () => {
  it('runs first with resumed false, then resumed on the next start, where a step claimed before is not claimed again', async () => {
    const seen: Seen[] = [];
    const first = await daemon(seen);
    const started = await first.launch(ctx(), KIND, { target: 'vm:web', params: { vmName: 'web' }, resumable: true });
    await vi.waitFor(() => expect(seen).toHaveLength(1), WAIT);
    // A graceful stop leaves resumable work for the next start.
    first.stop();
    await vi.waitFor(async () => expect((await repos.operations.get(started.id))?.value).toMatchObject({ state: 'RUNNING', claimed_steps: ['refund'] }), WAIT);

    const second = await daemon(seen);
    const done = await second.wait(started.id, 30_000, stopping.signal);
    expect(done?.state).toBe('SUCCEEDED');
    expect(seen).toEqual([
      { resumed: false, claimed: true, claimedAgain: false, aborted: false },
      { resumed: true, claimed: false, claimedAgain: false, aborted: false },
    ]);
    second.stop();
  });

  it('a cancel requested before the restart: the resumed work runs with its signal aborted, and the operation ends CANCELLED', async () => {
    const seen: Seen[] = [];
    const first = await daemon(seen);
    const started = await first.launch(ctx(), KIND, { target: 'vm:db', params: { vmName: 'db' }, resumable: true });
    await vi.waitFor(() => expect(seen).toHaveLength(1), WAIT);
    first.stop();
    await vi.waitFor(async () => expect((await repos.operations.get(started.id))?.value.state).toBe('RUNNING'), WAIT);
    // Asked through another daemon while this one was down.
    await repos.operations.mutate(started.id, (current) => current && { ...current, cancel_requested: true });

    const second = await daemon(seen);
    const done = await second.wait(started.id, 30_000, stopping.signal);
    expect(done?.state).toBe('CANCELLED');
    expect(seen[1]).toEqual({ resumed: true, claimed: false, claimedAgain: false, aborted: true });
    second.stop();
  });
});
