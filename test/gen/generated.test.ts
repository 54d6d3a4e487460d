// src/gen is committed; it must be exactly what buf generates from proto/ today.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)))
    .sort();
}

describe('generated code', () => {
  const out = mkdtempSync(join(tmpdir(), 'debvisor-gen-'));
  afterAll(() => rmSync(out, { recursive: true, force: true }));

  it('matches a fresh buf generate of proto/', () => {
    execFileSync('npx', ['buf', 'generate', '-o', out], { stdio: 'pipe' });
    const fresh = join(out, 'src', 'gen');
    const committed = 'src/gen';
    expect(filesUnder(fresh)).toEqual(filesUnder(committed));
    for (const file of filesUnder(committed)) {
      expect(readFileSync(join(fresh, file), 'utf8'), file).toBe(readFileSync(join(committed, file), 'utf8'));
    }
  });
});
