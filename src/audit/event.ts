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

/**
 * Text that needs no JSON escaping and that no secret pattern can match: trace ids
 * (src/server/trace.ts admits only these characters), ISO times, type names.
 */
const PLAIN = /^[A-Za-z0-9.:-]*$/;

function isPlain(value: unknown): value is string {
  return typeof value === 'string' && PLAIN.test(value);
}

/** Most member segments kept per principal; beyond it they are dropped and rebuilt as needed. */
const SEGMENTS_PER_PRINCIPAL = 4096;

interface Segments {
  readonly scrub: (json: string) => string;
  readonly bySource: Map<unknown, Map<unknown, Map<unknown, Map<unknown, string>>>>;
  size: number;
}

const segmentCaches = new WeakMap<AuditPrincipal, Segments>();

function child<V>(map: Map<unknown, V>, key: unknown, make: () => V): V {
  let value = map.get(key);
  if (value === undefined) map.set(key, (value = make()));
  return value;
}

/** `,"principal":…` through `"code"`, scrubbed, for a frozen principal: made once per source, method, decision and code. */
function segmentOf(p: AuditPrincipal, event: AuditEventInput, scrub: (json: string) => string): string {
  let cache = segmentCaches.get(p);
  if (cache?.scrub !== scrub) segmentCaches.set(p, (cache = { scrub, bySource: new Map(), size: 0 }));
  const byCode = child(
    child(
      child(cache.bySource, event.source, () => new Map<unknown, Map<unknown, Map<unknown, string>>>()),
      event.method,
      () => new Map<unknown, Map<unknown, string>>(),
    ),
    event.decision,
    () => new Map<unknown, string>(),
  );
  let segment = byCode.get(event.code);
  if (segment === undefined) {
    const members = JSON.stringify(restOf(event, {}, false));
    segment = `,"principal":${principalJson(p, scrub)}${members.length === 2 ? '' : `,${scrub(members.slice(1, -1))}`}`;
    if (++cache.size > SEGMENTS_PER_PRINCIPAL) {
      cache.bySource.clear();
      cache.size = 1;
    }
    byCode.set(event.code, segment);
  }
  return segment;
}

/** The members after `principal`, in their fixed order: up to `code`, or (tail) the ones after it. */
function restOf(event: AuditEventInput, out: Record<string, unknown>, tail?: boolean): Record<string, unknown> {
  if (tail !== true) {
    if (event.source !== undefined) out.source = event.source;
    if (event.method !== undefined) out.method = event.method;
    if (event.decision !== undefined) out.decision = event.decision;
    if (event.code !== undefined) out.code = event.code;
    if (tail === false) return out;
  }
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
 *
 * Once per call: with a frozen principal and a plain time, trace id and type (the chain's
 * records), the text from "principal" through "code" comes from a per-principal cache and
 * only the members after it are stringified.
 */
export function serializeEvent(event: AuditEventInput, defaultTime: () => string, scrub: (json: string) => string = asIs): string {
  const time = event.time ?? defaultTime();
  const p = event.principal;
  if (p !== undefined && Object.isFrozen(p) && Object.isFrozen(p.roles) && isPlain(time) && isPlain(event.trace_id) && isPlain(event.type)) {
    const tail = duration(event) ?? JSON.stringify(restOf(event, {}, true));
    return `{"time":"${time}","trace_id":"${event.trace_id}","type":"${event.type}"${segmentOf(p, event, scrub)}${tail.length === 2 ? '}' : `,${scrub(tail.slice(1))}`}`;
  }
  const head: Record<string, unknown> = { time, trace_id: event.trace_id, type: event.type };
  if (p === undefined) return scrub(JSON.stringify(restOf(event, head)));
  const before = JSON.stringify(head);
  const after = JSON.stringify(restOf(event, {}));
  return `${scrub(before.slice(0, -1))},"principal":${principalJson(p, scrub)}${after.length === 2 ? '}' : `,${scrub(after.slice(1))}`}`;
}

/** The tail of a call record that has only a finite duration after its code (the common case), without JSON.stringify. */
function duration(event: AuditEventInput): string | undefined {
  const ms = event.duration_ms;
  if (typeof ms !== 'number' || !Number.isFinite(ms) || event.request !== undefined || event.object !== undefined || event.reason !== undefined || event.details !== undefined) return undefined;
  return `{"duration_ms":${ms}}`;
}
