// The unsafe-character escapes the CLI prints with: nothing that drives a terminal or reorders
// text survives, JSON stays valid and parses back to what the server sent.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { escapeUnsafe, escapeUnsafeJson, UNSAFE_TEXT } from '../../src/rpc/text.js';

describe('escapeUnsafe', () => {
  it('writes ESC, CSI, separators and bidi overrides as visible escapes', () => {
    expect(escapeUnsafe('a\u001b[2Jb')).toBe('a\\x1b[2Jb');
    expect(escapeUnsafe('x\u009by\u2028z\u202e')).toBe('x\\x9by\\u2028z\\u202e');
    expect(escapeUnsafe('plain café 🙂')).toBe('plain café 🙂');
  });

  it('leaves no unsafe character in any text', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 200 }), (text) => {
        expect(UNSAFE_TEXT.test(escapeUnsafe(text))).toBe(false);
      }),
    );
  });
});

describe('escapeUnsafeJson', () => {
  it('keeps JSON valid and equal to what was stringified, with no unsafe character left inside strings', () => {
    fc.assert(
      fc.property(fc.dictionary(fc.string({ maxLength: 10 }), fc.string({ unit: 'binary', maxLength: 50 })), (value) => {
        const escaped = escapeUnsafeJson(JSON.stringify(value, null, 2));
        expect(JSON.parse(escaped)).toEqual(value);
        expect(UNSAFE_TEXT.test(escaped.replace(/\n/g, ''))).toBe(false);
      }),
    );
  });
});
