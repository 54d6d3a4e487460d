// request_id exactly-once against real daemons on a real 3-member etcd:
// - the etcd leader SIGKILLed while clients retry mutations: each request_id ends
//   exactly once (counted in the store afterwards);
// - a daemon SIGKILLed mid-mutation (held on a latch of the test service): the retry on
//   another daemon takes the id over within seconds and runs the call once, or finds the
//   result when the first daemon had finished. Never stuck.
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { TestingService } from '../../src/gen/debvisor/testing/v1/testing_pb.js';
import { TEST_RUNS_PREFIX } from '../../src/services/testing.js';
import { openEtcdStore } from '../../src/store/etcd/store.js';
import { LAYOUT } from '../../src/store/layout.js';
import type { Store } from '../../src/store/store.js';
import { clientFor, type RunningDaemon } from '../support/daemon.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';
import { leaderIndex } from '../support/etcd-leader.js';
import { startTestingDaemon } from '../support/testing.js';

const READY_TIMEOUT_MS = 120_000;
const RETRYABLE = new Set([Status.UNAVAILABLE, Status.ABORTED, Status.DEADLINE_EXCEEDED]);

/** What a well-behaved client does: retry with the same request_id on retryable codes, within an overall budget. */
async function retried<T>(call: () => Promise<T>, budgetMs = 120_000): Promise<{ value: T; attempts: number }> {
  const until = Date.now() + budgetMs;
  for (let attempts = 1; ; attempts++) {
    try {
      return { value: await call(), attempts };
    } catch (err) {
      const code = (err as ServiceError).code;
      if (!RETRYABLE.has(code) || Date.now() > until) throw err;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

async function until<T>(probe: () => Promise<T | undefined>, what: string, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe('request_id exactly-once on a 3-member etcd', () => {
  let etcd: EtcdCluster;
  let store: Store;
  const daemons: RunningDaemon[] = [];
  const startOne = async (name: string, pkiDir?: string): Promise<RunningDaemon> => {
    const daemon = await startTestingDaemon({
      readyTimeoutMs: READY_TIMEOUT_MS,
      ...(pkiDir ? { pkiDir } : {}),
      env: { DEBVISOR_RPCD_STORE_BACKEND: 'etcd', DEBVISOR_RPCD_STORE_ETCD_ENDPOINTS: etcd.endpoints.join(','), DEBVISOR_RPCD_NODE_NAME: name },
    });
    daemons.push(daemon);
    return daemon;
  };
  const runsOf = async (latch: string) => (await store.list(`${TEST_RUNS_PREFIX}${latch}/`)).kvs.map((kv) => new TextDecoder().decode(kv.value));

  beforeAll(async () => {
    etcd = await startEtcd({ members: 3 });
    store = await openEtcdStore({ endpoints: etcd.endpoints, requestTimeoutMs: 10_000 });
    const first = await startOne('eo-a');
    await startOne('eo-b', first.pki.dir);
  }, 300_000);
  afterAll(async () => {
    for (const daemon of daemons) {
      if (!daemon.alive() && daemon.logs().includes('"level":"error"')) console.log(daemon.logs());
      await daemon.cleanup();
    }
    await store.close();
    await etcd.stop();
  });

  it('ends every retried mutation exactly once while the leader is SIGKILLed', { timeout: 300_000 }, async () => {
    const [a, b] = daemons as [RunningDaemon, RunningDaemon];
    const testing = [await clientFor(TestingService, a), await clientFor(TestingService, b)];
    const access = [await clientFor(AccessService, a), await clientFor(AccessService, b)];
    for (const client of testing) await client.openTestLatch({ latch: 'leader' }, { timeoutMs: 10_000 });
    const HOLDS = 24;
    const KEYS = 8;
    const tag = `eo-leader-${Date.now()}`;
    let done = 0;
    // Once only, though four workers get here: a second kill would take the new leader and quorum with it.
    let killing: Promise<number> | undefined;
    const killLeaderOnce = async () => {
      if (done < 4) return;
      killing ??= leaderIndex(etcd).then((leader) => {
        process.kill(etcd.pid(leader)!, 'SIGKILL');
        return leader;
      });
      await killing;
    };
    const work = [
      ...Array.from({ length: HOLDS }, (_, i) => async () => {
        const client = testing[i % 2]!;
        await retried(() => client.holdTestMutation({ latch: 'leader', requestId: `${tag}-hold-${i}` }, { timeoutMs: 5000 }));
      }),
      ...Array.from({ length: KEYS }, (_, i) => async () => {
        const client = access[i % 2]!;
        await retried(() => client.createApiKey({ description: `${tag}-key-${i}`, permissions: ['vm:list'], requestId: `${tag}-key-${i}` }, { timeoutMs: 5000 }));
      }),
    ];
    try {
      // Four clients at a time, the leader killed once a few have finished.
      const queue = [...work];
      await Promise.all(
        Array.from({ length: 4 }, async () => {
          for (let next = queue.shift(); next; next = queue.shift()) {
            await next();
            done++;
            await killLeaderOnce();
          }
        }),
      );
      const killed = await killing;
      expect(killed).toBeDefined();
      // Each request_id ended exactly once: one run per hold, one key per description.
      const runs = await runsOf('leader');
      for (let i = 0; i < HOLDS; i++) expect(runs.filter((id) => id === `${tag}-hold-${i}`)).toHaveLength(1);
      const keys = (await store.list(LAYOUT.apiKeys)).kvs.map((kv) => JSON.parse(new TextDecoder().decode(kv.value)) as { description?: string });
      for (let i = 0; i < KEYS; i++) expect(keys.filter((key) => key.description === `${tag}-key-${i}`)).toHaveLength(1);
    } finally {
      const killed = await killing;
      if (killed !== undefined) await etcd.startMember(killed);
      for (const client of [...testing, ...access]) client.close();
    }
  });

  it('lets a retry on another daemon take over from a daemon SIGKILLed mid-mutation, running the call once', { timeout: 300_000 }, async () => {
    const [a, b] = daemons as [RunningDaemon, RunningDaemon];
    const onA = await clientFor(TestingService, a);
    const onB = await clientFor(TestingService, b);
    // A may still be recovering from the previous test's leader kill: a call it refuses is made again.
    let refused: unknown;
    const hold = () => onA.holdTestMutation({ latch: 'killed', requestId: 'eo-killed' }, { timeoutMs: 120_000 }).catch((err: unknown) => (refused = err));
    let held = hold();
    // The claim is in the store: A is mid-mutation.
    await until(async () => {
      if ((await store.list(LAYOUT.replies)).kvs.some((kv) => kv.key.endsWith('/eo-killed') && kv.value[0] === 2)) return true;
      if (refused !== undefined) {
        refused = undefined;
        held = hold();
      }
      return undefined;
    }, 'the claim of A');
    await a.stop('SIGKILL');
    expect(await held).toBeInstanceOf(Error);
    await onB.openTestLatch({ latch: 'killed' }, { timeoutMs: 10_000 });
    const started = Date.now();
    const retry = await retried(() => onB.holdTestMutation({ latch: 'killed', requestId: 'eo-killed' }, { timeoutMs: 30_000 }), 60_000);
    // Taken over within seconds (the claim's lease is 5 s), not a day.
    expect(Date.now() - started).toBeLessThan(30_000);
    expect(await runsOf('killed')).toEqual(['eo-killed']);
    // And the outcome is kept: another retry replays it.
    expect((await onB.holdTestMutation({ latch: 'killed', requestId: 'eo-killed' }, { timeoutMs: 10_000 })).runId).toBe(retry.value.runId);
    onA.close();
    onB.close();
  });

  it('finds the result of a daemon SIGKILLed after its mutation finished', { timeout: 300_000 }, async () => {
    const b = daemons[1]!;
    const c = await startOne('eo-c', b.pki.dir);
    const onC = await clientFor(TestingService, c);
    const onB = await clientFor(TestingService, b);
    await onC.openTestLatch({ latch: 'finished' }, { timeoutMs: 10_000 });
    const first = await onC.holdTestMutation({ latch: 'finished', requestId: 'eo-finished' }, { timeoutMs: 30_000 });
    await c.stop('SIGKILL');
    await onB.openTestLatch({ latch: 'finished' }, { timeoutMs: 10_000 });
    const retry = await retried(() => onB.holdTestMutation({ latch: 'finished', requestId: 'eo-finished' }, { timeoutMs: 30_000 }), 60_000);
    expect(retry.value.runId).toBe(first.runId);
    expect(await runsOf('finished')).toEqual(['eo-finished']);
    onC.close();
    onB.close();
  });

  it('refuses a reused request_id with different parameters', { timeout: 60_000 }, async () => {
    const onB = await clientFor(TestingService, daemons[1]!);
    await onB.openTestLatch({ latch: 'reuse-1' }, { timeoutMs: 10_000 });
    await onB.holdTestMutation({ latch: 'reuse-1', requestId: 'eo-reuse' }, { timeoutMs: 30_000 });
    const reused = await onB.holdTestMutation({ latch: 'reuse-2', requestId: 'eo-reuse' }, { timeoutMs: 30_000 }).catch((err: unknown) => err as ServiceError);
    expect((reused as ServiceError).code).toBe(Status.INVALID_ARGUMENT);
    expect((reused as ServiceError).details).toContain('request_id reused with different parameters');
    expect(await runsOf('reuse-2')).toEqual([]);
    onB.close();
  });
});
