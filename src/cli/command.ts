// Shared plumbing for debvisorctl commands that call one daemon service: the global
// flags, a typed client per invocation, call options and how enums and times print.
import { InvalidArgumentError, type Command } from 'commander';
import ms from 'ms';
import type { GenService, GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import { timestampDate, type Timestamp } from '@bufbuild/protobuf/wkt';
import { createClient, type CallMetadata, type CallOptions, type TypedClient } from '../client/client.js';
import { resolveConnection, type ConnectionFlags, type ResolvedConnection } from './connection.js';
import { ctlConfigPath, loadCtlConfig } from './credentials.js';
import { fail, type Output } from './output.js';

export interface GlobalFlags extends ConnectionFlags {
  /** 'json' for -o json and -o yaml (print the document), 'text' for text and wide. */
  output: Output;
  timeout: string;
}

export interface ServiceCall<S extends GenServiceMethods> {
  readonly client: TypedClient<S>;
  /** For commands that also need another service (e.g. waiting on an operation). */
  readonly connection: ResolvedConnection;
  /** Credentials and impersonation metadata, and the --timeout deadline. */
  readonly options: CallOptions & { readonly metadata: CallMetadata };
  readonly flags: GlobalFlags;
  /** True if the operator gave --timeout (rather than taking the default). */
  readonly timeoutGiven: boolean;
}

/** The ServiceCall of a generated service, e.g. CallOf<typeof AccessService>. */
export type CallOf<T> = T extends GenService<infer S> ? ServiceCall<S> : never;

/**
 * Wraps a command action: connects with the global flags (and the contexts file), runs the
 * action with a client of `service`, closes it, and prints any error (gRPC code and details,
 * which carry the trace id) with the exit status of src/cli/exit-codes.ts.
 */
export function withService<S extends GenServiceMethods>(program: Command, service: GenService<S>) {
  return <A extends unknown[]>(action: (call: ServiceCall<S>, ...args: A) => Promise<void>) =>
    async (...args: A): Promise<void> => {
      const flags = program.opts<GlobalFlags>();
      try {
        const file = ctlConfigPath();
        const connection = resolveConnection(flags, process.env, await loadCtlConfig(process.env, file), file);
        const client = createClient(service, connection);
        const options = { metadata: connection.metadata, timeoutMs: Number(flags.timeout) * 1000 };
        try {
          await action({ client, connection, options, flags, timeoutGiven: program.getOptionValueSource('timeout') === 'cli' }, ...args);
        } finally {
          client.close();
        }
      } catch (err) {
        fail(err);
      }
    };
}

/** protobuf-es enum value → the lower-case name without prefix, e.g. VmState.SHUT_OFF → "shut_off". */
export function enumName(enumObject: Record<number, string>, value: number): string {
  return (enumObject[value] ?? String(value)).toLowerCase();
}

/** A commander parser for an enum flag: "shut_off" → VmState.SHUT_OFF; UNSPECIFIED is not offered. */
export function enumParser<E extends number>(enumObject: Record<string, E | string>): (value: string) => E {
  const byName = new Map(
    Object.entries(enumObject)
      .filter(([name, value]) => typeof value === 'number' && name !== 'UNSPECIFIED')
      .map(([name, value]) => [name.toLowerCase(), value as E] as const),
  );
  return (value: string) => {
    const parsed = byName.get(value.toLowerCase());
    if (parsed === undefined) throw new InvalidArgumentError(`expected one of ${[...byName.keys()].join(', ')}`);
    return parsed;
  };
}

export function when(ts: Timestamp | undefined): string {
  return ts ? timestampDate(ts).toISOString().replace('.000Z', 'Z') : '-';
}

/** Where a revocable, expiring credential (API key, user session) stands now. */
export function lifeState(credential: { readonly revokeTime?: Timestamp | undefined; readonly expireTime?: Timestamp | undefined }): 'revoked' | 'expired' | 'active' {
  if (credential.revokeTime) return 'revoked';
  if (credential.expireTime && timestampDate(credential.expireTime).getTime() <= Date.now()) return 'expired';
  return 'active';
}

/** A commander parser for a repeatable flag: each occurrence appends its value. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

const YEAR = /^(\d+)\s*(?:y|yr|yrs|year|years)$/i;

/**
 * A commander parser for a duration: 90d, 12h, 30m, 45s, 2w, and 1y = 365 days (the ms package
 * counts 365.25, which the daemon's 365-day limit refuses). Returns milliseconds.
 */
export function duration(value: string): number {
  const years = YEAR.exec(value.trim());
  const parsed = years ? Number(years[1]) * 365 * 86_400_000 : ms(value as ms.StringValue);
  if (typeof parsed !== 'number' || !Number.isFinite(parsed) || parsed <= 0) throw new InvalidArgumentError('expected a duration such as 1y, 90d, 12h, 30m or 45s');
  return parsed;
}

/** A commander parser for a whole number ≥ 0. */
export function count(value: string): number {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError('expected a whole number');
  return Number(value);
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** Bytes for people: 268435456n → "256 MiB", 1610612736n → "1.5 GiB". */
export function bytes(value: bigint): string {
  let scaled = Number(value);
  let unit = 0;
  while (scaled >= 1024 && unit < UNITS.length - 1) {
    scaled /= 1024;
    unit++;
  }
  return `${Number.isInteger(scaled) ? scaled : scaled.toFixed(1)} ${UNITS[unit]}`;
}
