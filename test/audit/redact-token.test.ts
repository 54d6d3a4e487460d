// Property: an API key token is scrubbed wherever it sits in free text or JSON, glued to
// letters, digits or anything else on either side.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { scrubSecrets, scrubSecretsInJson } from '../../src/audit/redact.js';

const HEX = '0123456789abcdef'.split('');
const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'.split('');

/** Tokens shaped as src/authn/apikey-token.ts makes them. */
const token = fc
  .tuple(fc.string({ unit: fc.constantFrom(...HEX), minLength: 16, maxLength: 16 }), fc.string({ unit: fc.constantFrom(...BASE64URL), minLength: 43, maxLength: 43 }))
  .map(([id, secret]) => ({ token: `dvk_${id}_${secret}`, secret }));

/** Surrounding text: anything, often ending or starting with token-like characters, `dvk`, `_` or `Bearer`. */
const around = fc.oneof(
  fc.string(),
  fc.string({ unit: 'grapheme' }),
  fc.string({ unit: fc.constantFrom(...BASE64URL, 'dvk_', 'dvk', ' ', '\t', '\n', '"', '\\', 'Bearer ', '\u00a0') }),
);

describe('scrubSecrets finds every dvk_ token', () => {
  it('in arbitrary surrounding text', () => {
    fc.assert(
      fc.property(around, token, around, (before, { token: t, secret }, after) => {
        fc.pre(!before.includes(secret) && !after.includes(secret));
        expect(scrubSecrets(`${before}${t}${after}`)).not.toContain(secret);
      }),
      { numRuns: 2000 },
    );
  });

  it('glued to a letter or a digit', () => {
    fc.assert(
      fc.property(fc.constantFrom(...BASE64URL), token, (glue, { token: t, secret }) => {
        expect(scrubSecrets(`${glue}${t}`)).not.toContain(secret);
        expect(scrubSecrets(`x${glue}${t}${glue}`)).not.toContain(secret);
      }),
    );
    expect(scrubSecrets('id7dvk_0123456789abcdef_S3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tx')).toBe('id7dvk_0123456789abcdef_[REDACTED]');
  });

  it('in a JSON document, which stays valid JSON', () => {
    fc.assert(
      fc.property(around, token, around, (before, { token: t, secret }, after) => {
        fc.pre(!before.includes(secret) && !after.includes(secret));
        const json = JSON.stringify({ text: `${before}${t}${after}`, list: [`${before}${t}`] });
        const scrubbed = scrubSecretsInJson(json);
        expect(scrubbed).not.toContain(secret);
        expect(() => JSON.parse(scrubbed) as unknown).not.toThrow();
      }),
      { numRuns: 2000 },
    );
  });

  it('is idempotent', () => {
    fc.assert(
      fc.property(around, token, around, (before, { token: t }, after) => {
        const once = scrubSecrets(`${before}${t}${after}`);
        expect(scrubSecrets(once)).toBe(once);
      }),
    );
  });
});

describe('user session tokens', () => {
  it('scrubs a dvs_ token in free text and in JSON, keeping its id', () => {
    const token = 'dvs_0123456789abcdef_' + 'A'.repeat(43);
    expect(scrubSecrets(`logout ${token} now`)).toBe('logout dvs_0123456789abcdef_[REDACTED] now');
    expect(JSON.parse(scrubSecretsInJson(JSON.stringify({ reason: token })))).toEqual({ reason: 'dvs_0123456789abcdef_[REDACTED]' });
  });
});
