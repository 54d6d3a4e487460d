// The permission matcher, exactly: wildcard segments, the trailing "rest" wildcard,
// and the set relations (cover, intersect) checked against brute force.
import { describe, expect, it } from 'vitest';
import {
  MAX_PERMISSION_SEGMENTS,
  crossPrincipal,
  isValidPermission,
  patternCovers,
  patternsIntersect,
  permissionMatches,
} from '../../src/authz/permission.js';

describe('permissionMatches', () => {
  const cases: [grant: string, required: string, expected: boolean][] = [
    // `*` alone: everything
    ['*', 'node:list', true],
    ['*', 'storage:snapshot:list', true],
    ['*', 'access', true],
    ['*', 'a:b:c:d', true],
    // literal
    ['node:list', 'node:list', true],
    ['node:list', 'node:get', false],
    ['node:list', 'node:list:any', false],
    ['node:list:any', 'node:list', false],
    ['storage:snapshot:create', 'storage:snapshot:create', true],
    ['storage:snapshot:create', 'storage:snapshot:list', false],
    // non-trailing `*`: exactly one segment — the original `*:list` bug
    ['*:list', 'node:list', true],
    ['*:list', 'vm:list', true],
    ['*:list', 'storage:snapshot:list', false],
    ['*:list', 'node:get', false],
    ['*:list', 'storage:snapshot:delete', false],
    ['*:list', 'list', false],
    ['*:*:list', 'storage:snapshot:list', true],
    ['*:*:list', 'node:list', false],
    ['*:*:list', 'a:b:c:list', false],
    ['storage:*:list', 'storage:volume:list', true],
    ['storage:*:list', 'storage:volume:delete', false],
    ['storage:*:list', 'vm:snapshot:list', false],
    ['*:snapshot:*', 'vm:snapshot:create', true],
    ['*:snapshot:*', 'storage:snapshot:list', true],
    ['*:snapshot:*', 'storage:volume:list', false],
    ['*:snapshot:*', 'snapshot:list', false],
    // trailing `*`: one or more remaining segments
    ['node:*', 'node:list', true],
    ['node:*', 'node:a:b', true],
    ['node:*', 'node:a:b:c', true],
    ['node:*', 'node', false],
    ['node:*', 'nodes:list', false],
    ['node:*', 'vm:list', false],
    ['storage:clone:*', 'storage:clone:create', true],
    ['storage:clone:*', 'storage:snapshot:create', false],
    ['storage:clone:*', 'storage:clone', false],
    ['*:*', 'node:list', true],
    ['*:*', 'storage:snapshot:list', true],
    ['*:*', 'node', false],
    ['operation:*', 'operation:get:any', true],
    ['operation:get', 'operation:get:any', false],
    ['*:*:get', 'operation:get:any', false],
    // prefixes are not segments
    ['node', 'node:list', false],
    ['node:lis', 'node:list', false],
    ['', 'node:list', false],
  ];
  it.each(cases)('%s matches %s → %s', (grant, required, expected) => {
    expect(permissionMatches(grant, required)).toBe(expected);
  });
});

describe('isValidPermission', () => {
  it.each(['*', 'node:list', 'storage:snapshot:list', 'a:b:c:d', '*:list', 'node:*', 'vm_2:get', 'operation:get:any'])('accepts %s', (p) => {
    expect(isValidPermission(p)).toBe(true);
  });
  it.each(['', ':', 'node:', ':list', 'node::list', 'Node:list', 'node:li*', 'a:b:c:d:e', 'node list', 'node-x:list', 'node:list\n', '**'])(
    'rejects %j',
    (p) => {
      expect(isValidPermission(p)).toBe(false);
    },
  );
  it('names the cross-principal variant', () => {
    expect(crossPrincipal('operation:get')).toBe('operation:get:any');
    expect(isValidPermission(crossPrincipal('storage:snapshot:list'))).toBe(true);
  });
});

// ---------------------------------------------------------------------------
// Brute force: patterns over {a, b, *}, concrete permissions over {a, b, c, d}
// (c and d appear in no pattern, standing for every other segment name), 1–4
// segments each — every valid pattern shape over two literals.

