// The audit record writer: one event as one line of JSON. This is the reference; the log
// may use the byte-level fast path (event-fast.ts), which must write exactly these bytes.
import { capEvent, capPrincipal } from './caps.js';
import type { EventBuffer } from './chain.js';
import type { AuditEventInput, AuditPrincipal } from './types.js';

export type { AuditEntry, AuditEvent, AuditEventInput, AuditEventType, AuditPrincipal } from './types.js';
export { AUDIT_EVENT_TYPES } from './types.js';

/** The fixed key order of a line (the order of AuditEvent); `principal` comes after `type`. */
const PRINCIPAL_KEYS = ['id', 'kind', 'roles', 'cert_fingerprint', 'key_id', 'groups', 'impersonated_by', 'impersonation_reason', 'session_id'] as const satisfies readonly (keyof AuditPrincipal)[];
/** The members after `principal` up to `code`, then the rest. */
export const LEAD_KEYS = ['source', 'method', 'decision', 'code'] as const satisfies readonly (keyof AuditEventInput)[];
export const TAIL_KEYS = ['duration_ms', 'request', 'object', 'reason', 'details'] as const satisfies readonly (keyof AuditEventInput)[];

/** The members of `from` named in `keys`, in that order; undefined ones (and unknown keys) left out. */
export function inOrder<T extends object>(from: T, keys: readonly (keyof T)[], out: Record<string, unknown> = {}): Record<string, unknown> {
  for (const key of keys) if (from[key] !== undefined) out[key as string] = from[key];
  return out;
}

/** The capped principal's members, in their fixed order. */
export function principalMembers(principal: AuditPrincipal): Record<string, unknown> {
  return inOrder(capPrincipal(principal), PRINCIPAL_KEYS);
}

/**
 * The event's line: JSON.stringify of the capped event (caps.ts) in the fixed key order,
 * so the canonical form does not depend on how the caller built the object, passed
 * through `scrub` (scrubSecretsInJson in the log). `defaultTime` is the log's clock.
 */
export function serializeEvent(uncapped: AuditEventInput, defaultTime: () => string, scrub: (json: string) => string = (json) => json): string {
  const event = capEvent(uncapped);
  const line: Record<string, unknown> = { time: event.time ?? defaultTime(), trace_id: event.trace_id, type: event.type };
  if (event.principal !== undefined) line.principal = principalMembers(event.principal);
  return scrub(JSON.stringify(inOrder(event, TAIL_KEYS, inOrder(event, LEAD_KEYS, line))));
}

/** Appends the event's line to `events` (as UTF-8). */
export function appendEvent(events: EventBuffer, event: AuditEventInput, defaultTime: () => string, scrub?: (json: string) => string): void {
  events.push(serializeEvent(event, defaultTime, scrub));
}
