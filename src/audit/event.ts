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

/**
 * Text that needs no JSON escaping and that no secret pattern can match: trace ids
 * (src/server/trace.ts admits only these characters), ISO times, type names.
 */
const PLAIN = /^[A-Za-z0-9.:-]*$/;

function isPlain(value: unknown): value is string {
  return typeof value === 'string' && PLAIN.test(value);
}

/** The event types: plain text, known without a pattern test. */
const PLAIN_TYPES: ReadonlySet<unknown> = new Set<unknown>(AUDIT_EVENT_TYPES);

/** Most member segments kept per principal; beyond it they are dropped and rebuilt as needed. */
const SEGMENTS_PER_PRINCIPAL = 4096;

/**
 * What is kept per frozen principal (shared, per-principal objects: src/chain/audit-principal.ts)
 * and scrubber: its JSON (a third of a call record), and the scrubbed text from `"principal"`
 * through `"code"` by source, method, decision and code. Those members are contiguous in the
 * fixed key order and repeat from call to call.
 */
interface PrincipalCache {
  readonly scrub: (json: string) => string;
  readonly json: string;
  readonly segments: Map<unknown, Map<unknown, Map<unknown, Map<unknown, string>>>>;
  size: number;
}

const principalCaches = new WeakMap<AuditPrincipal, PrincipalCache>();

/** The cache of a frozen principal; undefined for one that may still change. */
function principalCache(p: AuditPrincipal, scrub: (json: string) => string): PrincipalCache | undefined {
  if (!Object.isFrozen(p) || !Object.isFrozen(p.roles)) return undefined;
  let cache = principalCaches.get(p);
  if (cache?.scrub !== scrub) {
    cache = { scrub, json: scrub(JSON.stringify(principalObject(p))), segments: new Map(), size: 0 };
    principalCaches.set(p, cache);
  }
  return cache;
}

/** The map under `key`, made empty on first use (no factory closure: this runs per call). */
function child<V>(map: Map<unknown, Map<unknown, V>>, key: unknown): Map<unknown, V> {
  let value = map.get(key);
  if (value === undefined) map.set(key, (value = new Map<unknown, V>()));
  return value;
}

/** `,"principal":…` through `"code"`, scrubbed: from the cache, or made and remembered. */
function segmentOf(cache: PrincipalCache, event: AuditEventInput): string {
  const byCode = child(child(child(cache.segments, event.source), event.method), event.decision);
  let segment = byCode.get(event.code);
  if (segment === undefined) {
    const members = JSON.stringify(leadOf(event, {}));
    segment = `,"principal":${cache.json}${members.length === 2 ? '' : `,${cache.scrub(members.slice(1, -1))}`}`;
    if (++cache.size > SEGMENTS_PER_PRINCIPAL) {
      cache.segments.clear();
      cache.size = 1;
    }
    byCode.set(event.code, segment);
  }
  return segment;
}

/** The members from `source` through `code`, in their fixed order. */
function leadOf(event: AuditEventInput, out: Record<string, unknown>): Record<string, unknown> {
  if (event.source !== undefined) out.source = event.source;
  if (event.method !== undefined) out.method = event.method;
  if (event.decision !== undefined) out.decision = event.decision;
  if (event.code !== undefined) out.code = event.code;
  return out;
}

/** The members after `code`, in their fixed order. */
function tailOf(event: AuditEventInput, out: Record<string, unknown>): Record<string, unknown> {
  if (event.duration_ms !== undefined) out.duration_ms = event.duration_ms;
  if (event.request !== undefined) out.request = event.request;
  if (event.object !== undefined) out.object = event.object;
  if (event.reason !== undefined) out.reason = event.reason;
  if (event.details !== undefined) out.details = event.details;
  return out;
}

/**
 * The closing text of the members after `code`: a read call's record has only its
 * duration there, whose JSON is the number's own text (no scrub pattern matches digits),
 * so it costs no object and no stringify.
 */
function tailText(event: AuditEventInput, scrub: (json: string) => string): string {
  const duration = event.duration_ms;
  if (event.request === undefined && event.object === undefined && event.reason === undefined && event.details === undefined) {
    if (duration === undefined) return '}';
    if (Number.isFinite(duration)) return `,"duration_ms":${duration}}`;
  }
  return closing(JSON.stringify(tailOf(event, {})), scrub);
}

/** `}`, or `,` + the members of an object's JSON + `}`. */
function closing(json: string, scrub: (json: string) => string): string {
  return json.length === 2 ? '}' : `,${scrub(json.slice(1))}`;
}

/**
 * Serializes an event with a fixed key order (the order of AuditEvent above), so the
 * canonical form of a line does not depend on how the caller built the object.
 * Unknown keys on the input are dropped. The output is always JSON.stringify of the
 * event in that order, passed through `scrub` (see scrubSecretsInJson: its replacements
 * never leave the string they start in, so it may be applied member by member).
 *
 * Once per call: with a frozen principal and a plain time, trace id and type (the chain's
 * records), the text from "principal" through "code" comes from the principal's cache and
 * only the members after it are stringified.
 *
 * `defaultTime` is the log's own clock: an ISO 8601 time, trusted to be plain text.
 */
export function serializeEvent(event: AuditEventInput, defaultTime: () => string, scrub: (json: string) => string = asIs): string {
  const given = event.time;
  const time = given ?? defaultTime();
  const p = event.principal;
  const cache = p === undefined ? undefined : principalCache(p, scrub);
  if (cache && (given === undefined || isPlain(given)) && isPlain(event.trace_id) && PLAIN_TYPES.has(event.type)) {
    return `{"time":"${time}","trace_id":"${event.trace_id}","type":"${event.type}"${segmentOf(cache, event)}${tailText(event, scrub)}`;
  }
  const head: Record<string, unknown> = { time, trace_id: event.trace_id, type: event.type };
  if (p === undefined) return scrub(JSON.stringify(tailOf(event, leadOf(event, head))));
  const principal = cache?.json ?? scrub(JSON.stringify(principalObject(p)));
  return `${scrub(JSON.stringify(head).slice(0, -1))},"principal":${principal}${closing(JSON.stringify(tailOf(event, leadOf(event, {}))), scrub)}`;
}
