import { randomFillSync } from 'node:crypto';

// A client-supplied id is echoed only if it is short and plain, so it can't inject into logs.
const VALID_TRACE_ID = /^[A-Za-z0-9._:-]{8,128}$/;

// 128 random bits per id, cut from a pool refilled 256 ids at a time: one
// randomBytes(16) call costs ~7 µs, about as much as a whole bare gRPC call's handler.
const ID_BYTES = 16;
const pool = Buffer.alloc(ID_BYTES * 256);
let used = pool.length;

export function newTraceId(): string {
  if (used === pool.length) {
    randomFillSync(pool);
    used = 0;
  }
  const id = pool.toString('hex', used, used + ID_BYTES);
  used += ID_BYTES;
  return id;
}

export function traceIdFrom(incoming: unknown): string {
  return typeof incoming === 'string' && VALID_TRACE_ID.test(incoming) ? incoming : newTraceId();
}
