// Which calls may be sent again after UNAVAILABLE: reads, and mutations that carry a
// request_id (the daemon answers a repeated request_id with the first reply, so a retry
// after a lost reply changes nothing twice). What mutates is declared in the proto
// (`(debvisor.v1.rpc_policy).mutates`), read here from the generated descriptors.
import { getOption, hasOption, type DescMethod } from '@bufbuild/protobuf';
import { status as Status } from '@grpc/grpc-js';
import { ExponentialBackoff, handleWhen, retry, type RetryPolicy } from 'cockatiel';
import { rpc_policy } from '../gen/debvisor/v1/options_pb.js';

export interface RetryOptions {
  /** Attempts after the first one. */
  readonly maxRetries: number;
  readonly initialDelayMs: number;
  readonly maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryOptions = { maxRetries: 4, initialDelayMs: 100, maxDelayMs: 2000 };

/** Whether the RPC changes state, as its proto declares; an RPC without a policy counts as a mutation. */
export function mutates(method: DescMethod): boolean {
  return !hasOption(method, rpc_policy) || getOption(method, rpc_policy).mutates;
}

/** Whether this request may be retried after UNAVAILABLE. */
export function retryable(method: DescMethod, request: Record<string, unknown>): boolean {
  if (method.methodKind !== 'unary') return false;
  if (!mutates(method)) return true;
  const requestId = method.input.fields.find((field) => field.name === 'request_id');
  return requestId !== undefined && typeof request[requestId.localName] === 'string' && request[requestId.localName] !== '';
}

function isUnavailable(err: Error): boolean {
  return (err as Error & { code?: unknown }).code === Status.UNAVAILABLE;
}

export function retryPolicy(options: RetryOptions): RetryPolicy {
  return retry(handleWhen(isUnavailable), {
    maxAttempts: options.maxRetries,
    backoff: new ExponentialBackoff({ initialDelay: options.initialDelayMs, maxDelay: options.maxDelayMs }),
  });
}
