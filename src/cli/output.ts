// How debvisorctl prints: tables and key/value records for people, protobuf JSON (or the same
// document as YAML) for scripts, and failures with the exit status of src/cli/exit-codes.ts.
//
// -o picks one of FORMATS. Commands only ask `flags.output === 'json'` ("print the document"):
// the program's preAction hook (src/cli/program.ts) hands them 'json' for yaml and 'text' for
// wide, and tells this module the real format with setOutputFormat.
import Table from 'cli-table3';
import { toJson, type DescMessage, type JsonValue, type MessageShape } from '@bufbuild/protobuf';
import { escapeUnsafe, escapeUnsafeJson } from '../rpc/text.js';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { EXIT, exitCodeOf, isGrpcError } from './exit-codes.js';
import type { Format } from './formats.js';
import { loadYaml } from '../client/yaml.js';

export type { Format, Output } from './formats.js';

/** Default table width: the classic terminal. -o wide lifts it. */
export const TABLE_WIDTH = 80;

interface YamlModule {
  stringify(value: unknown): string;
}

let format: Format = 'text';
let yaml: YamlModule | undefined;

/** Called once the global -o is parsed; loads the YAML printer only when it is wanted. */
export async function setOutputFormat(chosen: Format): Promise<void> {
  format = chosen;
  if (chosen === 'yaml') yaml = await loadYaml();
}

export function outputFormat(): Format {
  return format;
}

/** The gRPC code's name, e.g. NOT_FOUND. */
function codeName(err: ServiceError): string {
  // A code grpc-js does not know (a newer server) prints as its number.
  return err.code in Status ? Status[err.code] : String(err.code);
}

// Whatever the server sends, nothing printed can drive the terminal (ESC[2J in an API key's
// owner would clear the operator's screen) or hide what it says: unsafe characters are escaped.

/** A plain JSON document (already JSON-shaped) as JSON or YAML, per -o. */
export function printDocument(document: JsonValue | Record<string, unknown>): void {
  if (format === 'yaml' && yaml) {
    // Line by line: escapeUnsafe would escape the document's own newlines (yaml quotes and escapes the values' controls itself).
    process.stdout.write(yaml.stringify(document).split('\n').map((line) => escapeUnsafe(line)).join('\n'));
    return;
  }
  // JSON.stringify escapes C0 controls but not C1, separators or bidi overrides.
  process.stdout.write(`${escapeUnsafeJson(JSON.stringify(document, null, 2))}\n`);
}

export function printJson<D extends DescMessage>(schema: D, message: MessageShape<D>): void {
  printDocument(toJson(schema, message));
}

export function printRecord(record: Record<string, string>): void {
  const width = Math.max(...Object.keys(record).map((key) => key.length));
  for (const [key, value] of Object.entries(record)) process.stdout.write(`${`${key}:`.padEnd(width + 2)}${escapeUnsafe(value)}\n`);
}

/** Width of the widest line of a cell. */
function cellWidth(cell: string): number {
  return Math.max(0, ...cell.split('\n').map((line) => Array.from(line).length));
}

/**
 * Column widths (content only) that make a table of `natural` widths fit in `limit` characters,
 * borders and padding included: the widest columns give way first, none below `minimum[i]`.
 * Returns `natural` when it already fits (or when nothing can shrink further).
 */
export function fitColumns(natural: readonly number[], minimum: readonly number[], limit: number): number[] {
  const widths = [...natural];
  // cli-table3: one space of padding each side, and a border before every column and after the last.
  const overhead = widths.length * 3 + 1;
  let excess = widths.reduce((sum, width) => sum + width, 0) + overhead - limit;
  while (excess > 0) {
    let widest = -1;
    for (let i = 0; i < widths.length; i++) {
      if ((widths[i] ?? 0) > (minimum[i] ?? 0) && (widest < 0 || (widths[i] ?? 0) > (widths[widest] ?? 0))) widest = i;
    }
    if (widest < 0) break;
    widths[widest] = (widths[widest] ?? 0) - 1;
    excess--;
  }
  return widths;
}

