// Who and which call caused a change, for the events a component publishes after the fact
// (a storage manager or an operation runner has no CallContext of its own).
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { EventActorSchema } from '../gen/debvisor/v1/event_pb.js';
import type { CallContext } from '../rpc/context.js';
import { actorOf } from './types.js';

export interface EventCause {
  readonly actor: MessageInitShape<typeof EventActorSchema>;
  /** The causing call's trace id, as in its audit record. */
  readonly traceId: string;
}

/** Changes made by the daemon itself (recovery, node liveness): no actor, no call. */
export const NO_CAUSE: EventCause = { actor: {}, traceId: '' };

export function causeOf(ctx: Pick<CallContext, 'principal' | 'traceId'>): EventCause {
  return { actor: actorOf(ctx.principal), traceId: ctx.traceId };
}
