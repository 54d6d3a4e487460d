// Size caps on what an audit record holds, so no caller can make one record large.
//
// A string over its cap keeps its longest prefix that, with the marker appended, fits in
// the cap (in UTF-8 bytes, never splitting a character), and ends with the marker
// `…[truncated N bytes]`, N being the UTF-8 bytes cut off. A request or details member
// that is not a string and whose JSON is over the cap becomes that JSON, cut the same way.
import type { AuditEventInput, AuditPrincipal } from './types.js';

/** Caps in UTF-8 bytes of the value (JSON escaping may lengthen it on disk, at most 6×). */
export const AUDIT_CAPS = {
  /** `object` (the resource acted on), and each principal string. */
  resource: 256,
  /** `reason`. */
  reason: 512,
  /** Each top-level member of `request` and of `details`. */
  field: 4096,
  /** Everything else: time, trace_id, source, method, code. */
  other: 256,
} as const;

export const TRUNCATED_MARKER = /…\[truncated (\d+) bytes\]$/;

/** A character's UTF-8 bytes and UTF-16 units. */
const ONE = { bytes: 1, units: 1 };
const TWO = { bytes: 2, units: 1 };
const THREE = { bytes: 3, units: 1 };
const PAIR = { bytes: 4, units: 2 };

/** UTF-8 bytes of the character starting at `i` of `text`, and its UTF-16 units (2 for a surrogate pair). */
function charAt(text: string, i: number): { bytes: number; units: number } {
  const code = text.charCodeAt(i);
  if (code < 0x80) return ONE;
  if (code < 0x800) return TWO;
  if (code >= 0xd800 && code <= 0xdbff) {
    const next = text.charCodeAt(i + 1);
    if (next >= 0xdc00 && next <= 0xdfff) return PAIR;
  }
  // A lone surrogate is written as U+FFFD (3 bytes) by Buffer; JSON escapes it instead.
  return THREE;
}

function marker(cut: number): string {
  return `…[truncated ${cut} bytes]`;
}

/**
 * `text` if its UTF-8 form fits in `cap` bytes, else its prefix and the marker, together
 * at most `cap` bytes. Costs nothing measurable for short strings (the length test).
 */
export function capString(text: string, cap: number): string {
  // UTF-8 takes at most 3 bytes per UTF-16 code unit.
  if (text.length * 3 <= cap) return text;
  const total = Buffer.byteLength(text, 'utf8');
  if (total <= cap) return text;
  // Room for the prefix with the longest marker N could need.
  const room = Math.max(0, cap - Buffer.byteLength(marker(total), 'utf8'));
  let kept = 0;
  let end = 0;
  while (end < text.length) {
    const char = charAt(text, end);
    if (kept + char.bytes > room) break;
    kept += char.bytes;
    end += char.units;
  }
  return `${text.slice(0, end)}${marker(total - kept)}`;
}

/** A request or details member, capped (see the file comment); the same value when it fits. */
function capMember(value: unknown, cap: number): unknown {
  if (typeof value === 'string') return capString(value, cap);
  if (value === null || typeof value !== 'object') return value;
  const json = JSON.stringify(value) as string | undefined;
  if (json === undefined || json.length * 3 <= cap) return value;
  const capped = capString(json, cap);
  return capped === json ? value : capped;
}

/** Each top-level member capped; the same object when none is over. */
function capMembers(value: unknown, cap: number): unknown {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return capMember(value, cap);
  let out: Record<string, unknown> | undefined;
  for (const [key, member] of Object.entries(value as Record<string, unknown>)) {
    const capped = capMember(member, cap);
    if (capped !== member) (out ??= { ...(value as Record<string, unknown>) })[key] = capped;
  }
  return out ?? value;
}

function capOptional(text: string | undefined, cap: number): string | undefined {
  return text === undefined ? undefined : capString(text, cap);
}

/** A principal's strings capped; the same object when none is over (so its caches still apply). */
export function capPrincipal(p: AuditPrincipal): AuditPrincipal {
  const cap = AUDIT_CAPS.resource;
  const id = capString(p.id, cap);
  const roles = p.roles.some((role) => capString(role, cap) !== role) ? p.roles.map((role) => capString(role, cap)) : p.roles;
  const fingerprint = capOptional(p.cert_fingerprint, cap);
  const keyId = capOptional(p.key_id, cap);
  const reason = capOptional(p.impersonation_reason, AUDIT_CAPS.reason);
  if (id === p.id && roles === p.roles && fingerprint === p.cert_fingerprint && keyId === p.key_id && reason === p.impersonation_reason) return p;
  // The impersonation members are validated at the edge (src/chain/impersonation.ts): only the reason is free text.
  const out: AuditPrincipal = { ...p, id, roles };
  if (fingerprint !== undefined) out.cert_fingerprint = fingerprint;
  if (keyId !== undefined) out.key_id = keyId;
  if (reason !== undefined) out.impersonation_reason = reason;
  return out;
}

/** Whether any string member may be over its cap (a cheap test; the caps then decide). */
function mayBeLong(text: string | undefined, cap: number): boolean {
  return text !== undefined && text.length * 3 > cap;
}

/**
 * The event with every string within its cap (AUDIT_CAPS); the same object when nothing
 * is over, which is what almost every call is. The principal is capped where it is
 * serialized (event.ts, event-fast.ts).
 */
export function capEvent<E extends AuditEventInput>(event: E): E {
  const { other } = AUDIT_CAPS;
  const long =
    mayBeLong(event.time, other) ||
    mayBeLong(event.trace_id, other) ||
    mayBeLong(event.source, other) ||
    mayBeLong(event.method, other) ||
    mayBeLong(event.code, other) ||
    mayBeLong(event.object, AUDIT_CAPS.resource) ||
    mayBeLong(event.reason, AUDIT_CAPS.reason);
  if (!long && event.request === undefined && event.details === undefined) return event;
  const request = event.request === undefined ? undefined : capMembers(event.request, AUDIT_CAPS.field);
  const details = event.details === undefined ? undefined : (capMembers(event.details, AUDIT_CAPS.field) as Record<string, unknown>);
  if (!long && request === event.request && details === event.details) return event;
  const out: E = { ...event };
  if (event.time !== undefined) out.time = capString(event.time, other);
  out.trace_id = capString(event.trace_id, other);
  if (event.source !== undefined) out.source = capString(event.source, other);
  if (event.method !== undefined) out.method = capString(event.method, other);
  if (event.code !== undefined) out.code = capString(event.code, other);
  if (event.object !== undefined) out.object = capString(event.object, AUDIT_CAPS.resource);
  if (event.reason !== undefined) out.reason = capString(event.reason, AUDIT_CAPS.reason);
  if (request !== undefined) out.request = request;
  if (details !== undefined) out.details = details;
  return out;
}
