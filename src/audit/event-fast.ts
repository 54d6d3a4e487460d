// The fast path of the audit record writer, behind the reference serializer (event.ts):
// the same bytes, built from per-principal caches and written straight into the pending
// buffer for a read call's record. Kept because the chain benchmark separates its gain from
// noise on a quiet machine (bench/results-audit.md); the property tests of
// test/audit/event.test.ts hold it to the reference, byte for byte.
import { capEvent } from './caps.js';
import { inOrder, LEAD_KEYS, principalMembers, TAIL_KEYS } from './event.js';
import { writeDecimal, type EventBuffer } from './chain.js';
import { AUDIT_EVENT_TYPES, type AuditEventInput, type AuditPrincipal } from './types.js';

/** Text that passes through unchanged. */
const asIs = (json: string): string => json;

/**
 * Text that needs no JSON escaping and that no secret pattern can match: the daemon's own
 * trace ids (hex; a client's may also hold "_" and then takes the general path), ISO
 * times, type names.
 */
const PLAIN = /^[A-Za-z0-9.:-]*$/;

function isPlain(value: unknown): value is string {
  return typeof value === 'string' && PLAIN.test(value);
}

/** PLAIN's characters, by character code (for writing plain text byte by byte). */
const PLAIN_CODES = Uint8Array.from({ length: 128 }, (_, code) => (PLAIN.test(String.fromCharCode(code)) ? 1 : 0));

const ascii = (text: string): Uint8Array => Uint8Array.from(text, (c) => c.charCodeAt(0));
/** The event types (plain text, known without a pattern test), each with its `","type":"<type>"` bytes. */
const TYPE_MEMBERS: ReadonlyMap<unknown, Uint8Array> = new Map(AUDIT_EVENT_TYPES.map((type) => [type, ascii(`","type":"${type}"`)]));

/** Most member segments kept per principal; beyond it they are dropped and rebuilt as needed. */
const SEGMENTS_PER_PRINCIPAL = 4096;

/**
 * What is kept per frozen principal (shared, per-principal objects: src/audit/principal.ts)
 * and scrubber: its JSON (a third of a call record), and the scrubbed text from `"principal"`
 * through `"code"` by source, method, decision and code. Those members are contiguous in the
 * fixed key order and repeat from call to call.
 */
interface PrincipalCache {
  readonly scrub: (json: string) => string;
  readonly json: string;
  readonly segments: Map<unknown, Map<unknown, Map<unknown, Map<unknown, Segment>>>>;
  size: number;
}

/** `,"principal":…` through `"code"`, scrubbed: as text, and as the UTF-8 bytes appendEvent copies. */
interface Segment {
  readonly text: string;
  readonly bytes: Uint8Array;
}

const principalCaches = new WeakMap<AuditPrincipal, PrincipalCache>();

