import { randomFillSync } from 'node:crypto';

// A client-supplied id is echoed only if it is short and plain, so it can't inject into logs.
const VALID_TRACE_ID = /^[A-Za-z0-9._:-]{8,128}$/;

// 128 random bits per id, cut from a pool refilled 256 ids at a time: one
// randomBytes(16) call costs ~7 µs, about as much as a whole bare gRPC call's handler.
// The pool is hex-encoded once per refill (one native call instead of one per id), and
// each id is a slice of that text: V8 keeps the 8 KiB text alive while an id lives, so
// ids are for per-call use (logs, trailers, audit lines), not for long-lived records.
const ID_HEX = 32;
const IDS_PER_POOL = 256;
const pool = Buffer.alloc((ID_HEX / 2) * IDS_PER_POOL);
let poolHex = '';
let used = IDS_PER_POOL;

export function newTraceId(): string {
  if (used === IDS_PER_POOL) {
    randomFillSync(pool);
    poolHex = pool.toString('hex');
    used = 0;
  }
  const start = used * ID_HEX;
  used++;
  return poolHex.slice(start, start + ID_HEX);
}

export function traceIdFrom(incoming: unknown): string {
  return typeof incoming === 'string' && VALID_TRACE_ID.test(incoming) ? incoming : newTraceId();
}
