// The concurrent-operations quota on real daemons: rounds of 21 concurrent
// StartTestOperation calls (limit 3) spread over three daemons on a 3-member etcd, and
// on one of them alone. Admissions never exceed the limit. (QuotaManager-level rounds,
// also on the embedded store, are in test/quota/slots.test.ts.)
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestingService } from '../../src/gen/debvisor/testing/v1/testing_pb.js';
import { OperationService } from '../../src/gen/debvisor/v1/operation_pb.js';
import { openEtcdStore } from '../../src/store/etcd/store.js';
import { LAYOUT } from '../../src/store/layout.js';
import type { Store } from '../../src/store/store.js';
import { clientFor, type RunningDaemon } from '../support/daemon.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';
import { startTestingDaemon } from '../support/testing.js';

const LIMIT = 3;
const ROUNDS = 20;
const CALLS = 21;

describe('concurrent-operations quota over daemons on a 3-member etcd', () => {
  let etcd: EtcdCluster;
  let store: Store;
  const daemons: RunningDaemon[] = [];

  beforeAll(async () => {
    etcd = await startEtcd({ members: 3 });
    store = await openEtcdStore({ endpoints: etcd.endpoints, requestTimeoutMs: 10_000 });
    for (const name of ['qs-a', 'qs-b', 'qs-c']) {
      daemons.push(
        await startTestingDaemon({
          readyTimeoutMs: 120_000,
          ...(daemons[0] ? { pkiDir: daemons[0].pki.dir } : {}),
          // Two runs of 20 rounds of 21 calls, plus cancels and waits, go past the default 1000 calls a minute.
          config: { quota: { defaults: { concurrent_operations: LIMIT } }, rate_limit: { per_role_per_minute: { admin: 100_000 } } },
          env: { DEBVISOR_RPCD_STORE_BACKEND: 'etcd', DEBVISOR_RPCD_STORE_ETCD_ENDPOINTS: etcd.endpoints.join(','), DEBVISOR_RPCD_NODE_NAME: name },
        }),
      );
    }
  }, 400_000);
  afterAll(async () => {
    for (const daemon of daemons) await daemon.cleanup();
    await store.close();
    await etcd.stop();
  });

  async function rounds(over: readonly RunningDaemon[]): Promise<number[]> {
    const testing = await Promise.all(over.map((daemon) => clientFor(TestingService, daemon)));
    const ops = await clientFor(OperationService, over[0]!);
    const admitted: number[] = [];
    try {
      for (let round = 0; round < ROUNDS; round++) {
        const outcomes = await Promise.allSettled(
          Array.from({ length: CALLS }, (_, i) => testing[i % testing.length]!.startTestOperation({ duration: durationFromMs(600_000) }, { timeoutMs: 60_000 })),
        );
        const started = outcomes.flatMap((o) => (o.status === 'fulfilled' ? [o.value.operation!.id] : []));
        // Cancelled before any assertion, so a failed round leaves no operation holding a slot for the next test.
        for (const id of started) {
          await ops.cancelOperation({ operationId: id }, { timeoutMs: 30_000 });
          await ops.waitOperation({ operationId: id, timeout: durationFromMs(30_000) }, { timeoutMs: 40_000 });
        }
        const refusals = outcomes.flatMap((o) => (o.status === 'rejected' ? [o.reason as ServiceError] : []));
        for (const refusal of refusals) {
          expect([Status.RESOURCE_EXHAUSTED, Status.ABORTED], `round ${round}: ${refusal.code} ${refusal.details}`).toContain(refusal.code);
        }
        admitted.push(started.length);
        // The next round starts with every slot free (slot keys are <principal>/<operation>; markers stay).
        const slotsHeld = async () => (await store.list(LAYOUT.slots)).kvs.filter((kv) => kv.key.slice(LAYOUT.slots.length).includes('/')).length;
        for (let deadline = Date.now() + 60_000; (await slotsHeld()) > 0; ) {
          if (Date.now() > deadline) throw new Error('slots not freed within 60 s');
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      }
    } finally {
      for (const client of [...testing, ops]) client.close();
    }
    return admitted;
  }

  it(`admits at most ${LIMIT} of ${CALLS} concurrent calls spread over three daemons`, { timeout: 900_000 }, async () => {
    const admitted = await rounds(daemons);
    expect(Math.max(...admitted)).toBeLessThanOrEqual(LIMIT);
    expect(admitted.filter((n) => n > 0).length).toBeGreaterThan(ROUNDS / 2);
  });

  it(`admits at most ${LIMIT} of ${CALLS} concurrent calls on one daemon`, { timeout: 900_000 }, async () => {
    const admitted = await rounds([daemons[0]!]);
    expect(Math.max(...admitted)).toBeLessThanOrEqual(LIMIT);
    expect(admitted.filter((n) => n > 0).length).toBeGreaterThan(ROUNDS / 2);
  });
});
