// Consumes the quota an RPC declares in its proto option before its handler runs, and
// gives it back if the handler fails. Which RPC consumes what is read from the API,
// never from a table here.
import type { DescMethod, Message } from '@bufbuild/protobuf';
import { QuotaResource, type RpcPolicy } from '../gen/debvisor/v1/options_pb.js';
import type { CallContext } from '../rpc/context.js';
import { RpcError } from '../rpc/errors.js';
import { quotaAmountOf } from '../rpc/policy.js';
import { gibOf } from './units.js';
import type { CountedResource, QuotaManager } from './manager.js';

const COUNTED: ReadonlyMap<QuotaResource, CountedResource> = new Map([
  [QuotaResource.SNAPSHOTS, 'snapshots'],
  [QuotaResource.STORAGE_GB, 'storage_gb'],
]);

/** The amount a request consumes: 1 unit, or its declared amount field (bytes → GiB, rounded up, for storage). */
function amountOf(method: DescMethod, resource: CountedResource, request: Message): number {
  const raw = quotaAmountOf(method, request);
  if (raw === undefined) return 1;
  return resource === 'storage_gb' ? gibOf(raw) : Number(raw);
}

type Handler = (request: Message, ctx: CallContext) => Promise<unknown>;

export function withQuota(quotas: QuotaManager, method: DescMethod, policy: RpcPolicy, handler: Handler): Handler {
  const resource = COUNTED.get(policy.quotaResource);
  if (!resource || method.methodKind !== 'unary') return handler;
  return async (request, ctx) => {
    const principal = ctx.principal?.id;
    if (!principal) throw new RpcError('UNAUTHENTICATED', 'no principal');
    const amount = amountOf(method, resource, request);
    if (amount <= 0) return handler(request, ctx);
    await quotas.consume(principal, resource, amount);
    try {
      return await handler(request, { ...ctx, quota: { resource, amount } });
    } catch (err) {
      await quotas.release(principal, resource, amount);
      throw err;
    }
  };
}
