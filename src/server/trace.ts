import { randomBytes } from 'node:crypto';

// A client-supplied id is echoed only if it is short and plain, so it can't inject into logs.
const VALID_TRACE_ID = /^[A-Za-z0-9._:-]{8,128}$/;

export function newTraceId(): string {
  return randomBytes(16).toString('hex');
}

export function traceIdFrom(incoming: unknown): string {
  return typeof incoming === 'string' && VALID_TRACE_ID.test(incoming) ? incoming : newTraceId();
}
