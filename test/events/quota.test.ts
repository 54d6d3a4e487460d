// QUOTA_EXCEEDED from the quota a proto option declares (withQuota), on the embedded store: about
// the principal whose quota it is, with the refused call's actor and trace id; nothing for a call
// that fits, nor for a charge no call asked for (a backend's rounding).
import { create } from '@bufbuild/protobuf';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config/schema.js';
import { EventKind } from '../../src/gen/debvisor/v1/event_pb.js';
import { ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { CreateSnapshotRequestSchema } from '../../src/gen/debvisor/v1/storage_pb.js';
import { withQuota } from '../../src/quota/guard.js';
import { QuotaManager } from '../../src/quota/manager.js';
import type { CallContext } from '../../src/rpc/context.js';
import { compilePolicy } from '../../src/rpc/policy.js';
import type { Principal } from '../../src/rpc/principal.js';
import { API_SERVICES } from '../../src/services/registry.js';
import { LeaseHolder } from '../../src/store/lease-holder.js';
import { createRepositories } from '../../src/store/repositories.js';
import type { Store } from '../../src/store/store.js';
import { RecordingSink } from '../support/recording-sink.js';
import { embeddedHarness, type StoreHarness } from '../support/store-harness.js';

const settings = (() => ({ quota: { defaults: { concurrent_operations: 5, snapshots: 2, storage_gb: 1 }, recompute_min_interval_seconds: 0 } })) as unknown as () => Config;
const carol: Principal = { id: 'carol', kind: 'certificate' };
const running = new AbortController();
const ctx = (traceId: string): CallContext => ({ traceId, principal: carol, deadline: new Date(Date.now() + 60_000), signal: running.signal, peer: 'test' });

let harness: StoreHarness;
let store: Store;
let lease: LeaseHolder;

beforeAll(async () => {
  harness = await embeddedHarness();
  store = await harness.open();
  lease = new LeaseHolder(store, 15, pino({ level: 'silent' }));
});

afterAll(async () => {
  running.abort();
  await lease.release();
  await store.close();
  await harness.cleanup();
});

describe('QUOTA_EXCEEDED', () => {
  it('is published for the call a declared quota refuses, and only for it', async () => {
    const sink = new RecordingSink();
    const quotas = new QuotaManager(store, createRepositories(store), settings, () => lease.lease(), sink);
    const method = API_SERVICES.flatMap((service) => service.methods).find((m) => m.name === 'CreateSnapshot')!;
    const handler = withQuota(quotas, compilePolicy(method)!, () => Promise.resolve('made'));
    const request = create(CreateSnapshotRequestSchema, { snapshotName: 's' });
    await expect(handler(request, ctx('t-1'))).resolves.toBe('made');
    await expect(handler(request, ctx('t-2'))).resolves.toBe('made');
    await quotas.consume('carol', 'storage_gb', 5).catch(() => undefined);
    expect(sink.events).toEqual([]);

    await expect(handler(request, ctx('t-3'))).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
    expect(sink.events).toMatchObject([
      {
        kind: EventKind.QUOTA_EXCEEDED,
        resource: { kind: ResourceKind.PRINCIPAL, name: 'carol', owner: 'carol' },
        actor: { principal: 'carol' },
        traceId: 't-3',
        payload: { case: 'quota', value: { dimension: 'snapshots', used: 2n, requested: 1n, limit: 2n } },
      },
    ]);
  });
});
