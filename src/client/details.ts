// The typed details of a refused call: google.rpc.Status in the grpc-status-details-bin trailer.
import { fromBinary } from '@bufbuild/protobuf';
import { anyUnpack, durationMs } from '@bufbuild/protobuf/wkt';
import type { ServiceError } from '@grpc/grpc-js';
import { BadRequestSchema, QuotaFailureSchema, RetryInfoSchema } from '../gen/google/rpc/error_details_pb.js';
import { StatusSchema } from '../gen/google/rpc/status_pb.js';

export interface ErrorDetails {
  /** google.rpc.RetryInfo: wait this long before trying again. */
  readonly retryDelayMs?: number;
  /** google.rpc.QuotaFailure: which quotas are used up. */
  readonly quotaViolations: readonly { readonly subject: string; readonly description: string }[];
  /** google.rpc.BadRequest: the request fields (paths such as `spec.disks[2].size_bytes`) and what is wrong. */
  readonly fieldViolations: readonly { readonly field: string; readonly description: string }[];
}

/** The details a refused call carries; empty lists when it carries none. */
export function errorDetails(err: Pick<ServiceError, 'metadata'>): ErrorDetails {
  const [bin] = err.metadata.get('grpc-status-details-bin');
  const details = { retryDelayMs: undefined as number | undefined, quotaViolations: [] as ErrorDetails['quotaViolations'][number][], fieldViolations: [] as ErrorDetails['fieldViolations'][number][] };
  if (!(bin instanceof Buffer)) return details;
  for (const any of fromBinary(StatusSchema, bin).details) {
    const retryInfo = anyUnpack(any, RetryInfoSchema);
    if (retryInfo?.retryDelay) details.retryDelayMs = durationMs(retryInfo.retryDelay);
    for (const v of anyUnpack(any, QuotaFailureSchema)?.violations ?? []) details.quotaViolations.push({ subject: v.subject, description: v.description });
    for (const v of anyUnpack(any, BadRequestSchema)?.fieldViolations ?? []) details.fieldViolations.push({ field: v.field, description: v.description });
  }
  return details;
}
