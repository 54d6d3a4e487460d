// The audit event model: one JSON object per line of the audit log.
// The log adds `seq` and `hmac` (see log.ts); everything else comes from the caller.

export type AuditEventType = 'CALL' | 'AUTH' | 'AUTH_FAILED' | 'AUTHZ_DENIED' | 'SECURITY' | 'SUSPICIOUS' | 'ERROR';

export const AUDIT_EVENT_TYPES: readonly AuditEventType[] = ['CALL', 'AUTH', 'AUTH_FAILED', 'AUTHZ_DENIED', 'SECURITY', 'SUSPICIOUS', 'ERROR'];

/** The certificate acting for a user, in an impersonated call's record. */
export interface AuditImpersonator {
  id: string;
  /** SHA-256 of its client certificate, lowercase hex. */
  cert_fingerprint?: string;
  roles: readonly string[];
}

export interface AuditPrincipal {
  id: string;
  kind: 'certificate' | 'api_key' | 'user';
  roles: readonly string[];
  /** SHA-256 of the client certificate, lowercase hex. */
  cert_fingerprint?: string;
  /** Public id of the API key used (never its secret). */
  key_id?: string;
  /** A user's groups (`group:<name>`), as the impersonating call named them. */
  groups?: readonly string[];
  /** Set for a user: the certificate principal acting for it. */
  impersonated_by?: AuditImpersonator;
  /** The impersonate-reason header of the call. */
  impersonation_reason?: string;
  /** The user session the call presented (its id, never its token). */
  session_id?: string;
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
