// Typed errors and the one place that maps them to gRPC statuses.
// Handlers and interceptors throw these; nothing else picks status codes.
import { Metadata, status as Status, type StatusObject } from '@grpc/grpc-js';
import { create, toBinary } from '@bufbuild/protobuf';
import { anyPack, durationFromMs, type Any } from '@bufbuild/protobuf/wkt';
import { BadRequestSchema, RetryInfoSchema, QuotaFailureSchema } from '../gen/google/rpc/error_details_pb.js';
import { StatusSchema } from '../gen/google/rpc/status_pb.js';
import { DomainError, GENERIC_INTERNAL_MESSAGE, type DomainErrorKind } from '../errors/domain.js';

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

/** Typed details a client can act on, sent as google.rpc.Status in grpc-status-details-bin. */
export interface ErrorDetails {
  /** Becomes google.rpc.RetryInfo and a `retry-after` trailer (seconds). */
  readonly retryAfterMs?: number;
  /** Becomes google.rpc.QuotaFailure. */
  readonly quotaViolations?: readonly { subject: string; description: string }[];
  /** Becomes google.rpc.BadRequest: the request field paths (`spec.disks[2].size_bytes`) and what is wrong with each. */
  readonly fieldViolations?: readonly { field: string; description: string }[];
}

/** An error whose message is safe to show to the client. */
export class RpcError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown; details?: ErrorDetails },
  ) {
    super(message, options);
    this.name = 'RpcError';
    this.details = options?.details;
  }

  readonly details: ErrorDetails | undefined;
}

export class InvalidArgumentError extends RpcError {
  constructor(
    readonly field: string,
    problem: string,
  ) {
    super('INVALID_ARGUMENT', `${field}: ${problem}`, { details: { fieldViolations: [{ field, description: problem }] } });
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

/**
 * The one table from a domain error's meaning (src/errors/domain.ts: the store, host
 * commands) to a gRPC code. The message is the error's own safe one, or the generic
 * internal one for a failure: never stderr or store internals.
 */
const DOMAIN_STATUS: Record<DomainErrorKind, ErrorCode> = {
  not_found: 'NOT_FOUND',
  already_exists: 'ALREADY_EXISTS',
  conflict: 'ABORTED',
  busy: 'ABORTED',
  expired: 'ABORTED',
  no_space: 'RESOURCE_EXHAUSTED',
  unsupported: 'FAILED_PRECONDITION',
  unavailable: 'UNAVAILABLE',
  timeout: 'DEADLINE_EXCEEDED',
  cancelled: 'CANCELLED',
  failed: 'INTERNAL',
};

function fromDomainError(err: unknown): RpcError | undefined {
  if (!(err instanceof DomainError)) return undefined;
  return new RpcError(DOMAIN_STATUS[err.meaning], err.safeMessage, { cause: err });
}

/**
 * The longest message a status carries before its trace id. A message that echoes a huge
 * request value would exceed the client's metadata limit (about 8 KB) and fail every call
 * in flight on that channel; validators bound fields, and this bounds whatever slips by.
 */
export const MAX_STATUS_MESSAGE_CHARS = 512;

/** `message` cut to {@link MAX_STATUS_MESSAGE_CHARS}, marked where it was cut. */
export function boundedMessage(message: string): string {
  if (message.length <= MAX_STATUS_MESSAGE_CHARS) return message;
  return `${message.slice(0, MAX_STATUS_MESSAGE_CHARS)}… [${message.length - MAX_STATUS_MESSAGE_CHARS} more characters]`;
}

/**
 * Maps any thrown value to a gRPC status. Unknown errors become INTERNAL with a
 * generic message: no stack, no internals. The trace id goes in the message and
 * the trailers so a client can quote it to an operator.
 */
export function toStatus(err: unknown, traceId: string): StatusObject {
  const metadata = new Metadata();
  metadata.set(TRACE_ID_KEY, traceId);
  err = fromDomainError(err) ?? err;
  if (err instanceof RpcError) {
    const code = GRPC_CODE[err.code];
    const details = `${boundedMessage(err.message)} (trace_id=${traceId})`;
    if (err.details) addErrorDetails(metadata, code, details, err.details);
    return { code, details, metadata };
  }
  return { code: Status.INTERNAL, details: `${GENERIC_INTERNAL_MESSAGE} (trace_id=${traceId})`, metadata };
}

function addErrorDetails(metadata: Metadata, code: Status, message: string, details: ErrorDetails): void {
  const packed: Any[] = [];
  if (details.retryAfterMs !== undefined) {
    packed.push(anyPack(RetryInfoSchema, create(RetryInfoSchema, { retryDelay: durationFromMs(details.retryAfterMs) })));
    metadata.set('retry-after', String(Math.max(1, Math.ceil(details.retryAfterMs / 1000))));
  }
  if (details.quotaViolations) {
    const violations = details.quotaViolations.map((v) => ({ subject: v.subject, description: v.description }));
    packed.push(anyPack(QuotaFailureSchema, create(QuotaFailureSchema, { violations })));
  }
  if (details.fieldViolations) {
    // Bounded like the message: a path or problem that echoes a huge request value must not blow the trailer limit.
    const fieldViolations = details.fieldViolations.map((v) => ({ field: boundedMessage(v.field), description: boundedMessage(v.description) }));
    packed.push(anyPack(BadRequestSchema, create(BadRequestSchema, { fieldViolations })));
  }
  const status = create(StatusSchema, { code, message, details: packed });
  metadata.set('grpc-status-details-bin', Buffer.from(toBinary(StatusSchema, status)));
}

/** A status for one item of a batch reply (google.rpc.Code and the client-safe message, no trace id). */
export function itemStatus(err: unknown): { code: number; message: string } {
  const status = toStatus(err, '');
  return { code: status.code, message: status.details.replace(/ \(trace_id=[^)]*\)$/, '') };
}
