// Consumes the quota an RPC declares in its proto option before its handler runs, and
// gives it back if the handler fails. Which RPC consumes what is read from its compiled
// policy, never from a table of RPCs here.
import type { Message } from '@bufbuild/protobuf';
import { QuotaResource } from '../gen/debvisor/v1/options_pb.js';
import type { CallContext } from '../rpc/context.js';
import { RpcError } from '../rpc/errors.js';
import type { CompiledPolicy } from '../rpc/policy.js';
import { gibOf } from './units.js';
import { causeOf } from '../events/cause.js';
import type { CountedResource, QuotaManager } from './manager.js';

const COUNTED: ReadonlyMap<QuotaResource, CountedResource> = new Map([
  [QuotaResource.SNAPSHOTS, 'snapshots'],
  [QuotaResource.STORAGE_GB, 'storage_gb'],
]);

/** The amount a request consumes: 1 unit, or its declared amount field (bytes → GiB, rounded up, for storage). */
function amountOf(policy: CompiledPolicy, resource: CountedResource, request: Message): number {
  const raw = policy.quotaAmountOf(request);
  if (raw === undefined) return 1;
  return resource === 'storage_gb' ? gibOf(raw) : Number(raw);
}

type Handler = (request: Message, ctx: CallContext) => Promise<unknown>;

export function withQuota(quotas: QuotaManager, policy: CompiledPolicy, handler: Handler): Handler {
  // Concurrent operations are counted by the operation manager's slots, not here.
  const resource = policy.quota && COUNTED.get(policy.quota.resource);
  if (!resource || policy.method.methodKind !== 'unary') return handler;
  return async (request, ctx) => {
    const principal = ctx.principal?.id;
    if (!principal) throw new RpcError('UNAUTHENTICATED', 'no principal');
    const amount = amountOf(policy, resource, request);
    if (amount <= 0) return handler(request, ctx);
    await quotas.consume(principal, resource, amount, causeOf(ctx));
    try {
      return await handler(request, { ...ctx, quota: { resource, amount } });
    } catch (err) {
      await quotas.release(principal, resource, amount);
      throw err;
    }
  };
}
