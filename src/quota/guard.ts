// Consumes the quota an RPC declares in its proto option before its handler runs, and
// gives it back if the handler fails. Which RPC consumes what is read from its compiled
// policy, never from a table of RPCs here.
import type { Message } from '@bufbuild/protobuf';
import type { CallContext } from '../rpc/context.js';
import { RpcError } from '../rpc/errors.js';
import type { CompiledPolicy } from '../rpc/policy.js';
import { gibOf, isCountedInGib } from './units.js';
import { causeOf } from '../events/cause.js';
import type { QuotaManager } from './manager.js';
import { isCountedResource, QUOTA_NAMES, type CountedResource } from '../rpc/quota-dimensions.js';

/** The amount a request consumes: 1 unit, or its declared amount field (bytes → GiB, rounded up, for the *_gb dimensions). */
function amountOf(policy: CompiledPolicy, resource: CountedResource, request: Message): number {
  const raw = policy.quotaAmountOf(request);
  if (raw === undefined) return 1;
  return isCountedInGib(resource) ? gibOf(raw) : Number(raw);
}

type Handler = (request: Message, ctx: CallContext) => Promise<unknown>;

export function withQuota(quotas: QuotaManager, policy: CompiledPolicy, handler: Handler): Handler {
  // Concurrent operations are counted by the operation manager's slots, not here.
  const name = policy.quota && QUOTA_NAMES.get(policy.quota.resource);
  const resource = name !== undefined && isCountedResource(name) ? name : undefined;
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
