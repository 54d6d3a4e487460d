// SECURITY_ALERT: one event per SECURITY audit record, bounded. An attack can make the daemon
// write thousands of SECURITY records a second (the audit log keeps them all); the journal gets
// each distinct reason about each object once per second (two keys created in one second are two
// alerts; one address failing a thousand times is one) and at most MAX_PER_SECOND alerts a second,
// and the rest are counted in debvisor_security_alerts_coalesced_total.
import { Counter, type Registry } from 'prom-client';
import { scrubSecrets } from '../audit/redact.js';
import type { AuditEventInput } from '../audit/types.js';
import { EventKind } from '../gen/debvisor/v1/event_pb.js';
import type { EventSink } from './types.js';

const MAX_PER_SECOND = 20;
/** Audit reasons are short sentences; a longer one is cut, not carried into every stream. */
const MAX_REASON_LENGTH = 512;

export interface SecurityAlertsOptions {
  readonly sink: EventSink;
  /** This daemon's node: where the record was written. */
  readonly node: string;
  readonly registry?: Registry | undefined;
  readonly maxPerSecond?: number;
  readonly now?: () => number;
}

export class SecurityAlerts {
  private second = -1;
  /** Reason and object of each alert published this second. */
  private readonly published = new Set<string>();
  private readonly maxPerSecond: number;
  private readonly now: () => number;
  readonly coalesced: Counter<'why'>;

  constructor(private readonly options: SecurityAlertsOptions) {
    this.maxPerSecond = options.maxPerSecond ?? MAX_PER_SECOND;
    this.now = options.now ?? Date.now;
    this.coalesced = new Counter({
      name: 'debvisor_security_alerts_coalesced_total',
      help: 'SECURITY audit records not published as SECURITY_ALERT events: the same reason about the same object already published this second (duplicate), or over the per-second bound (rate).',
      labelNames: ['why'] as const,
      registers: options.registry ? [options.registry] : [],
    });
  }

  /** For AuditLogOptions.onSecurityRecord: never throws. The reason is scrubbed as the audit line is. */
  readonly record = (event: AuditEventInput): void => {
    const second = Math.floor(this.now() / 1000);
    if (second !== this.second) {
      this.second = second;
      this.published.clear();
    }
    const reason = scrubSecrets(event.reason ?? '').slice(0, MAX_REASON_LENGTH);
    const object = scrubSecrets(event.object ?? '');
    const key = `${reason}\u0000${object}`;
    if (this.published.has(key)) {
      this.coalesced.inc({ why: 'duplicate' });
      return;
    }
    if (this.published.size >= this.maxPerSecond) {
      this.coalesced.inc({ why: 'rate' });
      return;
    }
    this.published.add(key);
    const principal = event.principal;
    this.options.sink.publish({
      kind: EventKind.SECURITY_ALERT,
      resource: { node: this.options.node, name: object },
      actor: principal ? { principal: principal.id, ...(principal.impersonated_by ? { impersonatedBy: principal.impersonated_by.id } : {}) } : {},
      traceId: event.trace_id,
      payload: { case: 'security', value: { reason } },
    });
  };
}
