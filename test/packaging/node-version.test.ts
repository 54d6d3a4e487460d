// The Node.js version gate: the entries check it before anything can import node:sqlite.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { SUPPORTED_NODE, isUnsupportedNode } from '../../src/node-version.js';
import { REPO_ROOT } from '../support/daemon.js';

describe('the Node.js version gate', () => {
  it('refuses what lacks node:sqlite without a flag and accepts the rest', () => {
    for (const old of ['20.19.0', '22.12.0', 'v22.0.0', '23.3.0', '18.20.4']) expect(isUnsupportedNode(old), old).toBe(true);
    for (const ok of ['22.13.0', 'v22.22.1', '23.4.0', '24.21.0', '26.0.0']) expect(isUnsupportedNode(ok), ok).toBe(false);
  });

  it('is what package.json engines says', () => {
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { engines: { node: string } };
    expect(pkg.engines.node).toBe(SUPPORTED_NODE);
  });

  it('runs first: the entries import nothing else statically (static imports are hoisted)', () => {
    for (const entry of ['src/main.ts', 'src/cli/debvisorctl.ts']) {
      const text = readFileSync(join(REPO_ROOT, entry), 'utf8');
      const staticImports = [...text.matchAll(/^import .* from '([^']+)';$/gm)].map((m) => m[1]);
      expect(staticImports, entry).toEqual([entry === 'src/main.ts' ? './node-version.js' : '../node-version.js']);
      expect(text.indexOf('exitOnUnsupportedNode('), entry).toBeLessThan(text.indexOf('await import('));
    }
  });
});
