// Characters that make text lie to whoever reads it: the one definition shared by the server's
// validator (refuses them) and the CLI's printer (escapes them). Imports nothing.

/**
 * C0 and C1 controls and DEL (they forge log lines and drive terminals: ESC[2J clears the
 * screen), line and paragraph separators (JSON and JavaScript treat them as line breaks),
 * bidirectional marks, embeddings, overrides and isolates (text reads differently from what it
 * is), and lone surrogates (not valid UTF-8).
 */
const UNSAFE_CLASS = '[\\p{Cc}\\p{Zl}\\p{Zp}\\p{Cs}\\u061c\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069]';

/** Tests whether text holds any unsafe character. */
export const UNSAFE_TEXT = new RegExp(UNSAFE_CLASS, 'u');

const UNSAFE_TEXT_ALL = new RegExp(UNSAFE_CLASS, 'gu');

/** `text` with every unsafe character written as a visible escape (\x1b, \u2028). */
export function escapeUnsafe(text: string): string {
  return text.replace(UNSAFE_TEXT_ALL, (ch) => {
    const code = ch.codePointAt(0) ?? 0;
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}

/**
 * JSON text from JSON.stringify with the unsafe characters it leaves raw (DEL, C1, separators,
 * bidi overrides) written as \u escapes: still valid JSON that parses to the same value. C0
 * controls are left alone: inside strings JSON.stringify escaped them, outside they are layout.
 */
export function escapeUnsafeJson(json: string): string {
  return json.replace(UNSAFE_TEXT_ALL, (ch) => {
    const code = ch.codePointAt(0) ?? 0;
    return code < 0x20 ? ch : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}
