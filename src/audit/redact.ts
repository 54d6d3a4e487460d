// Redaction of requests and free text before they reach the audit log.
//
// Two layers:
//  1. Fields declared secret in the API (`[(debvisor.v1.secret) = true]`), found through
//     the generated descriptors, recursively through nested, repeated and map fields.
//  2. Anything that merely looks like a secret, in any string: API key and user session
//     tokens (dvk_/dvs_<id>_<secret>), PEM private key blocks and `Bearer <token>` credentials.
import { getOption, toJson, type DescField, type DescMessage, type JsonValue, type Message, type Registry } from '@bufbuild/protobuf';
import { secret } from '../gen/debvisor/v1/options_pb.js';

export const REDACTED = '[REDACTED]';
export const REDACTED_PRIVATE_KEY = '[REDACTED PRIVATE KEY]';

export type AuditLevel = 'metadata' | 'request';

// A cheap pre-test: almost no string contains any of these, so the replacements rarely run.
const MAYBE_SECRET = /dv[ks]_|PRIVATE KEY|bearer/i;

// Free text. A private key block without its END line is redacted to the end of the text.
const PEM_TEXT = /-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----[\s\S]*?(?:-----END \1PRIVATE KEY-----|$)/g;
// At least 8 token characters, so that prose ("bearer of news") is left alone.
const BEARER_TEXT = /\b(Bearer)\s+[A-Za-z0-9\-._~+/]{8,}=*/gi;
// dvk_<16 hex id>_<base64url secret> (API keys, src/authn/apikey-token.ts; dvs_ for user
// sessions, src/authn/user-session.ts); ids contain no
// underscore, so the first `_` after the id starts the secret. Matched wherever it starts,
// even glued to a letter or digit before it: the secret class covers every character of a
// token, so a match that starts earlier runs through the whole token.
const API_KEY = /(dv[ks])_([A-Za-z0-9-]+)_[A-Za-z0-9_-]+/g;

// The same over serialized JSON: never match across a string's closing quote, and
// treat the JSON escapes \n \r \t as the whitespace they stand for.
const PEM_JSON = /-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----(?:[^"\\]|\\.)*?(?:-----END \1PRIVATE KEY-----|(?="))/g;
const BEARER_JSON = /\b(Bearer)(?:\s|\\[nrt])+[A-Za-z0-9\-._~+/]{8,}=*/gi;

/** Replaces secret-looking substrings of free text (idempotent). */
export function scrubSecrets(text: string): string {
  if (!MAYBE_SECRET.test(text)) return text;
  return text.replace(PEM_TEXT, REDACTED_PRIVATE_KEY).replace(BEARER_TEXT, `$1 ${REDACTED}`).replace(API_KEY, `$1_$2_${REDACTED}`);
}

/**
 * scrubSecrets for a serialized JSON document: the result is still valid JSON with the
 * same structure (replacements stay inside the string they start in).
 */
export function scrubSecretsInJson(json: string): string {
  if (!MAYBE_SECRET.test(json)) return json;
  return json.replace(PEM_JSON, REDACTED_PRIVATE_KEY).replace(BEARER_JSON, `$1 ${REDACTED}`).replace(API_KEY, `$1_$2_${REDACTED}`);
}

