// debvisor.testing.v1.TestingService: fake long-running work and quota use, to
// exercise operations and quotas end to end before real backends exist. Registered
// only by `--enable-test-service` together with DEBVISOR_ALLOW_TEST_SERVICE=1.
import { setTimeout as sleep } from 'node:timers/promises';
import { durationMs } from '@bufbuild/protobuf/wkt';
import type { TestingService } from '../gen/debvisor/testing/v1/testing_pb.js';
import type { OperationManager } from '../operations/manager.js';
import type { QuotaManager } from '../quota/manager.js';
import type { HandlersOf } from '../server/adapter.js';
import { InvalidArgumentError, RpcError } from '../server/errors.js';
import { operationMessage } from './operations.js';

export const TEST_OPERATION_KIND = 'TEST';

/** The chain benchmark's tiny handler, served as is by bench/bare-server.ts too. */
export const echo = (request: { text: string }): Promise<{ text: string }> => Promise.resolve({ text: request.text });

interface TestParams {
  readonly durationMs: number;
  readonly steps: number;
  readonly failMessage: string;
  readonly runHostCommand: boolean;
  readonly hold?: boolean;
}

/**
 * Latches of held test operations by operation id. Whichever of the work and its launching
 * handler comes first makes the latch, so a release can never arrive before it exists.
 */
export class TestLatches {
  private readonly latches = new Map<string, { promise: Promise<undefined>; release: () => void }>();

  /** The latch of `id`, made on first use. */
  latch(id: string): Promise<undefined> {
    let entry = this.latches.get(id);
    if (!entry) {
      const { promise, resolve } = Promise.withResolvers<undefined>();
      entry = { promise, release: () => { resolve(undefined); } };
      this.latches.set(id, entry);
    }
    return entry.promise;
  }

  /** Releases `id`'s latch; false when no operation is held under that id. */
  release(id: string): boolean {
    const entry = this.latches.get(id);
    if (!entry) return false;
    this.latches.delete(id);
    entry.release();
    return true;
  }
}

/** Runs a host command for the given time until the signal aborts it. */
export type HostCommand = (seconds: number, signal: AbortSignal) => Promise<unknown>;

export function registerTestOperationKind(operations: OperationManager, hostCommand: HostCommand, latches: TestLatches): void {
  operations.register(TEST_OPERATION_KIND, {
    resumable: true,
    run: async (op) => {
      const params = op.params as TestParams;
      const steps = async () => {
        for (let step = 1; step <= params.steps; step++) {
          await sleep(params.durationMs / params.steps, undefined, { signal: op.signal });
          op.progress((step / params.steps) * 100, `step ${step} of ${params.steps}`);
          if (step === 1 && params.hold) await abortable(latches.latch(op.id), op.signal);
        }
      };
      await Promise.all([steps(), params.runHostCommand ? hostCommand(params.durationMs / 1000, op.signal) : undefined]);
      if (params.failMessage) throw new RpcError('FAILED_PRECONDITION', params.failMessage);
      return undefined;
    },
  });
}

/** Waits for `promise` unless `signal` aborts first (a cancelled held operation ends). */
async function abortable(promise: Promise<undefined>, signal: AbortSignal): Promise<void> {
  signal.throwIfAborted();
  const { promise: aborted, reject } = Promise.withResolvers<never>();
  const onAbort = () => {
    reject(signal.reason);
  };
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    await Promise.race([promise, aborted]);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}

export function testingHandlers(operations: OperationManager, quotas: QuotaManager, latches: TestLatches): HandlersOf<typeof TestingService> {
  return {
    echo,
    startTestOperation: async (request, ctx) => {
      const ms = (request.duration ? durationMs(request.duration) : 1000);
      if (ms < 0 || ms > 600_000) throw new InvalidArgumentError('duration', 'must be between 0 and 10 minutes');
      const params: TestParams = {
        durationMs: ms,
        steps: Math.max(1, Math.min(request.steps || 10, 1000)),
        failMessage: request.failMessage,
        runHostCommand: request.runHostCommand,
        hold: request.hold,
      };
      const record = await operations.launch(ctx, {
        kind: TEST_OPERATION_KIND,
        target: 'test',
        params,
        resumable: request.resumable,
        ...(request.requestId ? { requestId: request.requestId } : {}),
        ...(ctx.quota ? { quota: ctx.quota } : {}),
      });
      if (request.hold) void latches.latch(record.id);
      return { operation: operationMessage(record) };
    },
    releaseTestOperation: (request) => Promise.resolve({ released: latches.release(request.operationId) }),
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
