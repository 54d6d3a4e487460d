// How debvisorctl prints: tables and key/value records for people, protobuf JSON for scripts.
import Table from 'cli-table3';
import { toJson, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { escapeUnsafe, escapeUnsafeJson } from '../rpc/text.js';

export type Output = 'text' | 'json';

// Whatever the server sends, nothing printed can drive the terminal (ESC[2J in an API key's
// owner would clear the operator's screen) or hide what it says: unsafe characters are escaped.

export function printJson<D extends DescMessage>(schema: D, message: MessageShape<D>): void {
  // JSON.stringify escapes C0 controls but not C1, separators or bidi overrides.
  const json = escapeUnsafeJson(JSON.stringify(toJson(schema, message), null, 2));
  process.stdout.write(`${json}\n`);
}

export function printRecord(record: Record<string, string>): void {
  const width = Math.max(...Object.keys(record).map((key) => key.length));
  for (const [key, value] of Object.entries(record)) process.stdout.write(`${`${key}:`.padEnd(width + 2)}${escapeUnsafe(value)}\n`);
}

/** A table of escaped cells, ending in a newline; "(none)" without rows. */
export function formatTable(head: string[], rows: string[][]): string {
  if (rows.length === 0) return '(none)\n';
  const table = new Table({ head, style: { head: [], border: [] } });
  table.push(...rows.map((row) => row.map((cell) => escapeUnsafe(cell))));
  return `${table.toString()}\n`;
}

export function printTable(head: string[], rows: string[][]): void {
  process.stdout.write(formatTable(head, rows));
}

/** Prints a failure the way an operator can act on it, and exits 1. */
export function fail(err: unknown): never {
  const grpcError = err as Partial<ServiceError>;
  if (typeof grpcError.code === 'number') {
    process.stderr.write(`debvisorctl: ${Status[grpcError.code]}: ${escapeUnsafe(grpcError.details ?? '')}\n`);
  } else {
    process.stderr.write(`debvisorctl: ${escapeUnsafe(err instanceof Error ? err.message : String(err))}\n`);
  }
  process.exit(1);
}
