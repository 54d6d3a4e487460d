// Quotas across daemons sharing one etcd: exact under concurrency, and slots of a
// killed daemon freed by its lease.
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import { fromBinary } from '@bufbuild/protobuf';
import { anyUnpack } from '@bufbuild/protobuf/wkt';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestingService } from '../../src/gen/debvisor/testing/v1/testing_pb.js';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { OperationService } from '../../src/gen/debvisor/v1/operation_pb.js';
import { QuotaResource } from '../../src/gen/debvisor/v1/options_pb.js';
import { QuotaFailureSchema } from '../../src/gen/google/rpc/error_details_pb.js';
import { StatusSchema } from '../../src/gen/google/rpc/status_pb.js';
import { auditRecords, clientFor, type RunningDaemon } from '../support/daemon.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';
import { startTestingDaemon } from '../support/testing.js';

const ADMIN = 'spiffe://debvisor/admin/admin';

describe('quotas on a shared etcd', () => {
  let etcd: EtcdCluster;
  let a: RunningDaemon;
  let b: RunningDaemon;

  beforeAll(async () => {
    etcd = await startEtcd();
    const env = (node: string) => ({
      DEBVISOR_RPCD_STORE_BACKEND: 'etcd',
      DEBVISOR_RPCD_STORE_ETCD_ENDPOINTS: etcd.endpoints.join(','),
      DEBVISOR_RPCD_NODE_NAME: node,
      DEBVISOR_RPCD_OPERATIONS_SLOT_LEASE_SECONDS: '3',
    });
    a = await startTestingDaemon({ env: env('node-a') });
    b = await startTestingDaemon({ env: env('node-b'), pkiDir: a.pki.dir });
  });

  afterAll(async () => {
    await a.cleanup();
    await b.cleanup();
    await etcd.stop();
  });

  it('lets exactly `limit` of 50 concurrent consumers through two daemons succeed', async () => {
    const access = await clientFor(AccessService, a);
    await access.setQuota({ principal: ADMIN, resource: QuotaResource.SNAPSHOTS, limit: 10n }, { timeoutMs: 5000 });
    const clients = [await clientFor(TestingService, a), await clientFor(TestingService, b)];
    const outcomes = await Promise.allSettled(Array.from({ length: 50 }, (_, i) => clients[i % 2]!.consumeTestQuota({}, { timeoutMs: 20_000 })));
    const succeeded = outcomes.filter((o) => o.status === 'fulfilled');
    const refused = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected').map((o) => o.reason as ServiceError);
    expect(succeeded).toHaveLength(10);
    expect(refused.every((err) => err.code === Status.RESOURCE_EXHAUSTED)).toBe(true);
    // The refusal carries google.rpc.QuotaFailure naming the resource and the limit.
    const details = refused[0]!.metadata.get('grpc-status-details-bin')[0] as Buffer;
    const failure = anyUnpack(fromBinary(StatusSchema, details).details[0]!, QuotaFailureSchema);
    expect(failure?.violations[0]?.subject).toBe(`principal:${ADMIN}/snapshots`);
    expect(failure?.violations[0]?.description).toContain('limit 10');
    const quota = await access.getQuota({}, { timeoutMs: 5000 });
    expect(quota.quotas.find((q) => q.resource === QuotaResource.SNAPSHOTS)).toMatchObject({ used: 10n, limit: 10n });
    // Refusals are audited (one CALL record each, with the code and the reason).
    await new Promise((resolve) => setTimeout(resolve, 300));
    const audited = [...auditRecords(a), ...auditRecords(b)].filter((r) => r.type === 'CALL' && r.code === 'RESOURCE_EXHAUSTED' && String(r.method).endsWith('/ConsumeTestQuota'));
    expect(audited).toHaveLength(40);
    expect(String(audited[0]?.reason)).toContain('quota exceeded: snapshots');
    // Deleting gives a unit back, and the freed unit can be taken again.
    expect((await clients[0]!.releaseTestQuota({}, { timeoutMs: 5000 })).used).toBe(9n);
    expect((await clients[1]!.consumeTestQuota({}, { timeoutMs: 5000 })).used).toBe(10n);
    for (const client of clients) client.close();
    access.close();
  });

  it('counts running operations live in GetQuota, and RecomputeQuota says what it cannot recount', async () => {
    const access = await clientFor(AccessService, a);
    const testing = await clientFor(TestingService, a);
    const started = await testing.startTestOperation({ duration: durationFromMs(30_000) }, { timeoutMs: 5000 });
    const quota = await access.getQuota({}, { timeoutMs: 5000 });
    expect(quota.quotas.find((q) => q.resource === QuotaResource.CONCURRENT_OPERATIONS)?.used).toBe(1n);
    const recount = await access.recomputeQuota({ principal: ADMIN }, { timeoutMs: 5000 });
    // No storage and no libvirt on these daemons: storage_gb and the VM dimensions cannot be
    // recounted (nor zeroed). Snapshots can (VM snapshot owners in the store): the 10 units the
    // test service took stand for no real snapshot, so they go.
    expect(recount.notRecounted).toEqual([QuotaResource.STORAGE_GB, QuotaResource.VMS, QuotaResource.VCPUS, QuotaResource.MEMORY_GB]);
    expect(recount.before.find((q) => q.resource === QuotaResource.SNAPSHOTS)?.used).toBe(10n);
    expect(recount.after.find((q) => q.resource === QuotaResource.SNAPSHOTS)?.used).toBe(0n);
    const ops = await clientFor(OperationService, a);
    await ops.cancelOperation({ operationId: started.operation!.id }, { timeoutMs: 5000 });
    await ops.waitOperation({ operationId: started.operation!.id, timeout: durationFromMs(5000) }, { timeoutMs: 10_000 });
    expect((await access.getQuota({}, { timeoutMs: 5000 })).quotas.find((q) => q.resource === QuotaResource.CONCURRENT_OPERATIONS)?.used).toBe(0n);
    for (const client of [access, testing, ops]) client.close();
  });

  it('frees the slots of a daemon killed with SIGKILL within its lease TTL', async () => {
    const access = await clientFor(AccessService, b);
    await access.setQuota({ principal: ADMIN, resource: QuotaResource.CONCURRENT_OPERATIONS, limit: 1n }, { timeoutMs: 5000 });
    const onA = await clientFor(TestingService, a);
    await onA.startTestOperation({ duration: durationFromMs(60_000) }, { timeoutMs: 5000 });
    onA.close();
    const onB = await clientFor(TestingService, b);
    await expect(onB.startTestOperation({ duration: durationFromMs(10) }, { timeoutMs: 5000 })).rejects.toMatchObject({ code: Status.RESOURCE_EXHAUSTED });
    await a.stop('SIGKILL');
    const killedAt = Date.now();
    let freedAfter: number | undefined;
    while (Date.now() - killedAt < 10_000) {
      try {
        await onB.startTestOperation({ duration: durationFromMs(10) }, { timeoutMs: 5000 });
        freedAfter = Date.now() - killedAt;
        break;
      } catch (err) {
        expect((err as ServiceError).code).toBe(Status.RESOURCE_EXHAUSTED);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
    console.log(`slot freed ${freedAfter} ms after SIGKILL (lease TTL 3 s)`);
    expect(freedAfter).toBeDefined();
    expect(freedAfter).toBeLessThan(3000 + 1500);
    onB.close();
    access.close();
  });
});
