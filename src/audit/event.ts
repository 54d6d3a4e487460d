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

function principalObject(p: AuditPrincipal): Record<string, unknown> {
  const principal: Record<string, unknown> = { id: p.id, kind: p.kind, roles: p.roles };
  if (p.cert_fingerprint !== undefined) principal.cert_fingerprint = p.cert_fingerprint;
  if (p.key_id !== undefined) principal.key_id = p.key_id;
  return principal;
}

/** Text that passes through unchanged. */
const asIs = (json: string): string => json;

// The JSON of frozen principals (shared, per-principal objects: src/chain/audit-principal.ts),
// made once per principal and scrubber: the principal with its certificate fingerprint is a
// third of a call record.
const principalJsons = new WeakMap<AuditPrincipal, { readonly scrub: (json: string) => string; readonly json: string }>();

function principalJson(p: AuditPrincipal, scrub: (json: string) => string): string {
  if (!Object.isFrozen(p) || !Object.isFrozen(p.roles)) return scrub(JSON.stringify(principalObject(p)));
  const cached = principalJsons.get(p);
  if (cached?.scrub === scrub) return cached.json;
  const json = scrub(JSON.stringify(principalObject(p)));
  principalJsons.set(p, { scrub, json });
  return json;
}

/** The members after `principal`, in their fixed order. */
function restOf(event: AuditEventInput, out: Record<string, unknown>): Record<string, unknown> {
  if (event.source !== undefined) out.source = event.source;
  if (event.method !== undefined) out.method = event.method;
  if (event.decision !== undefined) out.decision = event.decision;
  if (event.code !== undefined) out.code = event.code;
  if (event.duration_ms !== undefined) out.duration_ms = event.duration_ms;
  if (event.request !== undefined) out.request = event.request;
  if (event.object !== undefined) out.object = event.object;
  if (event.reason !== undefined) out.reason = event.reason;
  if (event.details !== undefined) out.details = event.details;
  return out;
}

/**
 * Serializes an event with a fixed key order (the order of AuditEvent above), so the
 * canonical form of a line does not depend on how the caller built the object.
 * Unknown keys on the input are dropped. The output is always JSON.stringify of the
 * event in that order, passed through `scrub` (see scrubSecretsInJson: its replacements
 * never leave the string they start in, so it may be applied member by member).
 * A frozen principal's part is stringified and scrubbed once and spliced in (JSON.stringify
 * of the two plain objects around it is faster on V8 than building the text by hand).
 */
export function serializeEvent(event: AuditEventInput, defaultTime: () => string, scrub: (json: string) => string = asIs): string {
  const head: Record<string, unknown> = { time: event.time ?? defaultTime(), trace_id: event.trace_id, type: event.type };
  const p = event.principal;
  if (p === undefined) return scrub(JSON.stringify(restOf(event, head)));
  const before = JSON.stringify(head);
  const after = JSON.stringify(restOf(event, {}));
  return `${scrub(before.slice(0, -1))},"principal":${principalJson(p, scrub)}${after.length === 2 ? '}' : `,${scrub(after.slice(1))}`}`;
}
