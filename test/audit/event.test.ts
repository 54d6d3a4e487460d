// The event serializer (with its once-per-principal cache) must be exactly JSON.stringify
// of the event in its fixed key order, for any content: hostile strings included.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AUDIT_CAPS, capEvent, capPrincipal, capString, TRUNCATED_MARKER } from '../../src/audit/caps.js';
import { EventBuffer } from '../../src/audit/chain.js';
import { appendEvent, serializeEvent, type AuditEventInput } from '../../src/audit/event.js';
import { appendEventFast, serializeEventFast } from '../../src/audit/event-fast.js';
import { scrubSecretsInJson } from '../../src/audit/redact.js';

/** The reference: the fixed-order object of the capped event (caps.ts), stringified. */
function reference(uncapped: AuditEventInput, time: string): string {
  const event = capEvent(uncapped);
  const out: Record<string, unknown> = { time: event.time ?? time, trace_id: event.trace_id, type: event.type };
  const p = event.principal && capPrincipal(event.principal);
  if (p !== undefined) {
    const principal: Record<string, unknown> = { id: p.id, kind: p.kind, roles: p.roles };
    if (p.cert_fingerprint !== undefined) principal.cert_fingerprint = p.cert_fingerprint;
    if (p.key_id !== undefined) principal.key_id = p.key_id;
    out.principal = principal;
  }
  for (const key of ['source', 'method', 'decision', 'code', 'duration_ms', 'request', 'object', 'reason', 'details'] as const) {
    if (event[key] !== undefined) out[key] = event[key];
  }
  return JSON.stringify(out);
}

const HOSTILE = [
  '"},"type":"AUTH","x":{"',
  '\\',
  '\\"',
  'line\nbreak\r\ttab\u0000nul\u001f',
  '\u2028\u2029',
  '\ud800 lone surrogate \udfff',
  '😀 emoji',
  '</script><!--',
  '","hmac":"' + '0'.repeat(64) + '"}',
  '","seq":1,"prev":"',
];

/** Text over every cap (up to 3 bytes per unit, so 1,500 units pass the 4 KiB field cap). */
const long = fc
  .tuple(fc.oneof(fc.string({ unit: 'binary', minLength: 1 }), fc.constantFrom(...HOSTILE)), fc.integer({ min: 80, max: 1500 }))
  .map(([unit, length]) => unit.repeat(Math.ceil(length / unit.length)).slice(0, length));
const text = fc.oneof({ arbitrary: fc.string({ unit: 'binary' }), weight: 4 }, { arbitrary: fc.constantFrom(...HOSTILE), weight: 2 }, { arbitrary: long, weight: 1 });
const json: fc.Arbitrary<unknown> = fc.oneof({ arbitrary: fc.jsonValue(), weight: 4 }, { arbitrary: fc.dictionary(text, fc.oneof(text, fc.array(text))), weight: 1 });

const events: fc.Arbitrary<AuditEventInput> = fc.record(
  {
    time: text,
    trace_id: text,
    type: fc.constantFrom('CALL', 'AUTH_FAILED', 'SUSPICIOUS'),
    principal: fc.record(
      {
        id: text,
        kind: fc.constantFrom('certificate', 'api_key'),
        roles: fc.array(text, { maxLength: 4 }),
        cert_fingerprint: text,
        key_id: text,
      },
      { requiredKeys: ['id', 'kind', 'roles'] },
    ),
    source: text,
    method: text,
    decision: fc.constantFrom('allow', 'deny'),
    code: text,
    duration_ms: fc.oneof(fc.double(), fc.integer()),
    request: json,
    object: text,
    reason: text,
    details: fc.dictionary(text, json),
  },
  { requiredKeys: ['trace_id', 'type'] },
);

/** The event with its principal (and role list) frozen, as src/audit/principal.ts hands them out. */
function withFrozenPrincipal(event: AuditEventInput): AuditEventInput {
  const p = event.principal;
  return p === undefined ? event : { ...event, principal: Object.freeze({ ...p, roles: Object.freeze([...p.roles]) }) };
}

/**
 * serializeEvent's text, checked against what appendEvent writes for the same event (its
 * bytes must be that text's UTF-8): the line as the log queues it.
 */
