// The event journal and EventService as the daemon assembles them, from the `events` config.
import type { Logger } from 'pino';
import { Gauge, type Registry } from 'prom-client';
import type { AccessState } from '../access/state.js';
import type { RevocationCheck } from '../authn/crl.js';
import type { Principal } from '../rpc/principal.js';
import type { Config } from '../config/schema.js';
import type { PolicyIndex } from '../rpc/policy.js';
import { eventHandlers } from '../services/events.js';
import type { Store } from '../store/store.js';
import { EventJournal } from '../events/journal.js';
import { EventVisibility } from '../events/visibility.js';

/** The journal every event source publishes into; started at once, stopped with the daemon. */
export function openJournal(store: Store, node: string, settings: () => Config, log: Logger): EventJournal {
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
  return journal;
}

/** EventService over the journal. Compiles the kinds' visibility: a kind without one fails the daemon's start. */
export function eventServiceHandlers(journal: EventJournal, settings: () => Config, methods: PolicyIndex, access: AccessState, revocation: RevocationCheck, registry: Registry) {
  const streams = new Gauge({ name: 'event_streams', help: 'Open WatchEvents streams on this daemon.', registers: [registry] });
  const visibility = EventVisibility.compile(methods);
  const events = () => settings().events;
  return eventHandlers({
    journal,
    visibility,
    allows: (principal, permission, resources) => access.allows(principal, permission, resources),
    credentialsProblem: (principal, nowMs) => access.credentialsProblem(principal, nowMs) ?? certificateProblem(principal, revocation, nowMs),
    onStreams: (open) => streams.set(open),
    settings: () => ({
      heartbeatMs: events().heartbeat_seconds * 1000,
      streamBuffer: events().stream_buffer,
      maxStreamsPerPrincipal: events().max_streams_per_principal,
      maxStreams: events().max_streams,
    }),
  });
}

/**
 * Why a stream opened with a client certificate may no longer run: the certificate (the caller's,
 * or the impersonator's) expired, or a CRL loaded since revokes it (or has gone stale, which
 * refuses every certificate call).
 */
export function certificateProblem(principal: Principal, revocation: RevocationCheck, nowMs: number): string | undefined {
  const certificate = principal.certificate ?? principal.delegation?.by.certificate;
  if (!certificate) return undefined;
  if (certificate.notAfter.getTime() <= nowMs) return `client certificate serial ${certificate.serialNumber} expired`;
  return revocation.refusal(certificate.serialNumber, nowMs);
}