/** scrubSecrets applied to every string (keys and values) of a JSON value. */
export function scrubJsonValue(value: JsonValue): JsonValue {
  if (typeof value === 'string') return scrubSecrets(value);
  if (value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map(scrubJsonValue);
  const out: Record<string, JsonValue> = {};
  for (const [key, item] of Object.entries(value)) out[scrubSecrets(key)] = scrubJsonValue(item);
  return out;
}

interface MessagePlan {
  /** Fields by JSON name (what toJson emits) and by proto name (useProtoFieldName). */
  fields: Map<string, DescField>;
  /** Fields marked (debvisor.v1.secret) = true (getOption decodes options: do it once). */
  secrets: Set<DescField>;
  /** Does this message or anything reachable from it have a secret field? */
  hasSecrets: boolean;
}

const plans = new WeakMap<DescMessage, MessagePlan>();

function isSecret(field: DescField): boolean {
  return getOption(field, secret);
}

function fieldMessage(field: DescField): DescMessage | undefined {
  switch (field.fieldKind) {
    case 'message':
      return field.message;
    case 'list':
      return field.listKind === 'message' ? field.message : undefined;
    case 'map':
      return field.mapKind === 'message' ? field.message : undefined;
    default:
      return undefined;
  }
}

function reachesSecret(root: DescMessage): boolean {
  const seen = new Set<DescMessage>([root]);
  const queue = [root];
  for (let desc = queue.pop(); desc; desc = queue.pop()) {
    for (const field of desc.fields) {
      if (isSecret(field)) return true;
      const child = fieldMessage(field);
      if (child && !seen.has(child)) {
        seen.add(child);
        queue.push(child);
      }
    }
  }
  return false;
}

function planFor(desc: DescMessage): MessagePlan {
  const cached = plans.get(desc);
  if (cached) return cached;
  const fields = new Map<string, DescField>();
  const secrets = new Set<DescField>();
  for (const field of desc.fields) {
    fields.set(field.jsonName, field);
    fields.set(field.name, field);
    if (isSecret(field)) secrets.add(field);
  }
  const plan = { fields, secrets, hasSecrets: reachesSecret(desc) };
  plans.set(desc, plan);
  return plan;
}

function isPlainObject(value: JsonValue): value is { [k: string]: JsonValue } {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function redactMessageJson(desc: DescMessage, json: JsonValue, registry: Registry | undefined): JsonValue {
  if (desc.typeName === 'google.protobuf.Any' && isPlainObject(json) && typeof json['@type'] === 'string' && registry) {
    const typeName = json['@type'].slice(json['@type'].lastIndexOf('/') + 1);
    const packed = registry.getMessage(typeName);
    if (packed && !packed.typeName.startsWith('google.protobuf.')) {
      const inner = redactMessageJson(packed, json, registry);
      return isPlainObject(inner) ? { ...inner, '@type': json['@type'] } : inner;
    }
  }
  // Other well-known types have special JSON forms and never carry secret fields.
  if (desc.typeName.startsWith('google.protobuf.') || !isPlainObject(json)) return scrubJsonValue(json);
  const plan = planFor(desc);
  if (!plan.hasSecrets) return scrubJsonValue(json);
  const out: Record<string, JsonValue> = {};
  for (const [key, value] of Object.entries(json)) {
    const field = plan.fields.get(key);
    if (!field) {
      out[scrubSecrets(key)] = scrubJsonValue(value);
      continue;
    }
    if (plan.secrets.has(field)) {
      out[key] = REDACTED;
      continue;
    }
    const child = fieldMessage(field);
    if (!child) {
      out[key] = scrubJsonValue(value);
    } else if (field.fieldKind === 'list' && Array.isArray(value)) {
      out[key] = value.map((item) => redactMessageJson(child, item, registry));
    } else if (field.fieldKind === 'map' && isPlainObject(value)) {
      const map: Record<string, JsonValue> = {};
      for (const [mapKey, item] of Object.entries(value)) map[scrubSecrets(mapKey)] = redactMessageJson(child, item, registry);
      out[key] = map;
    } else {
      out[key] = redactMessageJson(child, value, registry);
    }
  }
  return out;
}

/** Redacts a protobuf JSON value of message type `schema` (e.g. one parsed from a log). */
export function redactJson(schema: DescMessage, json: JsonValue, registry?: Registry): JsonValue {
  return redactMessageJson(schema, json, registry);
}

/**
 * The request as it goes into the audit log. `metadata` level logs no request at all;
 * `request` level logs its protobuf JSON with secret fields replaced by "[REDACTED]"
 * and secret-looking strings scrubbed. `registry` is only needed for google.protobuf.Any.
 */
export function redactRequest(schema: DescMessage, message: Message, level: AuditLevel, registry?: Registry): unknown {
  if (level === 'metadata') return undefined;
  let json: JsonValue;
  try {
    json = toJson(schema, message, registry ? { registry } : undefined);
  } catch (err) {
    return { '@unserializable': scrubSecrets(err instanceof Error ? err.message : String(err)) };
  }
  return redactMessageJson(schema, json, registry);
}
