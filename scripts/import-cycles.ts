// Import cycles under src/, between files and between top-level directories (src/<dir>/),
// type-only imports included. Used by test/architecture/import-cycles.test.ts; run by hand:
//   node scripts/import-cycles.ts            (prints every cycle; exit 1 if there is one)
// Imports are read with TypeScript's own pre-processor (import, import type, export from,
// dynamic import), and relative specifiers are resolved the way the project writes them
// ('./x.js' is ./x.ts).
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

export interface ImportGraph {
  /** Source files (relative to the repository, e.g. "src/chain/step.ts") and what each imports under src/. */
  readonly files: ReadonlyMap<string, readonly string[]>;
}

export interface Cycles {
  /** Strongly connected groups of more than one file (or a file importing itself). */
  readonly files: readonly (readonly string[])[];
  /** The same between top-level directories ("src/rpc", ...); a file directly in src/ is a node of its own. */
  readonly directories: readonly (readonly string[])[];
}

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return sourceFiles(path);
    return path.endsWith('.ts') && !path.endsWith('.d.ts') ? [path] : [];
  });
}

/** The file a relative specifier names, if it is one of `known`. */
function resolveSpecifier(from: string, specifier: string, known: ReadonlySet<string>): string | undefined {
  if (!specifier.startsWith('.')) return undefined;
  const base = resolve(dirname(from), specifier);
  for (const candidate of [base.replace(/\.js$/, '.ts'), `${base}.ts`, join(base, 'index.ts')]) if (known.has(candidate)) return candidate;
  return undefined;
}

export function importGraph(root = REPO_ROOT): ImportGraph {
  const absolute = sourceFiles(join(root, 'src'));
  const known = new Set(absolute);
  const files = new Map<string, string[]>();
  for (const file of absolute) {
    const { importedFiles } = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
    const targets = importedFiles.flatMap(({ fileName }) => resolveSpecifier(file, fileName, known) ?? []);
    files.set(relative(root, file), [...new Set(targets.map((target) => relative(root, target)))]);
  }
  return { files };
}

/** Tarjan's strongly connected components; only those that are cycles. */
function cyclesOf(edges: ReadonlyMap<string, readonly string[]>): string[][] {
  let counter = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (node: string): void => {
    index.set(node, counter);
    low.set(node, counter++);
    stack.push(node);
    onStack.add(node);
    for (const next of edges.get(node) ?? []) {
      if (!index.has(next)) {
        visit(next);
        low.set(node, Math.min(low.get(node) as number, low.get(next) as number));
      } else if (onStack.has(next)) {
        low.set(node, Math.min(low.get(node) as number, index.get(next) as number));
      }
    }
    if (low.get(node) !== index.get(node)) return;
    const group: string[] = [];
    for (;;) {
      const member = stack.pop() as string;
      onStack.delete(member);
      group.push(member);
      if (member === node) break;
    }
    if (group.length > 1 || (edges.get(node) ?? []).includes(node)) found.push(group.sort());
  };
  for (const node of edges.keys()) if (!index.has(node)) visit(node);
  return found.sort((a, b) => b.length - a.length || (a[0] ?? '').localeCompare(b[0] ?? ''));
}

/** "src/rpc/errors.ts" → "src/rpc"; a file directly in src/ ("src/main.ts") stands for itself. */
export function topDirectory(file: string): string {
  const parts = file.split('/');
  return parts.length > 2 ? `${parts[0]}/${parts[1]}` : file;
}

export function cycles(graph: ImportGraph): Cycles {
  const directories = new Map<string, Set<string>>();
  for (const [file, targets] of graph.files) {
    const from = topDirectory(file);
    const set = directories.get(from) ?? new Set<string>();
    for (const target of targets) {
      const to = topDirectory(target);
      if (to !== from) set.add(to);
    }
    directories.set(from, set);
  }
  return {
    files: cyclesOf(graph.files),
    directories: cyclesOf(new Map([...directories].map(([dir, targets]) => [dir, [...targets]]))),
  };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const graph = importGraph();
  const found = cycles(graph);
  const directoryCount = new Set([...graph.files.keys()].map(topDirectory).filter((node) => !node.endsWith('.ts'))).size;
  const lines = [
    `directory cycles: ${found.directories.length} (${found.directories.reduce((n, c) => n + c.length, 0)} of ${directoryCount} directories in them)`,
    ...found.directories.map((group) => `  ${group.join(' ')}`),
    `file cycles: ${found.files.length}`,
    ...found.files.map((group) => `  ${group.join(' ')}`),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  process.exitCode = found.files.length + found.directories.length > 0 ? 1 : 0;
}
