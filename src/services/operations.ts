// OperationService: reads and cancels long-running operations. Callers see their own;
// the `:any` form of each permission (admin, operator, viewer) sees everyone's.
import type { MessageInitShape } from '@bufbuild/protobuf';
import { durationMs } from '@bufbuild/protobuf/wkt';
import { OperationKind, OperationState, type OperationSchema, type OperationService } from '../gen/debvisor/v1/operation_pb.js';
import type { AccessState } from '../access/state.js';
import type { OperationManager } from '../operations/manager.js';
import { decodeResult, kindOfStored } from '../operations/kinds.js';
import type { HandlersOf } from '../rpc/adapter.js';
import { pageByOffset } from '../rpc/paging.js';
import type { CallContext } from '../rpc/context.js';
import { InvalidArgumentError, RpcError, UnauthenticatedError } from '../rpc/errors.js';
import type { OperationRecord } from '../store/records.js';
import { timestampOfIso } from './timestamp.js';

const DEFAULT_WAIT_MS = 30_000;
const MAX_WAIT_MS = 300_000;


export function operationMessage(record: OperationRecord): MessageInitShape<typeof OperationSchema> {
  return {
    id: record.id,
    // A kind this daemon does not know (a newer daemon wrote it) is shown as unspecified.
    kind: kindOfStored(record.kind) ?? OperationKind.UNSPECIFIED,
    owner: record.owner,
    target: record.target,
    node: record.node,
    state: OperationState[record.state],
    progressPercent: record.progress_percent,
    stage: record.stage,
    error: record.error,
    requestId: record.request_id ?? '',
    cancelRequested: record.cancel_requested,
    createTime: timestampOfIso(record.created_at),
    updateTime: timestampOfIso(record.updated_at),
    doneTime: timestampOfIso(record.done_at),
    progressBytes: BigInt(record.progress_bytes ?? 0),
    totalBytes: BigInt(record.total_bytes ?? 0),
    result: decodeResult(record.result),
  };
}

export function operationHandlers(operations: OperationManager, access: AccessState): HandlersOf<typeof OperationService> {
  const principalOf = (ctx: CallContext) => {
    if (!ctx.principal) throw new UnauthenticatedError('no principal on call');
    return ctx.principal;
  };
  /** The same answer for "absent" and "not yours", so operation ids of others cannot be probed. */
  const visible = (ctx: CallContext, id: string, permission: string): OperationRecord => {
    if (!id) throw new InvalidArgumentError('operation_id', 'required');
    const record = operations.get(id);
    if (!record || !access.mayActOn(principalOf(ctx), record.owner, permission)) throw new RpcError('NOT_FOUND', `operation ${id} not found`);
    return record;
  };

  return {
    getOperation: (request, ctx) => Promise.resolve({ operation: operationMessage(visible(ctx, request.operationId, 'operation:get')) }),

    listOperations: (request, ctx) => {
      const principal = principalOf(ctx);
      let owner: string | undefined = request.owner || principal.id;
      if (request.owner && !access.mayActOn(principal, request.owner, 'operation:list')) {
        throw new RpcError('PERMISSION_DENIED', 'permission denied: listing operations of others requires operation:list:any');
      }
      if (!request.owner && access.allows(principal, 'operation:list:any')) owner = undefined;
      const state = request.state === OperationState.UNSPECIFIED ? undefined : (OperationState[request.state] as OperationRecord['state']);
      const kind = request.kind === OperationKind.UNSPECIFIED ? undefined : request.kind;
      const all = operations.list({ ...(owner !== undefined ? { owner } : {}), ...(state ? { state } : {}), ...(kind ? { kind } : {}) });
      const page = pageByOffset(all, request);
      return Promise.resolve({ operations: page.items.map(operationMessage), nextPageToken: page.nextPageToken });
    },

    waitOperation: async (request, ctx) => {
      const record = visible(ctx, request.operationId, 'operation:wait');
      const timeoutMs = (request.timeout ? durationMs(request.timeout) : DEFAULT_WAIT_MS);
      if (timeoutMs < 0 || timeoutMs > MAX_WAIT_MS) throw new InvalidArgumentError('timeout', 'must be between 0 and 5 minutes');
      const waitMs = Math.min(timeoutMs, Math.max(0, ctx.deadline.getTime() - Date.now() - 100));
      const latest = await operations.wait(record.id, waitMs, ctx.signal);
      return { operation: operationMessage(latest ?? record) };
    },

    cancelOperation: async (request, ctx) => {
      const record = visible(ctx, request.operationId, 'operation:cancel');
      const updated = await operations.cancel(record.id);
      return { operation: operationMessage(updated ?? record) };
    },

    watchOperation: (request, ctx) => {
      const record = visible(ctx, request.operationId, 'operation:watch');
      return (async function* () {
        for await (const change of operations.changes(record.id, ctx.signal)) yield { operation: operationMessage(change) };
      })();
    },
  };
}