/** Cuts every line of a cell to `width` characters, marking the cut with "…". */
export function ellipsize(cell: string, width: number): string {
  return cell
    .split('\n')
    .map((line) => {
      // Code points, so a cut never splits a surrogate pair (wide and combining characters may still miscount).
      const chars = Array.from(line);
      return chars.length <= width ? line : `${chars.slice(0, Math.max(0, width - 1)).join('')}…`;
    })
    .join('\n');
}

/** Columns an operator copies from (ids, names): never cut, whatever the width. */
const IDENTIFIER_HEADERS = new Set(['id', 'name', 'uuid', 'hostname', 'subject', 'key', 'vm', 'snapshot', 'volume', 'pool', 'ip']);
/** What free-text columns shrink to at most, and times (2026-12-07T21:29:04Z → 2026-12-07…) after them. */
const MIN_TEXT = 5;
const MIN_TIME = 11;
const TIME = /^(\d{4}-\d\d-\d\dT[\d:.]+Z|-|)$/;

/**
 * Column widths for `limit`: free text gives way first (to MIN_TEXT), then times (to a date);
 * identifiers never. A table whose identifiers alone are wider than `limit` stays wider.
 */
export function tableWidths(head: readonly string[], rows: readonly (readonly string[])[], limit: number): number[] {
  const natural = head.map((title, i) => Math.max(cellWidth(title), ...rows.map((row) => cellWidth(row[i] ?? ''))));
  const isTime = head.map((_title, i) => rows.every((row) => TIME.test(row[i] ?? '')));
  const textFloor = head.map((title, i) => (IDENTIFIER_HEADERS.has(title) ? (natural[i] ?? 0) : Math.min(natural[i] ?? 0, isTime[i] ? Infinity : MIN_TEXT)));
  const afterText = fitColumns(natural, textFloor, limit);
  const timeFloor = head.map((_title, i) => (isTime[i] ? Math.min(natural[i] ?? 0, MIN_TIME) : (afterText[i] ?? 0)));
  return fitColumns(afterText, timeFloor, limit);
}

/**
 * A table of escaped cells, ending in a newline; "(none)" without rows. Within `limit` columns
 * (default TABLE_WIDTH; Infinity, the default with -o wide: as wide as the cells) long cells,
 * and headers, are cut with "…" (see tableWidths).
 */
export function formatTable(head: string[], rows: string[][], limit: number = format === 'wide' ? Infinity : TABLE_WIDTH): string {
  if (rows.length === 0) return '(none)\n';
  // Line by line: a cell may hold several lines (a key's permissions), each escaped on its own.
  const escaped = rows.map((row) => row.map((cell) => cell.split('\n').map((line) => escapeUnsafe(line)).join('\n')));
  let body = escaped;
  let titles = head;
  if (Number.isFinite(limit)) {
    const widths = tableWidths(head, escaped, limit);
    body = escaped.map((row) => row.map((cell, i) => ellipsize(cell, widths[i] ?? cellWidth(cell))));
    titles = head.map((title, i) => ellipsize(title, widths[i] ?? title.length));
  }
  const table = new Table({ head: titles, style: { head: [], border: [] } });
  table.push(...body);
  return `${table.toString()}\n`;
}

export function printTable(head: string[], rows: string[][]): void {
  process.stdout.write(formatTable(head, rows));
}

/** The failure as a document, for -o json and -o yaml (scripts parse stderr too). */
export function errorDocument(err: unknown): { error: { code: string; message: string; exitCode: number } } {
  const exitCode = exitCodeOf(err);
  if (isGrpcError(err)) return { error: { code: codeName(err), message: err.details, exitCode } };
  const message = err instanceof Error ? err.message : String(err);
  return { error: { code: exitCode === EXIT.USAGE ? 'USAGE' : 'ERROR', message, exitCode } };
}

/** Prints a failure the way an operator (or, with -o json, a script) can act on it, and exits with its status. */
export function fail(err: unknown): never {
  if (format === 'json' || format === 'yaml') {
    process.stderr.write(`${escapeUnsafeJson(JSON.stringify(errorDocument(err)))}\n`);
  } else if (isGrpcError(err)) {
    process.stderr.write(`debvisorctl: ${codeName(err)}: ${escapeUnsafe(err.details)}\n`);
  } else {
    process.stderr.write(`debvisorctl: ${escapeUnsafe(err instanceof Error ? err.message : String(err))}\n`);
  }
  process.exit(exitCodeOf(err));
}
