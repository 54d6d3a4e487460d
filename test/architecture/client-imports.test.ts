// The SDK ('debvisor-rpcd/client', src/client/index.ts) imports no server code: following its
// imports (scripts/import-cycles.ts reads them, type-only ones included) reaches only
// src/client/ and the generated code, and outside src/ only the client's own packages.
import { readFileSync } from 'node:fs';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { importGraph } from '../../scripts/import-cycles.js';

const ENTRY = 'src/client/index.ts';
/** What a client needs at run time besides Node.js itself. */
const CLIENT_PACKAGES = ['@bufbuild/protobuf', '@grpc/grpc-js', 'cockatiel', 'yaml'];

function reachable(files: ReadonlyMap<string, readonly string[]>, entry: string): string[] {
  const seen = new Set<string>([entry]);
  const queue = [entry];
  for (let file = queue.shift(); file !== undefined; file = queue.shift()) {
    for (const target of files.get(file) ?? []) {
      if (!seen.has(target)) {
        seen.add(target);
        queue.push(target);
      }
    }
  }
  return [...seen].sort();
}

function packageOf(specifier: string): string {
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]!;
}

describe('the client SDK', () => {
  const closure = reachable(importGraph().files, ENTRY);

  it('reaches only src/client/ and src/gen/', () => {
    expect(closure).toContain('src/client/client.ts');
    expect(closure.filter((file) => !file.startsWith('src/client/') && !file.startsWith('src/gen/'))).toEqual([]);
  });

  it('uses only the client packages and node: modules', () => {
    const packages = new Set(
      closure.flatMap((file) =>
        ts.preProcessFile(readFileSync(file, 'utf8'), true, true).importedFiles.map((i) => i.fileName).filter((name) => !name.startsWith('.')),
      ),
    );
    expect([...packages].filter((name) => !name.startsWith('node:') && !CLIENT_PACKAGES.includes(packageOf(name)))).toEqual([]);
  });

  it('would notice a server import (the check itself)', () => {
    const graph = new Map([[ENTRY, ['src/client/client.ts']], ['src/client/client.ts', ['src/rpc/adapter.ts']], ['src/rpc/adapter.ts', []]]);
    expect(reachable(graph, ENTRY)).toContain('src/rpc/adapter.ts');
  });
});