function serialized(event: AuditEventInput, time: string, scrub?: (json: string) => string): string {
  const text = serializeEvent(event, () => time, scrub);
  // The byte-level path the log writes with must give exactly the reference's line.
  expect(serializeEventFast(event, () => time, scrub)).toBe(text);
  for (const append of [appendEvent, appendEventFast]) {
    const events = new EventBuffer();
    events.push('{"before":1}');
    append(events, event, () => time, scrub);
    expect(events.count).toBe(2);
    expect(events.event(1).equals(Buffer.from(text, 'utf8'))).toBe(true);
  }
  return text;
}

describe('serializeEvent and appendEvent', () => {
  it('equals JSON.stringify of the fixed-order event, for any content, with a frozen (cached) principal or not', () => {
    fc.assert(
      fc.property(events, fc.boolean(), (generated, frozen) => {
        const event = frozen ? withFrozenPrincipal(generated) : generated;
        const expected = reference(event, '2026-01-01T00:00:00.000Z');
        expect(serialized(event, '2026-01-01T00:00:00.000Z')).toBe(expected);
        // A second time: the frozen principal's JSON now comes from the cache.
        expect(serialized(event, '2026-01-01T00:00:00.000Z')).toBe(expected);
      }),
      { numRuns: 2000 },
    );
  });

  it('scrubbed member by member equals the whole line scrubbed, for any content', () => {
    const secretish = fc.constantFrom(
      'dvk_0123456789abcdef_c2VjcmV0c2VjcmV0c2VjcmV0',
      'Bearer abcdefgh12345678',
      'x bearer\tabcdefghijkl y',
      '-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----',
      '-----BEGIN RSA PRIVATE KEY-----\nunterminated',
    );
    const withSecrets = fc.record({ event: events, secret: secretish, at: fc.constantFrom('id', 'role', 'source', 'method', 'object', 'reason', 'trace_id') });
    fc.assert(
      fc.property(withSecrets, fc.boolean(), ({ event: generated, secret, at }, frozen) => {
        const base: AuditEventInput = { ...generated, principal: generated.principal ?? { id: 'p', kind: 'certificate', roles: [] } };
        const planted: AuditEventInput =
          at === 'id' || at === 'role'
            ? { ...base, principal: { ...base.principal!, ...(at === 'id' ? { id: `a ${secret} b` } : { roles: [secret] }) } }
            : { ...base, [at]: `a ${secret} b` };
        const event = frozen ? withFrozenPrincipal(planted) : planted;
        const expected = scrubSecretsInJson(reference(event, 'now'));
        expect(serialized(event, 'now', scrubSecretsInJson)).toBe(expected);
        expect(serialized(event, 'now', scrubSecretsInJson)).toBe(expected);
        expect(expected).not.toContain('c2VjcmV0c2VjcmV0c2VjcmV0');
      }),
      { numRuns: 1000 },
    );
  });

  it('takes the cached path for the chain records (plain time, trace id and type; frozen principal) with the same result, hostile members included', () => {
    const traceId = fc.oneof(fc.stringMatching(/^[0-9a-f]{32}$/), fc.constant('client-trace.id:1'));
    const plainEvents = fc.record({ event: events, traceId, frozen: fc.constant(true) });
    fc.assert(
      fc.property(plainEvents, fc.boolean(), ({ event: generated, traceId: id }, scrubbed) => {
        const base: AuditEventInput = { ...generated, trace_id: id, principal: generated.principal ?? { id: 'p', kind: 'certificate', roles: ['admin'] } };
        const event = withFrozenPrincipal(base);
        const time = '2026-01-01T00:00:00.000Z';
        const expected = scrubbed ? scrubSecretsInJson(reference(event, time)) : reference(event, time);
        const scrub = scrubbed ? scrubSecretsInJson : undefined;
        // Twice, and again with another duration: the second time the principal's segment comes from the cache.
        expect(serialized(event, time, scrub)).toBe(expected);
        expect(serialized(event, time, scrub)).toBe(expected);
        const later = { ...event, duration_ms: 1.5 };
        const expectedLater = scrubbed ? scrubSecretsInJson(reference(later, time)) : reference(later, time);
        expect(serialized(later, time, scrub)).toBe(expectedLater);
      }),
      { numRuns: 2000 },
    );
  });

  it("writes a read call's duration-only tail as the number's own text, odd numbers included", () => {
    const principal = Object.freeze({ id: 'admin', kind: 'certificate' as const, roles: Object.freeze(['admin']), cert_fingerprint: 'ab'.repeat(32) });
    const durations = [0, -0, 0.001, 1.5, 123456.789, 1e21, 5e-7, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, undefined];
    for (const duration_ms of durations) {
      const event: AuditEventInput = { trace_id: '0123456789abcdef0123456789abcdef', type: 'CALL', principal, source: '127.0.0.1:1', method: '/a/B', decision: 'allow', code: 'OK', duration_ms };
      expect(serialized(event, 'now', scrubSecretsInJson)).toBe(reference(event, 'now'));
    }
  });

  it('writes any whole number of microseconds (what the chain records) as JSON does, and the numbers either side', () => {
    const principal = Object.freeze({ id: 'admin', kind: 'certificate' as const, roles: Object.freeze(['admin']) });
    const micros = fc.oneof(fc.integer({ min: 0, max: 1e12 + 10 }), fc.integer({ min: 0, max: 100_000 }));
    fc.assert(
      fc.property(micros, fc.constantFrom(0, 1, -1), (n, nudge) => {
        const exact = n / 1000;
        const duration_ms = nudge === 0 ? exact : exact + nudge * Number.EPSILON * Math.max(1, exact);
        const event: AuditEventInput = { trace_id: '0123456789abcdef0123456789abcdef', type: 'CALL', principal, source: '127.0.0.1:1', method: '/a/B', decision: 'allow', code: 'OK', duration_ms };
        expect(serialized(event, '2026-01-01T00:00:00.000Z')).toBe(reference(event, '2026-01-01T00:00:00.000Z'));
      }),
      { numRuns: 5000 },
    );
  });

  it('the same frozen principal in different events', () => {
    const principal = Object.freeze({ id: 'spiffe://x/"quoted"', kind: 'certificate' as const, roles: Object.freeze(['admin', 'ops\n']), cert_fingerprint: 'ab'.repeat(32) });
    const events: AuditEventInput[] = [
      { trace_id: 't1', type: 'CALL', principal, source: '1.2.3.4:5', method: '/a/B', decision: 'allow', code: 'OK', duration_ms: 0.123 },
      { trace_id: 't2', type: 'SUSPICIOUS', principal },
      { time: 'custom', trace_id: 't3', type: 'AUTHZ_DENIED', principal, reason: 'why "not"', details: { n: 1 } },
    ];
    for (const event of events) expect(serialized(event, 'now')).toBe(reference(event, 'now'));
  });

  it('keeps hostile strings inside their member', () => {
    for (const hostile of HOSTILE) {
      const event: AuditEventInput = { trace_id: hostile, type: 'CALL', method: hostile, reason: hostile, principal: { id: hostile, kind: 'api_key', roles: [hostile] } };
      const parsed = JSON.parse(serialized(event, 't')) as Record<string, unknown>;
      expect(parsed).toEqual({ time: 't', trace_id: hostile, type: 'CALL', principal: { id: hostile, kind: 'api_key', roles: [hostile] }, method: hostile, reason: hostile });
    }
  });

  it('leaves out members JSON has no form for, and drops unknown keys', () => {
    const event = { trace_id: 't', type: 'CALL', request: () => 1, details: undefined, extra: 'x', duration_ms: Number.NaN } as unknown as AuditEventInput;
    expect(serialized(event, 'now')).toBe('{"time":"now","trace_id":"t","type":"CALL","duration_ms":null}');
    const principal = Object.freeze({ id: 'p', kind: 'api_key' as const, roles: Object.freeze([]), key_id: 'k' });
    expect(serialized({ ...event, principal }, 'now')).toBe('{"time":"now","trace_id":"t","type":"CALL","principal":{"id":"p","kind":"api_key","roles":[],"key_id":"k"},"duration_ms":null}');
  });
});