function product(alphabet: readonly string[], maxLen: number): string[] {
  const out: string[] = [];
  let level = [''];
  for (let len = 1; len <= maxLen; len++) {
    level = level.flatMap((prefix) => alphabet.map((s) => (prefix === '' ? s : `${prefix}:${s}`)));
    out.push(...level);
  }
  return out;
}

const PATTERNS = product(['a', 'b', '*'], MAX_PERMISSION_SEGMENTS);
const UNIVERSE = product(['a', 'b', 'c', 'd'], MAX_PERMISSION_SEGMENTS);

/** Match set of each pattern over the universe, as a bitset. */
const WORDS = Math.ceil(UNIVERSE.length / 32);
const SETS = new Map<string, Uint32Array>(
  PATTERNS.map((p) => {
    const bits = new Uint32Array(WORDS);
    UNIVERSE.forEach((u, i) => {
      if (permissionMatches(p, u)) bits[i >>> 5]! |= 1 << (i & 31);
    });
    return [p, bits];
  }),
);

describe('pattern relations (brute force)', () => {
  it('generates a non-trivial universe', () => {
    expect(PATTERNS).toHaveLength(3 + 9 + 27 + 81);
    expect(UNIVERSE).toHaveLength(4 + 16 + 64 + 256);
    expect(PATTERNS.every(isValidPermission)).toBe(true);
    // every pattern matches something
    for (const bits of SETS.values()) expect(bits.some((w) => w !== 0)).toBe(true);
  });

  it('patternCovers(g, p) ⇔ matches(p) ⊆ matches(g), for every pair', () => {
    let checked = 0;
    let covered = 0;
    const wrong: string[] = [];
    for (const g of PATTERNS) {
      const gs = SETS.get(g)!;
      for (const p of PATTERNS) {
        const ps = SETS.get(p)!;
        const expected = ps.every((w, i) => (w & ~gs[i]!) === 0);
        if (patternCovers(g, p) !== expected) wrong.push(`${g} ⊇ ${p}: expected ${expected}`);
        checked++;
        if (expected) covered++;
      }
    }
    expect(wrong.slice(0, 20)).toEqual([]);
    expect(checked).toBe(PATTERNS.length ** 2);
    expect(covered).toBeGreaterThan(PATTERNS.length); // more than the reflexive pairs
  });

  it('patternsIntersect(a, b) ⇔ matches(a) ∩ matches(b) ≠ ∅, for every pair', () => {
    const wrong: string[] = [];
    for (const a of PATTERNS) {
      const as = SETS.get(a)!;
      for (const b of PATTERNS) {
        const bs = SETS.get(b)!;
        const expected = as.some((w, i) => (w & bs[i]!) !== 0);
        if (patternsIntersect(a, b) !== expected) wrong.push(`${a} ∩ ${b}: expected ${expected}`);
      }
    }
    expect(wrong.slice(0, 20)).toEqual([]);
  });

  it('a concrete permission is covered exactly when it is matched', () => {
    for (const g of PATTERNS) for (const u of UNIVERSE) expect(patternCovers(g, u)).toBe(permissionMatches(g, u));
  });

  it('spot checks', () => {
    expect(patternCovers('*', '*')).toBe(true);
    expect(patternCovers('node:*', 'node:*')).toBe(true);
    expect(patternCovers('node:*', 'node:list')).toBe(true);
    expect(patternCovers('node:list', 'node:*')).toBe(false);
    expect(patternCovers('*:list', '*:*')).toBe(false);
    expect(patternCovers('*:*', '*:list')).toBe(true);
    expect(patternCovers('*:list', '*:*:list')).toBe(false); // the old bug, as an escalation
    expect(patternCovers('storage:*', 'storage:*:list')).toBe(true);
    expect(patternCovers('storage:*:list', 'storage:*')).toBe(false);
    expect(patternsIntersect('storage:*', '*:snapshot:delete')).toBe(true);
    expect(patternsIntersect('node:*', 'vm:*')).toBe(false);
    expect(patternsIntersect('*:list', '*:*:list')).toBe(false);
  });
});
