// What an event source hands to the event journal. Sources (the VM inventory, operations,
// storage, access, nodes, quotas, the audit log) know nothing of streams or the store: they
// publish, and the journal stamps the time and the resume token, coalesces and distributes.
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { EventActorSchema, EventSchema } from '../gen/debvisor/v1/event_pb.js';
import type { Principal } from '../rpc/principal.js';

/** One change as a source reports it: everything but the journal's time and resume token. */
export type NewEvent = Omit<MessageInitShape<typeof EventSchema>, 'resumeToken' | 'time' | '$typeName'>;

export interface EventSink {
  /** Never throws and never waits: a failure to record an event must not fail the change. */
  publish(event: NewEvent): void;
}

/** For daemons and tests that run without a journal. */
export const NO_EVENTS: EventSink = { publish: () => undefined };

/** The actor of a call's events: the principal (the user, when a certificate acts for one). */
export function actorOf(principal: Principal | undefined): MessageInitShape<typeof EventActorSchema> {
  if (!principal) return {};
  return { principal: principal.id, ...(principal.delegation ? { impersonatedBy: principal.delegation.by.id } : {}) };
}
