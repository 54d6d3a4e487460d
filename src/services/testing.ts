// debvisor.testing.v1.TestingService: fake long-running work and quota use, to
// exercise operations and quotas end to end before real backends exist. Registered
// only by `--enable-test-service` together with DEBVISOR_ALLOW_TEST_SERVICE=1.
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { durationMs } from '@bufbuild/protobuf/wkt';
import type { TestingService } from '../gen/debvisor/testing/v1/testing_pb.js';
import type { OperationManager } from '../operations/manager.js';
import type { QuotaManager } from '../quota/manager.js';
import type { HandlersOf } from '../server/adapter.js';
import { InvalidArgumentError, RpcError } from '../server/errors.js';
import type { Store } from '../store/store.js';
import { operationMessage } from './operations.js';

export const TEST_OPERATION_KIND = 'TEST';

/** The chain benchmark's tiny handler, served as is by bench/bare-server.ts too. */
export const echo = (request: { text: string }): Promise<{ text: string }> => Promise.resolve({ text: request.text });

interface TestParams {
  readonly durationMs: number;
  readonly steps: number;
  readonly failMessage: string;
  readonly runHostCommand: boolean;
}

/** Runs a host command for the given time until the signal aborts it. */
export type HostCommand = (seconds: number, signal: AbortSignal) => Promise<unknown>;

export function registerTestOperationKind(operations: OperationManager, hostCommand: HostCommand): void {
  operations.register(TEST_OPERATION_KIND, {
    resumable: true,
    run: async (op) => {
      const params = op.params as TestParams;
      const steps = async () => {
        for (let step = 1; step <= params.steps; step++) {
          await sleep(params.durationMs / params.steps, undefined, { signal: op.signal });
          op.progress((step / params.steps) * 100, `step ${step} of ${params.steps}`);
        }
      };
      await Promise.all([steps(), params.runHostCommand ? hostCommand(params.durationMs / 1000, op.signal) : undefined]);
      if (params.failMessage) throw new RpcError('FAILED_PRECONDITION', params.failMessage);
      return undefined;
    },
  });
}

/** Where HoldTestMutation records its runs, so tests can count them on any daemon. */
export const TEST_RUNS_PREFIX = '/debvisor/testing/runs/';
const LATCH_NAME = /^[A-Za-z0-9._-]{1,64}$/;

/** Named latches of this daemon: closed until opened, then open for good. */
class Latches {
  private readonly latches = new Map<string, { opened: Promise<void>; open: () => void; waiting: number }>();

  private of(name: string) {
    let latch = this.latches.get(name);
    if (!latch) {
      let open!: () => void;
      const opened = new Promise<void>((resolve) => (open = resolve));
      latch = { opened, open, waiting: 0 };
      this.latches.set(name, latch);
    }
    return latch;
  }

  async wait(name: string, signal: AbortSignal): Promise<void> {
    const latch = this.of(name);
    latch.waiting++;
    try {
      await Promise.race([latch.opened, new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason as Error), { once: true }))]);
    } finally {
      latch.waiting--;
    }
  }

  open(name: string): number {
    const latch = this.of(name);
    latch.open();
    return latch.waiting;
  }
}

function latchName(value: string): string {
  if (!LATCH_NAME.test(value)) throw new InvalidArgumentError('latch', 'at most 64 letters, digits and . _ -');
  return value;
}

export function testingHandlers(operations: OperationManager, quotas: QuotaManager, store: Store): HandlersOf<typeof TestingService> {
  const latches = new Latches();
  return {
    holdTestMutation: async (request, ctx) => {
      const latch = latchName(request.latch);
      await latches.wait(latch, ctx.signal);
      const runId = randomUUID();
      await store.put(`${TEST_RUNS_PREFIX}${latch}/${runId}`, new TextEncoder().encode(request.requestId));
      return { runId };
    },
    openTestLatch: (request) => Promise.resolve({ released: latches.open(latchName(request.latch)) }),
    echo,
    startTestOperation: async (request, ctx) => {
      const ms = (request.duration ? durationMs(request.duration) : 1000);
      if (ms < 0 || ms > 600_000) throw new InvalidArgumentError('duration', 'must be between 0 and 10 minutes');
      const params: TestParams = { durationMs: ms, steps: Math.max(1, Math.min(request.steps || 10, 1000)), failMessage: request.failMessage, runHostCommand: request.runHostCommand };
      const record = await operations.launch(ctx, {
        kind: TEST_OPERATION_KIND,
        target: 'test',
        params,
        resumable: request.resumable,
        ...(request.requestId ? { requestId: request.requestId } : {}),
        ...(ctx.quota ? { quota: ctx.quota } : {}),
      });
      return { operation: operationMessage(record) };
    },
    releaseTestQuota: async (_request, ctx) => {
      // What a delete handler does with the quota its object took.
      const principal = ctx.principal?.id ?? '';
      await quotas.release(principal, 'snapshots', 1);
      return { used: BigInt(await quotas.usage(principal, 'snapshots')) };
    },
    consumeTestQuota: async (_request, ctx) => {
      // The snapshots unit was taken by the quota guard, from the proto option.
      const usage = await quotas.usage(ctx.principal?.id ?? '', 'snapshots');
      return { used: BigInt(usage) };
    },
  };
}
