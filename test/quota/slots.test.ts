// The concurrent-operations quota under contention: rounds of concurrent acquisitions
// over one QuotaManager per "daemon" (each with its own store client and lease), on a
// 3-member etcd with each client pinned to a different member, on one etcd client, and
// on the embedded store. Admissions never exceed the limit. (A daemon-level run of the
// same property is in test/e2e/quota-slots.test.ts.)
import { randomUUID } from 'node:crypto';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config/schema.js';
import { QuotaManager } from '../../src/quota/manager.js';
import { RpcError } from '../../src/rpc/errors.js';
import { openEtcdStore } from '../../src/store/etcd/store.js';
import { LeaseHolder } from '../../src/store/lease-holder.js';
import { createRepositories } from '../../src/store/repositories.js';
import type { Store } from '../../src/store/store.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';
import { embeddedHarness, type StoreHarness } from '../support/store-harness.js';

const LIMIT = 3;
const ROUNDS = 20;
const CALLS = 21;
const settings = (() => ({ quota: { defaults: { concurrent_operations: LIMIT, snapshots: 0, storage_gb: 0 } } })) as unknown as () => Config;

interface Daemonish {
  readonly quotas: QuotaManager;
  readonly lease: LeaseHolder;
}

function daemonOn(store: Store): Daemonish {
  const lease = new LeaseHolder(store, 15, pino({ level: 'silent' }));
  return { lease, quotas: new QuotaManager(store, createRepositories(store), settings, () => lease.lease()) };
}

/** Rounds of CALLS concurrent acquisitions spread over the daemons; returns the admissions per round. */
async function rounds(daemons: readonly Daemonish[], principal: string): Promise<number[]> {
  const admitted: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const ids = Array.from({ length: CALLS }, () => randomUUID());
    const outcomes = await Promise.allSettled(ids.map((id, i) => daemons[i % daemons.length]!.quotas.acquireSlot(principal, id)));
    for (const outcome of outcomes) {
      if (outcome.status === 'rejected') expect(outcome.reason).toBeInstanceOf(RpcError);
      if (outcome.status === 'rejected') expect(['RESOURCE_EXHAUSTED', 'ABORTED']).toContain((outcome.reason as RpcError).code);
    }
    admitted.push(outcomes.filter((o) => o.status === 'fulfilled').length);
    await Promise.all(ids.map((id, i) => daemons[i % daemons.length]!.quotas.releaseSlot(principal, id)));
  }
  return admitted;
}

function expectExact(admitted: number[]): void {
  expect(Math.max(...admitted)).toBeLessThanOrEqual(LIMIT);
  // Contention may abort some attempts, but a round that admits nobody would hide a broken test.
  expect(admitted.filter((n) => n > 0).length).toBeGreaterThan(ROUNDS / 2);
}

describe('concurrent-operations slots on a 3-member etcd', () => {
  let etcd: EtcdCluster;
  const stores: Store[] = [];
  const daemons: Daemonish[] = [];
  beforeAll(async () => {
    etcd = await startEtcd({ members: 3 });
    for (const endpoint of etcd.endpoints) {
      const store = await openEtcdStore({ endpoints: [endpoint], requestTimeoutMs: 10_000 });
      stores.push(store);
      daemons.push(daemonOn(store));
    }
  }, 120_000);
  afterAll(async () => {
    for (const d of daemons) await d.lease.release();
    for (const s of stores) await s.close();
    await etcd.stop();
  });

  it(`never admits more than ${LIMIT} of ${CALLS} concurrent acquisitions spread over three daemons`, { timeout: 300_000 }, async () => {
    expectExact(await rounds(daemons, 'spread'));
  });

  it(`never admits more than ${LIMIT} of ${CALLS} concurrent acquisitions on one daemon`, { timeout: 300_000 }, async () => {
    expectExact(await rounds([daemons[0]!], 'single'));
  });
});

describe('concurrent-operations slots on the embedded store', () => {
  let harness: StoreHarness;
  let store: Store;
  let daemon: Daemonish;
  beforeAll(async () => {
    harness = await embeddedHarness();
    store = await harness.open();
    daemon = daemonOn(store);
  });
  afterAll(async () => {
    await daemon.lease.release();
    await store.close();
    await harness.cleanup();
  });

  it(`never admits more than ${LIMIT} of ${CALLS} concurrent acquisitions`, { timeout: 120_000 }, async () => {
    expectExact(await rounds([daemon], 'embedded'));
  });
});
