// The audit event model: one JSON object per line of the audit log.
// The log adds `seq` and `hmac` (see log.ts); everything else comes from the caller.

export type AuditEventType = 'CALL' | 'AUTH' | 'AUTH_FAILED' | 'AUTHZ_DENIED' | 'SECURITY' | 'SUSPICIOUS' | 'ERROR';

export const AUDIT_EVENT_TYPES: readonly AuditEventType[] = ['CALL', 'AUTH', 'AUTH_FAILED', 'AUTHZ_DENIED', 'SECURITY', 'SUSPICIOUS', 'ERROR'];

export interface AuditPrincipal {
  id: string;
  kind: 'certificate' | 'api_key';
  roles: readonly string[];
  /** SHA-256 of the client certificate, lowercase hex. */
  cert_fingerprint?: string;
  /** Public id of the API key used (never its secret). */
  key_id?: string;
}

export interface AuditEvent {
  /** ISO 8601 time of the event. */
  time: string;
  trace_id: string;
  type: AuditEventType;
  principal?: AuditPrincipal;
  /** Caller address, "ip:port". */
  source?: string;
  /** Full gRPC method, e.g. "/debvisor.v1.AccessService/CreateApiKey". */
  method?: string;
  decision?: 'allow' | 'deny';
  /** gRPC status code name, e.g. "OK", "PERMISSION_DENIED". */
  code?: string;
  duration_ms?: number;
  /** The request as already-redacted JSON (see redactRequest). */
  request?: unknown;
  /** The resource acted on. */
  object?: string;
  reason?: string;
  details?: Record<string, unknown>;
}

/** What callers hand to the log: `time` defaults to the log's clock. */
export type AuditEventInput = Omit<AuditEvent, 'time'> & { time?: string };

/** One line of the audit log as written: the event, then its chain position and MAC. */
export interface AuditEntry extends AuditEvent {
  seq: number;
  hmac: string;
}

/**
 * Serializes an event with a fixed key order (the order of AuditEvent above), so the
 * canonical form of a line does not depend on how the caller built the object.
 * Unknown keys on the input are dropped.
 */
export function serializeEvent(event: AuditEventInput, defaultTime: () => string): string {
  const out: Record<string, unknown> = {
    time: event.time ?? defaultTime(),
    trace_id: event.trace_id,
    type: event.type,
  };
  const p = event.principal;
  if (p !== undefined) {
    const principal: Record<string, unknown> = { id: p.id, kind: p.kind, roles: p.roles };
    if (p.cert_fingerprint !== undefined) principal.cert_fingerprint = p.cert_fingerprint;
    if (p.key_id !== undefined) principal.key_id = p.key_id;
    out.principal = principal;
  }
  if (event.source !== undefined) out.source = event.source;
  if (event.method !== undefined) out.method = event.method;
  if (event.decision !== undefined) out.decision = event.decision;
  if (event.code !== undefined) out.code = event.code;
  if (event.duration_ms !== undefined) out.duration_ms = event.duration_ms;
  if (event.request !== undefined) out.request = event.request;
  if (event.object !== undefined) out.object = event.object;
  if (event.reason !== undefined) out.reason = event.reason;
  if (event.details !== undefined) out.details = event.details;
  return JSON.stringify(out);
}
