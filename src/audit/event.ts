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
 * `,"name":<JSON of value>`, or '' where JSON.stringify would leave the member out of
 * an object (undefined, functions, symbols). `name` is one of the fixed keys below.
 */
function member(name: string, value: unknown): string {
  if (value === undefined) return '';
  const json = JSON.stringify(value) as string | undefined;
  return json === undefined ? '' : `,"${name}":${json}`;
}

/** `{` + members (each starting with a comma) + `}`. */
function object(members: string): string {
  return `{${members.slice(1)}}`;
}

/**
 * Serializes an event with a fixed key order (the order of AuditEvent above), so the
 * canonical form of a line does not depend on how the caller built the object.
 * Unknown keys on the input are dropped. Written out member by member, with no
 * intermediate object (it runs for every call); every value goes through JSON.stringify,
 * so the output is exactly JSON.stringify of the same object built in this key order.
 */
export function serializeEvent(event: AuditEventInput, defaultTime: () => string): string {
  const p = event.principal;
  const principal =
    p === undefined
      ? ''
      : `,"principal":${object(member('id', p.id) + member('kind', p.kind) + member('roles', p.roles) + member('cert_fingerprint', p.cert_fingerprint) + member('key_id', p.key_id))}`;
  return object(
    member('time', event.time ?? defaultTime()) +
      member('trace_id', event.trace_id) +
      member('type', event.type) +
      principal +
      member('source', event.source) +
      member('method', event.method) +
      member('decision', event.decision) +
      member('code', event.code) +
      member('duration_ms', event.duration_ms) +
      member('request', event.request) +
      member('object', event.object) +
      member('reason', event.reason) +
      member('details', event.details),
  );
}
