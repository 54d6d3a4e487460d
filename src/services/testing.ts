// debvisor.testing.v1.TestingService: fake long-running work and quota use, to
// exercise operations and quotas end to end before real backends exist. Registered
// only by `--enable-test-service` together with DEBVISOR_ALLOW_TEST_SERVICE=1.
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { durationMs } from '@bufbuild/protobuf/wkt';
import type { TestingService } from '../gen/debvisor/testing/v1/testing_pb.js';
import { z } from 'zod';
import { OperationKind } from '../gen/debvisor/v1/operation_pb.js';
import type { OperationManager } from '../operations/manager.js';
import { defineOperationKind } from '../operations/kinds.js';
import type { QuotaManager } from '../quota/manager.js';
import type { HandlersOf } from '../rpc/adapter.js';
import { InvalidArgumentError, RpcError } from '../rpc/errors.js';
import type { Store } from '../store/store.js';
import type { EventSink } from '../events/types.js';
import { operationMessage } from './operations.js';


/** The chain benchmark's tiny handler, served as is by bench/bare-server.ts too. */
export const echo = (request: { text: string }): Promise<{ text: string }> => Promise.resolve({ text: request.text });

/** StartTestOperation's timed work; it gives no result. */
export const TEST_OPERATION = defineOperationKind(
  OperationKind.TEST,
  z.object({
    durationMs: z.number(),
    steps: z.number(),
    failMessage: z.string(),
    runHostCommand: z.boolean(),
    /** After its first step, the work waits until this latch opens. */
    latch: z.string().optional(),
  }),
  undefined,
);

/** Where HoldTestMutation records its runs, so tests can count them on any daemon. */
export const TEST_RUNS_PREFIX = '/debvisor/testing/runs/';
const LATCH_NAME = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * Named latches of this daemon, closed until OpenTestLatch opens them, then open for good: a
 * test holds work mid-flight on one (a held mutation, a test operation after its first step)
 * and opens it when it has seen what it must, so no test depends on timing.
 */
export class TestLatches {
  private readonly latches = new Map<string, { opened: Promise<undefined>; open: () => void; waiting: number }>();

  private of(name: string) {
    let latch = this.latches.get(name);
    if (!latch) {
      const { promise, resolve } = Promise.withResolvers<undefined>();
      latch = {
        opened: promise,
        open: () => {
          resolve(undefined);
        },
        waiting: 0,
      };
      this.latches.set(name, latch);
    }
    return latch;
  }

  /** Waits until `name` is open, or until `signal` aborts. */
  async wait(name: string, signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    const latch = this.of(name);
    const { promise: aborted, reject } = Promise.withResolvers<never>();
    const onAbort = () => {
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    latch.waiting++;
    try {
      await Promise.race([latch.opened, aborted]);
    } finally {
      latch.waiting--;
      signal.removeEventListener('abort', onAbort);
    }
  }

  /** Opens `name` for good; returns how many were waiting on it. */
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

/** Runs a host command for the given time until the signal aborts it. */
export type HostCommand = (seconds: number, signal: AbortSignal) => Promise<unknown>;

export function registerTestOperationKind(operations: OperationManager, hostCommand: HostCommand, latches: TestLatches): void {
  operations.register(TEST_OPERATION, {
    resumable: true,
    run: async (op) => {
      const params = op.params;
      const steps = async () => {
        for (let step = 1; step <= params.steps; step++) {
          await sleep(params.durationMs / params.steps, undefined, { signal: op.signal });
          op.progress((step / params.steps) * 100, `step ${step} of ${params.steps}`);
          if (step === 1 && params.latch) await latches.wait(params.latch, op.signal);
        }
      };
      await Promise.all([steps(), params.runHostCommand ? hostCommand(params.durationMs / 1000, op.signal) : undefined]);
      if (params.failMessage) throw new RpcError('FAILED_PRECONDITION', params.failMessage);
      return { case: undefined };
    },
  });
}

export function testingHandlers(operations: OperationManager, quotas: QuotaManager, store: Store, latches: TestLatches, events: EventSink): HandlersOf<typeof TestingService> {
  return {
    publishTestEvents: (request) => {
      const repeat = Math.max(1, request.repeat);
      if (repeat * request.events.length > 1_000_000) throw new InvalidArgumentError('repeat', 'at most a million events per call');
      for (let i = 0; i < repeat; i++) for (const e of request.events) events.publish({ kind: e.kind, resource: e.resource, actor: e.actor, traceId: e.traceId, payload: e.payload });
      return Promise.resolve({ published: repeat * request.events.length });
    },
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
      const params = {
        durationMs: ms,
        steps: Math.max(1, Math.min(request.steps || 10, 1000)),
        failMessage: request.failMessage,
        runHostCommand: request.runHostCommand,
        ...(request.latch ? { latch: latchName(request.latch) } : {}),
      };
      const record = await operations.launch(ctx, TEST_OPERATION, {
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
