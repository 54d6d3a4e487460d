// The event journal and EventService as the daemon assembles them, from the `events` config.
import type { Logger } from 'pino';
import type { AccessState } from '../access/state.js';
import type { Config } from '../config/schema.js';
import type { PolicyIndex } from '../rpc/policy.js';
import { eventHandlers } from '../services/events.js';
import type { Store } from '../store/store.js';
import { EventJournal } from '../events/journal.js';
import { EventVisibility } from '../events/visibility.js';

export function startEvents(store: Store, node: string, settings: () => Config, methods: PolicyIndex, access: AccessState, log: Logger) {
  // Compiled before the journal starts: a kind without a visibility fails the daemon's start.
  const visibility = EventVisibility.compile(methods);
  const events = () => settings().events;
  const journal = new EventJournal(
    store,
    node,
    () => ({ batchMs: events().batch_ms, retainEvents: events().retain_events, retainSeconds: events().retain_seconds }),
    {
      onProblem: (err, what) => log.warn({ err: err instanceof Error ? err.message : String(err) }, what),
      onDropped: (count) => log.error({ count }, 'event journal: dropped unwritten events (store unwritable for too long)'),
    },
  );
  journal.start().catch(() => undefined);
  const handlers = eventHandlers({
    journal,
    visibility,
    allows: (principal, permission, resources) => access.allows(principal, permission, resources),
    settings: () => ({
      heartbeatMs: events().heartbeat_seconds * 1000,
      streamBuffer: events().stream_buffer,
      maxStreamsPerPrincipal: events().max_streams_per_principal,
      maxStreams: events().max_streams,
    }),
  });
  return { journal, handlers };
}