const utf8Bytes = (value: string): number => Buffer.byteLength(value, 'utf8');
/** A request or details member's size as capped: a string's bytes, else its JSON's. */
const memberBytes = (value: unknown): number => utf8Bytes(typeof value === 'string' ? value : JSON.stringify(value));

describe('audit caps', () => {
  it('cuts a string over its cap on a UTF-8 boundary, with a marker naming the bytes cut, and leaves the rest alone', () => {
    fc.assert(
      fc.property(fc.oneof(text, long), fc.constantFrom(AUDIT_CAPS.resource, AUDIT_CAPS.reason, AUDIT_CAPS.field, 40), (value, cap) => {
        const capped = capString(value, cap);
        const bytes = utf8Bytes(value);
        if (bytes <= cap) {
          expect(capped).toBe(value);
          return;
        }
        expect(utf8Bytes(capped)).toBeLessThanOrEqual(cap);
        const marker = TRUNCATED_MARKER.exec(capped);
        expect(marker).not.toBeNull();
        const kept = capped.slice(0, capped.length - (marker?.[0].length ?? 0));
        // The prefix is the original's first bytes (no character split), and N is the rest.
        expect(value.startsWith(kept)).toBe(true);
        expect(Buffer.from(value, 'utf8').subarray(0, utf8Bytes(kept)).equals(Buffer.from(kept, 'utf8'))).toBe(true);
        expect(utf8Bytes(kept) + Number(marker?.[1])).toBe(bytes);
        // As much as fits is kept: the next character would not have.
        const next = value.codePointAt(kept.length) ?? 0;
        expect(utf8Bytes(kept) + utf8Bytes(String.fromCodePoint(next))).toBeGreaterThan(cap - utf8Bytes(`…[truncated ${bytes} bytes]`));
      }),
      { numRuns: 3000 },
    );
  });

  it('bounds every member of a serialized record, on the byte path and the text path alike', () => {
    fc.assert(
      fc.property(events, fc.boolean(), (generated, frozen) => {
        const event = frozen ? withFrozenPrincipal(generated) : generated;
        const line = JSON.parse(serialized(event, 'now', scrubSecretsInJson)) as Record<string, unknown>;
        for (const key of ['time', 'trace_id', 'source', 'method', 'code', 'object'] as const) {
          if (typeof line[key] === 'string') expect(utf8Bytes(line[key])).toBeLessThanOrEqual(AUDIT_CAPS.other);
        }
        if (typeof line.reason === 'string') expect(utf8Bytes(line.reason)).toBeLessThanOrEqual(AUDIT_CAPS.reason);
        const principal = line.principal as { id: string; roles: string[] } | undefined;
        for (const value of principal ? [principal.id, ...principal.roles] : []) expect(utf8Bytes(value)).toBeLessThanOrEqual(AUDIT_CAPS.resource);
        for (const bag of [line.request, line.details]) {
          if (bag !== null && typeof bag === 'object' && !Array.isArray(bag)) {
            for (const member of Object.values(bag)) expect(memberBytes(member)).toBeLessThanOrEqual(AUDIT_CAPS.field);
          } else if (bag !== undefined) {
            expect(memberBytes(bag)).toBeLessThanOrEqual(AUDIT_CAPS.field);
          }
        }
      }),
      { numRuns: 1000 },
    );
  });

  it("caps a chain record's members on the byte path (a read's record) exactly as on the text path", () => {
    const principal = Object.freeze({ id: 'admin', kind: 'certificate' as const, roles: Object.freeze(['admin']) });
    const huge = 'x'.repeat(2_000_000);
    const event: AuditEventInput = { trace_id: huge, type: 'CALL', principal, source: huge, method: `/${huge}`, decision: 'deny', code: 'OK', duration_ms: 1.5 };
    const line = serialized(event, '2026-01-01T00:00:00.000Z');
    expect(line).toBe(reference(event, '2026-01-01T00:00:00.000Z'));
    expect(line.length).toBeLessThan(1000);
    expect(JSON.parse(line)).toMatchObject({ method: expect.stringMatching(/^\/x+…\[truncated 1999\d{3} bytes\]$/) as unknown });
  });

  it('leaves an event with nothing over its caps the same object (no copy per call)', () => {
    const event: AuditEventInput = { trace_id: 't', type: 'CALL', source: '127.0.0.1:1', method: '/a/B', object: 'pool:ci', reason: 'no', request: { name: 'vm1' }, details: { stage: 'started' } };
    expect(capEvent(event)).toBe(event);
  });
});
