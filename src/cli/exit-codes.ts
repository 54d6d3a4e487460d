// debvisorctl's exit status, one table for every command: scripts tell a refusal from a typo,
// an unreachable daemon and a timeout without reading stderr.
import type { ServiceError } from '@grpc/grpc-js';
import { CredentialFileError } from '../client/credentials.js';

export const EXIT = {
  OK: 0,
  /** The daemon refused or failed the call (stderr names the gRPC code), or a followed operation failed. */
  FAILED: 1,
  /** Bad flags or arguments, an unknown context, unreadable credential files: nothing was sent. */
  USAGE: 2,
  /** No connection to the daemon (refused, unresolvable, TLS handshake failed). */
  UNREACHABLE: 3,
  /** The call's deadline passed (DEADLINE_EXCEEDED), or an operation was still running at --timeout. */
  TIMEOUT: 4,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/** For --help and the man page. */
export const EXIT_STATUS_HELP =
  'Exit status:\n' +
  '  0  success\n' +
  '  1  the daemon refused or failed the call (stderr names the gRPC code), or the operation failed\n' +
  '  2  usage error: bad flags or arguments, unknown context, unreadable credentials; nothing sent\n' +
  '  3  the daemon is unreachable (connection refused, name unresolved, TLS handshake failed)\n' +
  '  4  timeout: the call passed --timeout (DEADLINE_EXCEEDED), or the operation is still running';

/** A mistake in the invocation, found before anything is sent: exit 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

// gRPC status codes are wire protocol (google.rpc.Code): fixed numbers. Named here rather than
// imported so that the program's start-up does not load grpc-js.
const DEADLINE_EXCEEDED = 4;
const UNAVAILABLE = 14;

/**
 * Trailer the daemon sets on every status it sends (TRACE_ID_KEY in src/rpc/errors.ts; a unit
 * test keeps them equal). A status without it was made by grpc-js on this side.
 */
const DAEMON_TRACE_HEADER = 'x-request-id';

export function isGrpcError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === 'number';
}

/** True for a status the daemon sent, rather than one grpc-js made locally (no connection, deadline). */
export function fromDaemon(err: ServiceError): boolean {
  // A ServiceError always has metadata; one made by hand (tests, other clients) may not.
  const metadata = (err as Partial<ServiceError>).metadata;
  return metadata !== undefined && metadata.get(DAEMON_TRACE_HEADER).length > 0;
}

export function exitCodeOf(err: unknown): ExitCode {
  if (err instanceof UsageError || err instanceof CredentialFileError) return EXIT.USAGE;
  if (!isGrpcError(err)) return EXIT.FAILED;
  const code: number = err.code;
  if (code === DEADLINE_EXCEEDED) return EXIT.TIMEOUT;
  // The daemon itself answers UNAVAILABLE for some failures (a backend it cannot ask): those are refusals.
  if (code === UNAVAILABLE && !fromDaemon(err)) return EXIT.UNREACHABLE;
  return EXIT.FAILED;
}
