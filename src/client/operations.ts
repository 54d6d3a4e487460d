// Waiting for an Operation (ShutdownVm with wait, MigrateVm, ProvisionVolume...): follow
// OperationService.WatchOperation until a terminal state, reporting each change.
import { setTimeout as delay } from 'node:timers/promises';
import { status as Status } from '@grpc/grpc-js';
import type { GenService, GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import { OperationState, type Operation, type OperationService } from '../gen/debvisor/v1/operation_pb.js';
import type { TypedClient } from './client.js';

type MethodsOf<T> = T extends GenService<infer S extends GenServiceMethods> ? S : never;
export type OperationClient = TypedClient<MethodsOf<typeof OperationService>>;

export interface WaitForOptions {
  /** Called with the operation each time it changes (state, progress_percent, stage). */
  readonly onProgress?: (operation: Operation) => void;
  /** Gives up with DEADLINE_EXCEEDED after this long; default: wait as long as it runs. */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
}

const TERMINAL: ReadonlySet<OperationState> = new Set([OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED]);

export function isDone(operation: Operation): boolean {
  return TERMINAL.has(operation.state);
}

function codeOf(err: unknown): unknown {
  return (err as { code?: unknown } | undefined)?.code;
}

/**
 * The operation once it has ended (SUCCEEDED, FAILED or CANCELLED: check `state` and `error`).
 * A dropped stream (UNAVAILABLE, a daemon restart) is picked up again with GetOperation and a
 * new watch, pausing longer each time nothing changed.
 */
export async function waitForOperation(operations: OperationClient, operation: Operation, options: WaitForOptions = {}): Promise<Operation> {
  const deadline = options.timeoutMs === undefined ? undefined : Date.now() + options.timeoutMs;
  const remaining = () => (deadline === undefined ? undefined : Math.max(0, deadline - Date.now()));
  let current = operation;
  let pauseMs = 100;
  while (!isDone(current)) {
    const before = current.updateTime;
    try {
      for await (const update of operations.watchOperation({ operationId: current.id }, { timeoutMs: remaining(), signal: options.signal })) {
        if (!update.operation) continue;
        current = update.operation;
        options.onProgress?.(current);
        if (isDone(current)) return current;
      }
    } catch (err) {
      if (codeOf(err) !== Status.UNAVAILABLE) throw err;
    }
    const { operation: latest } = await operations.getOperation({ operationId: current.id }, { timeoutMs: remaining(), signal: options.signal });
    if (latest) {
      if (latest.updateTime?.seconds !== current.updateTime?.seconds || latest.updateTime?.nanos !== current.updateTime?.nanos || latest.state !== current.state) options.onProgress?.(latest);
      current = latest;
    }
    if (isDone(current)) break;
    if (remaining() === 0) throw Object.assign(new Error(`operation ${current.id} still ${OperationState[current.state]} at the deadline`), { code: Status.DEADLINE_EXCEEDED });
    const progressed = current.updateTime?.seconds !== before?.seconds || current.updateTime?.nanos !== before?.nanos;
    pauseMs = progressed ? 100 : Math.min(pauseMs * 2, 5000);
    await delay(Math.min(pauseMs, remaining() ?? pauseMs), undefined, { signal: options.signal });
  }
  return current;
}
