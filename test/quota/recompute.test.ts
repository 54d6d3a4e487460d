// QuotaManager.recompute on the embedded store: each usage source is asked once for all the
// resources it counts, with the call's signal (its host commands end with the call's deadline);
// one recount at a time and at most one per quota.recompute_min_interval_seconds.
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config/schema.js';
import { QuotaManager } from '../../src/quota/manager.js';
import { RpcError } from '../../src/rpc/errors.js';
import { LeaseHolder } from '../../src/store/lease-holder.js';
import { createRepositories } from '../../src/store/repositories.js';
import type { Store } from '../../src/store/store.js';
import { embeddedHarness, type StoreHarness } from '../support/store-harness.js';

let harness: StoreHarness;
let store: Store;
let lease: LeaseHolder;
let intervalSeconds = 0;
const settings = (() => ({
  quota: { defaults: { concurrent_operations: 5, snapshots: 100, storage_gb: 100 }, recompute_min_interval_seconds: intervalSeconds },
})) as unknown as () => Config;

beforeAll(async () => {
  harness = await embeddedHarness();
  store = await harness.open();
  lease = new LeaseHolder(store, 15, pino({ level: 'silent' }));
});

afterAll(async () => {
  await lease.release();
  await store.close();
  await harness.cleanup();
});

const manager = () => new QuotaManager(store, createRepositories(store), settings, () => lease.lease());
const usedOf = (view: { resource: string; used: number }[], resource: string) => view.find((q) => q.resource === resource)?.used;

/** Rejects with what `p` rejects with. */
async function refusal(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => {
      throw new Error('expected a refusal');
    },
    (err: unknown) => err,
  );
}

describe('QuotaManager.recompute', () => {
  it('asks each source once for all it counts and sums the sources of one resource', async () => {
    intervalSeconds = 0;
    const quotas = manager();
    const asked: string[] = [];
    quotas.registerUsageSource(['storage_gb', 'snapshots'], (principal) => {
      asked.push(`storage:${principal}`);
      return Promise.resolve({ storage_gb: 7, snapshots: 2 });
    });
    quotas.registerUsageSource(['snapshots'], (principal) => {
      asked.push(`vms:${principal}`);
      return Promise.resolve({ snapshots: 3 });
    });
    const { after, notRecounted } = await quotas.recompute('p1');
    expect(asked.sort()).toEqual(['storage:p1', 'vms:p1']);
    // Only the dimensions no source counts are left as they were.
    expect(notRecounted).toEqual(['vms', 'vcpus', 'memory_gb', 'images_gb']);
    expect([usedOf(after, 'storage_gb'), usedOf(after, 'snapshots')]).toEqual([7, 5]);
  });

  it('leaves a resource as it is when one of its sources cannot count now (no partial sum)', async () => {
    intervalSeconds = 0;
    const quotas = manager();
    await quotas.consume('p-partial', 'snapshots', 4);
    await quotas.consume('p-partial', 'vms', 2);
    quotas.registerUsageSource(['snapshots'], () => Promise.resolve({ snapshots: 1 }));
    quotas.registerUsageSource(['snapshots', 'vms'], () => Promise.resolve(undefined));
    const { after, notRecounted } = await quotas.recompute('p-partial');
    expect(notRecounted).toEqual(expect.arrayContaining(['snapshots', 'vms']));
    expect([usedOf(after, 'snapshots'), usedOf(after, 'vms')]).toEqual([4, 2]);
  });

  it('passes the call signal to the sources: an aborted call ends their work and frees the gate', async () => {
    intervalSeconds = 0;
    const quotas = manager();
    let seen: AbortSignal | undefined;
    quotas.registerUsageSource(['storage_gb'], (_principal, { signal }) => {
      seen = signal;
      // Like a host command (src/backends/exec.ts): refused if the call has already ended, killed when it ends.
      return new Promise((_resolve, reject) => {
        if (signal?.aborted) reject(new Error('killed at the deadline'));
        signal?.addEventListener('abort', () => reject(new Error('killed at the deadline')), { once: true });
      });
    });
    const controller = new AbortController();
    const running = quotas.recompute('p2', { signal: controller.signal });
    const busy = await refusal(quotas.recompute('p3'));
    expect(busy).toBeInstanceOf(RpcError);
    expect((busy as RpcError).code).toBe('RESOURCE_EXHAUSTED');
    expect((busy as RpcError).message).toContain('another RecomputeQuota is running');
    controller.abort();
    expect(await refusal(running)).toMatchObject({ message: 'killed at the deadline' });
    expect(seen).toBe(controller.signal);
    // The gate is free again (interval 0): the next recount runs.
    const done = new AbortController();
    const next = quotas.recompute('p2', { signal: done.signal });
    done.abort();
    await expect(next).rejects.toThrow('killed at the deadline');
  });

  it('refuses a recount within the minimum interval after the last one ended, with RetryInfo', async () => {
    intervalSeconds = 600;
    const quotas = manager();
    quotas.registerUsageSource(['storage_gb'], () => Promise.resolve({ storage_gb: 1 }));
    await quotas.recompute('p4');
    const soon = await refusal(quotas.recompute('p5'));
    expect(soon).toBeInstanceOf(RpcError);
    expect((soon as RpcError).code).toBe('RESOURCE_EXHAUSTED');
    expect((soon as RpcError).message).toMatch(/at most once every 600 s on this node; retry in \d+ s/);
    expect((soon as RpcError).details?.retryAfterMs).toBeGreaterThan(590_000);
  });
});