/** The cache of a frozen principal; undefined for one that may still change. */
function principalCache(p: AuditPrincipal, scrub: (json: string) => string): PrincipalCache | undefined {
  if (!Object.isFrozen(p) || !Object.isFrozen(p.roles)) return undefined;
  let cache = principalCaches.get(p);
  if (cache?.scrub !== scrub) {
    cache = { scrub, json: scrub(JSON.stringify(principalMembers(p))), segments: new Map(), size: 0 };
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
function segmentOf(cache: PrincipalCache, event: AuditEventInput): Segment {
  const byCode = child(child(child(cache.segments, event.source), event.method), event.decision);
  let segment = byCode.get(event.code);
  if (segment === undefined) {
    const members = JSON.stringify(leadOf(event, {}));
    const text = `,"principal":${cache.json}${members.length === 2 ? '' : `,${cache.scrub(members.slice(1, -1))}`}`;
    segment = { text, bytes: Buffer.from(text, 'utf8') };
    if (++cache.size > SEGMENTS_PER_PRINCIPAL) {
      cache.segments.clear();
      cache.size = 1;
    }
    byCode.set(event.code, segment);
  }
  return segment;
}

/** The members from `source` through `code`, in their fixed order. */
const leadOf = (event: AuditEventInput, out: Record<string, unknown>): Record<string, unknown> => inOrder(event, LEAD_KEYS, out);
/** The members after `code`, in their fixed order. */
const tailOf = (event: AuditEventInput, out: Record<string, unknown>): Record<string, unknown> => inOrder(event, TAIL_KEYS, out);

/** Nothing after `code` but (perhaps) the duration: a read call's record. */
function hasDurationOnly(event: AuditEventInput): boolean {
  return event.request === undefined && event.object === undefined && event.reason === undefined && event.details === undefined;
}

/**
 * The closing text of the members after `code`: a read call's record has only its
 * duration there, whose JSON is the number's own text (no scrub pattern matches digits),
 * so it costs no object and no stringify.
 */
function tailText(event: AuditEventInput, scrub: (json: string) => string): string {
  const duration = event.duration_ms;
  if (hasDurationOnly(event)) {
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
 * Unknown keys on the input are dropped, and every string is within its cap (caps.ts: cut
 * strings end with a `…[truncated N bytes]` marker). The output is always JSON.stringify of the
 * capped event in that order, passed through `scrub` (see scrubSecretsInJson: its replacements
 * never leave the string they start in, so it may be applied member by member).
 *
 * Once per call: with a frozen principal and a plain time, trace id and type (the chain's
 * records), the text from "principal" through "code" comes from the principal's cache and
 * only the members after it are stringified.
 *
 * `defaultTime` is the log's own clock: an ISO 8601 time, trusted to be plain text.
 */
export function serializeEventFast(uncapped: AuditEventInput, defaultTime: () => string, scrub: (json: string) => string = asIs): string {
  const event = capEvent(uncapped);
  const given = event.time;
  const time = given ?? defaultTime();
  const p = event.principal;
  const cache = p === undefined ? undefined : principalCache(p, scrub);
  if (cache && (given === undefined || isPlain(given)) && isPlain(event.trace_id) && TYPE_MEMBERS.has(event.type)) {
    return `{"time":"${time}","trace_id":"${event.trace_id}","type":"${event.type}"${segmentOf(cache, event).text}${tailText(event, scrub)}`;
  }
  const head: Record<string, unknown> = { time, trace_id: event.trace_id, type: event.type };
  if (p === undefined) return scrub(JSON.stringify(tailOf(event, leadOf(event, head))));
  const principal = cache?.json ?? scrub(JSON.stringify(principalMembers(p)));
  return `${scrub(JSON.stringify(head).slice(0, -1))},"principal":${principal}${closing(JSON.stringify(tailOf(event, leadOf(event, {}))), scrub)}`;
}

const TIME_OPEN = ascii('{"time":"');
const TRACE_ID_OPEN = ascii('","trace_id":"');
const LONGEST_TYPE_MEMBER = Math.max(...[...TYPE_MEMBERS.values()].map((bytes) => bytes.length));
const DURATION_OPEN = ascii(',"duration_ms":');
const CLOSE_BRACE = 0x7d;
const DOT = 0x2e;
const ZERO = 0x30;
/** The bytes of the constant parts of a chain record, and the most a duration takes. */
const RECORD_BYTES = TIME_OPEN.length + TRACE_ID_OPEN.length + LONGEST_TYPE_MEMBER + DURATION_OPEN.length + 16 + 1;

/** Writes plain text (see PLAIN) as its bytes at `at`; returns the new end, or -1 if a character is not plain. */
function writePlain(target: Uint8Array, at: number, text: string): number {
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code >= 128 || PLAIN_CODES[code] === 0) return -1;
    target[at++] = code;
  }
  return at;
}

/**
 * Writes a duration's JSON at `at` when it is a whole number of microseconds below 10^9 ms
 * (what the chain records); returns the new end, or -1 for any other number. Such a number's
 * shortest round-trip text (JSON.stringify's) is its microseconds with the point put back
 * and trailing zeros dropped: the double is the one nearest that decimal, and every other
 * decimal of at most three places is too far from it to round to the same double.
 */
function writeMillis(target: Uint8Array, at: number, ms: number): number {
  if (!(ms >= 0 && ms < 1e9)) return -1;
  const micros = Math.round(ms * 1000);
  if (micros / 1000 !== ms) return -1;
  const whole = Math.floor(micros / 1000);
  let fraction = micros - whole * 1000;
  at = writeDecimal(target, at, whole);
  if (fraction === 0) return at;
  target[at++] = DOT;
  for (let unit = 100; fraction > 0; unit /= 10) {
    const digit = Math.floor(fraction / unit);
    target[at++] = ZERO + digit;
    fraction -= digit * unit;
  }
  return at;
}

/** A chain record's line at `at`: -1 unless its time and trace id are plain, its type known and its duration writable. */
function writeRecord(target: Uint8Array, at: number, time: string, event: AuditEventInput, segment: Segment): number {
  const type = TYPE_MEMBERS.get(event.type);
  if (type === undefined) return -1;
  target.set(TIME_OPEN, at);
  at = writePlain(target, at + TIME_OPEN.length, time);
  if (at < 0) return -1;
  target.set(TRACE_ID_OPEN, at);
  at = writePlain(target, at + TRACE_ID_OPEN.length, event.trace_id);
  if (at < 0) return -1;
  target.set(type, at);
  at += type.length;
  target.set(segment.bytes, at);
  at += segment.bytes.length;
  const duration = event.duration_ms;
  if (duration !== undefined) {
    target.set(DURATION_OPEN, at);
    at = writeMillis(target, at + DURATION_OPEN.length, duration);
    if (at < 0) return -1;
  }
  target[at++] = CLOSE_BRACE;
  return at;
}

/**
 * Appends an event's line to `events` as UTF-8: the bytes of serializeEvent's text (event.ts).
 *
 * Once per call: a chain record of a read (a frozen principal; plain time, trace id and
 * type; nothing after the code but its duration) is written straight into the buffer's
 * bytes, with its principal's segment copied as bytes: no string is built per call.
 */
export function appendEventFast(events: EventBuffer, uncapped: AuditEventInput, defaultTime: () => string, scrub: (json: string) => string = asIs): void {
  const event = capEvent(uncapped);
  const p = event.principal;
  const cache = p === undefined ? undefined : principalCache(p, scrub);
  let clock = defaultTime;
  if (cache && hasDurationOnly(event)) {
    const time = event.time ?? defaultTime();
    const segment = segmentOf(cache, event);
    const target = events.reserve(RECORD_BYTES + time.length + event.trace_id.length + segment.bytes.length);
    const end = writeRecord(target, events.byteLength, time, event, segment);
    if (end >= 0) {
      events.end(end);
      return;
    }
    // Not writable as bytes after all: the text, with the time already taken.
    clock = () => time;
  }
  events.push(serializeEventFast(event, clock, scrub));
}
