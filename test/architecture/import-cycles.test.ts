// Import cycles under src/ (scripts/import-cycles.ts), type-only imports included. The target
// (issue 20) is none, between files or between top-level directories, and none is left.
import { describe, expect, it } from 'vitest';
import { cycles, importGraph } from '../../scripts/import-cycles.js';

describe('import cycles under src/', () => {
  const found = cycles(importGraph());

  it('has no file cycle', () => {
    expect(found.files).toEqual([]);
  });

  it('has no directory cycle', () => {
    expect(found.directories).toEqual([]);
  });

  it('finds a cycle when there is one (the checker itself)', () => {
    const graph = { files: new Map([['src/a/x.ts', ['src/b/y.ts']], ['src/b/y.ts', ['src/a/x.ts']], ['src/c/z.ts', ['src/a/x.ts']]]) };
    expect(cycles(graph)).toEqual({ files: [['src/a/x.ts', 'src/b/y.ts']], directories: [['src/a', 'src/b']] });
  });
});
