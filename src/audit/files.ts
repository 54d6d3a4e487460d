// Names of the audit log and its rotated files:
//   <dir>/<base><ext>                    current file, e.g. rpc-audit.log
//   <dir>/<base>-YYYY-MM-DD<ext>         the file of that (local) day
//   <dir>/<base>-YYYY-MM-DD.N<ext>       further files of the same day (clock set back, restarts)
// Chain order is (date, N); the current file is always last.
import { existsSync, readdirSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join, parse } from 'node:path';

export interface RotatedFile {
  path: string;
  day: string;
  index: number;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function rotatedPattern(path: string): { dir: string; pattern: RegExp } {
  const { dir, name, ext } = parse(path);
  return { dir: dir || '.', pattern: new RegExp(`^${escapeRegExp(name)}-(\\d{4}-\\d{2}-\\d{2})(?:\\.(\\d+))?${escapeRegExp(ext)}$`) };
}

export function rotatedName(path: string, day: string, index: number): string {
  const { dir, name, ext } = parse(path);
  return join(dir || '.', `${name}-${day}${index > 0 ? `.${index}` : ''}${ext}`);
}

/** Local calendar day of a date, YYYY-MM-DD. */
export function localDay(date: Date): string {
  const month = String(date.getMonth() + 1).padStart(2, '0');
  const day = String(date.getDate()).padStart(2, '0');
  return `${date.getFullYear()}-${month}-${day}`;
}

function pick(path: string, names: string[]): RotatedFile[] {
  const { dir, pattern } = rotatedPattern(path);
  const files: RotatedFile[] = [];
  for (const name of names) {
    const match = pattern.exec(name);
    if (match?.[1]) files.push({ path: join(dir, name), day: match[1], index: Number(match[2] ?? 0) });
  }
  return files.sort((a, b) => (a.day === b.day ? a.index - b.index : a.day < b.day ? -1 : 1));
}

/** Rotated files of the log at `path`, oldest first. */
export async function rotatedFiles(path: string): Promise<RotatedFile[]> {
  try {
    return pick(path, await readdir(rotatedPattern(path).dir));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/** All files of the log at `path` in chain order: rotated files oldest first, then the current file if it exists. */
export function auditFilesInOrder(path: string): string[] {
  let names: string[];
  try {
    names = readdirSync(rotatedPattern(path).dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const files = pick(path, names).map((file) => file.path);
  if (existsSync(path)) files.push(path);
  return files;
}
