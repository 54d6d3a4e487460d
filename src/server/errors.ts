// Typed errors and the one place that maps them to gRPC statuses.
// Handlers and interceptors throw these; nothing else picks status codes.
import { Metadata, status as Status, type StatusObject } from '@grpc/grpc-js';
import { CompactedError, ConflictError, NotFoundError, StoreUnavailableError } from '../store/errors.js';

export type ErrorCode =
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'FAILED_PRECONDITION'
  | 'ABORTED'
  | 'PERMISSION_DENIED'
  | 'UNAUTHENTICATED'
  | 'RESOURCE_EXHAUSTED'
  | 'UNAVAILABLE'
  | 'UNIMPLEMENTED'
  | 'DEADLINE_EXCEEDED'
  | 'CANCELLED'
  | 'INTERNAL';

const GRPC_CODE: Record<ErrorCode, Status> = {
  INVALID_ARGUMENT: Status.INVALID_ARGUMENT,
  NOT_FOUND: Status.NOT_FOUND,
  ALREADY_EXISTS: Status.ALREADY_EXISTS,
  FAILED_PRECONDITION: Status.FAILED_PRECONDITION,
  ABORTED: Status.ABORTED,
  PERMISSION_DENIED: Status.PERMISSION_DENIED,
  UNAUTHENTICATED: Status.UNAUTHENTICATED,
  RESOURCE_EXHAUSTED: Status.RESOURCE_EXHAUSTED,
  UNAVAILABLE: Status.UNAVAILABLE,
  UNIMPLEMENTED: Status.UNIMPLEMENTED,
  DEADLINE_EXCEEDED: Status.DEADLINE_EXCEEDED,
  CANCELLED: Status.CANCELLED,
  INTERNAL: Status.INTERNAL,
};

/** An error whose message is safe to show to the client. */
export class RpcError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'RpcError';
  }
}

export class InvalidArgumentError extends RpcError {
  constructor(
    readonly field: string,
    problem: string,
  ) {
    super('INVALID_ARGUMENT', `${field}: ${problem}`);
    this.name = 'InvalidArgumentError';
  }
}

export class UnauthenticatedError extends RpcError {
  /** `reason` is for the audit log only; clients always get the generic message. */
  constructor(readonly reason: string) {
    super('UNAUTHENTICATED', 'authentication required: present a client certificate issued by the DebVisor CA or an API key');
    this.name = 'UnauthenticatedError';
  }
}

export class UnimplementedError extends RpcError {
  constructor(message: string) {
    super('UNIMPLEMENTED', message);
    this.name = 'UnimplementedError';
  }
}

export const TRACE_ID_KEY = 'x-request-id';
const GENERIC_INTERNAL = 'internal error';

/** Store errors as the client sees them: no store internals, just what to do. */
function fromStoreError(err: unknown): RpcError | undefined {
  if (err instanceof StoreUnavailableError) return new RpcError('UNAVAILABLE', 'the state store is unavailable; retry later', { cause: err });
  if (err instanceof ConflictError) return new RpcError('ABORTED', 'concurrent modification; retry', { cause: err });
  if (err instanceof NotFoundError) return new RpcError('NOT_FOUND', err.message, { cause: err });
  if (err instanceof CompactedError) return new RpcError('ABORTED', 'the listing expired; start again', { cause: err });
  return undefined;
}

/**
 * Maps any thrown value to a gRPC status. Unknown errors become INTERNAL with a
 * generic message: no stack, no internals. The trace id goes in the message and
 * the trailers so a client can quote it to an operator.
 */
export function toStatus(err: unknown, traceId: string): StatusObject {
  const metadata = new Metadata();
  metadata.set(TRACE_ID_KEY, traceId);
  err = fromStoreError(err) ?? err;
  if (err instanceof RpcError) {
    return { code: GRPC_CODE[err.code], details: `${err.message} (trace_id=${traceId})`, metadata };
  }
  return { code: Status.INTERNAL, details: `${GENERIC_INTERNAL} (trace_id=${traceId})`, metadata };
}

export function isInternal(err: unknown): boolean {
  return !(err instanceof RpcError) || err.code === 'INTERNAL';
}
