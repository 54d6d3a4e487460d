// Key ranges in the order SQLite compares TEXT: bytewise UTF-8, which is code-point order
// (JavaScript's `<` compares UTF-16 code units and disagrees above U+FFFF).

/**
 * The smallest string greater than every string starting with `prefix`, in code-point
 * order; undefined when there is none (empty prefix, or only U+10FFFF).
 */
export function rangeEnd(prefix: string): string | undefined {
  const points = Array.from(prefix, (char) => char.codePointAt(0) ?? 0);
  while (points.length > 0) {
    let last = (points.pop() ?? 0) + 1;
    if (last >= 0xd800 && last <= 0xdfff) last = 0xe000; // surrogates are not code points
    if (last <= 0x10ffff) return String.fromCodePoint(...points, last);
  }
  return undefined;
}

/** Compares two strings in SQLite's (UTF-8 byte) order. */
export function compareKeys(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.compare(a, b) === 0;
}
