// request_id for every mutating unary RPC: exactly-once under retries and store faults.
//
// A call with a request_id first claims the key replies/<principal>/<method>/<id>. The
// claim carries a fingerprint of the request and sits on a short lease that this call
// keeps alive, so a claimer that dies (SIGKILL, lost lease) frees the id within seconds.
// When the handler has returned, the reply replaces the claim in one write that also
// moves it to the long (one day) lease; a retry with the same id and the same request
// gets that reply instead of doing the work twice. Once the handler has returned, the
// claim is never dropped: the reply write is retried, past the call's deadline if need
// be, and a retry meanwhile waits for it. A handler that fails drops its claim, so the
// retry runs for real. Secret fields are cleared from kept replies (a secret is shown
// once, and is never stored in plain text).
//
// The fingerprint is SHA-256 of the request's protobuf encoding with request_id cleared.
// protobuf-es writes fields in field-number order, so the same request from the same
// client encodes the same; two encodings of one logical request can differ only in map
// entry order or unknown fields, and then the retry is refused as a different request
// (INVALID_ARGUMENT), never replayed wrongly.
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { clearField, clone, create, fromBinary, getOption, toBinary, type DescField, type DescMessage, type Message } from '@bufbuild/protobuf';
import { reflect } from '@bufbuild/protobuf/reflect';
import { ExponentialBackoff, handleAll, retry } from 'cockatiel';
import type { Logger } from 'pino';
import { secret } from '../gen/debvisor/v1/options_pb.js';
import type { CallContext } from '../rpc/context.js';
import { InvalidArgumentError, RpcError } from '../rpc/errors.js';
import type { CompiledPolicy } from '../rpc/policy.js';
import { LAYOUT, segment } from '../store/layout.js';
import { keepLeaseAlive, type LeaseKeeper } from '../store/lease-keeper.js';
import { validateTargetNames } from './target-names.js';
import type { Compare, KeyValue, LeaseId, Store } from '../store/store.js';

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const KEEP_SECONDS = 24 * 3600;
const REPLY_LEASE_ROTATE_MS = 3_600_000;
/** The claim's lease: how long a dead claimer can hold its request_id. */
export const CLAIM_TTL_SECONDS = 5;
/** How long a reply that could not be stored within its call keeps being retried. */
const BACKGROUND_SAVE_MS = 10 * 60_000;
/** Answer this long before the deadline, so the answer is ours rather than the adapter's DEADLINE_EXCEEDED. */
const DEADLINE_MARGIN_MS = 250;

// Entry format: a tag byte, then (tags 2 and 3) the 32-byte fingerprint, then (tags 1 and 3) the reply.
// Tags 0 and 1 are the claims and replies of earlier daemons (no fingerprint).
const LEGACY_CLAIM = 0;
const LEGACY_REPLY = 1;
const CLAIM = 2;
const REPLY = 3;
const FINGERPRINT_BYTES = 32;

interface Entry {
  readonly fingerprint: Buffer | undefined;
  readonly reply: Uint8Array | undefined;
}

function decodeEntry(value: Uint8Array): Entry {
  const tag = value[0];
  if (tag === LEGACY_CLAIM) return { fingerprint: undefined, reply: undefined };
  if (tag === LEGACY_REPLY) return { fingerprint: undefined, reply: value.subarray(1) };
  const fingerprint = Buffer.from(value.subarray(1, 1 + FINGERPRINT_BYTES));
  return { fingerprint, reply: tag === REPLY ? value.subarray(1 + FINGERPRINT_BYTES) : undefined };
}

function encodeEntry(tag: typeof CLAIM | typeof REPLY, fingerprint: Buffer, reply = new Uint8Array()): Uint8Array {
  return Buffer.concat([Buffer.of(tag), fingerprint, reply]);
}

type Handler = (request: Message, ctx: CallContext) => Promise<unknown>;

/**
 * Kept replies share one long lease per store, granted for a day plus an hour and
 * replaced hourly: replies live 24 to 25 hours, and storing one costs no lease grant.
 */
class ReplyLeases {
  private current: { lease: Promise<LeaseId>; grantedAt: number } | undefined;

  constructor(private readonly store: Store) {}

  lease(): Promise<LeaseId> {
    if (!this.current || Date.now() - this.current.grantedAt > REPLY_LEASE_ROTATE_MS) {
      const lease = this.store.grantLease(KEEP_SECONDS + REPLY_LEASE_ROTATE_MS / 1000);
      const current = { lease, grantedAt: Date.now() };
      this.current = current;
      lease.catch(() => {
        if (this.current === current) this.current = undefined;
      });
    }
    return this.current.lease;
  }

  /** A write on this lease failed: it may be gone (revoked, or the store lost it), so the next write takes a fresh one. */
  suspect(lease: LeaseId): void {
    void this.current?.lease.then((held) => {
      if (held === lease) this.current = undefined;
    }, () => undefined);
  }
}

const replyLeasesByStore = new WeakMap<Store, ReplyLeases>();

/** Clears fields marked (debvisor.v1.secret), recursively through singular sub-messages. */
function withoutSecrets(schema: DescMessage, message: Message): Message {
  const r = reflect(schema, message);
  for (const field of schema.fields) {
    if (getOption(field, secret)) r.clear(field);
    else if (field.fieldKind === 'message' && r.isSet(field)) withoutSecrets(field.message, r.get(field).message);
  }
  return message;
}

/**
 * SHA-256 of the request without its request_id (see the file comment on how canonical
 * that is) and without secret fields, so the store never holds a hash a secret could be
 * guessed from.
 */
export function fingerprintOf(schema: DescMessage, requestIdField: DescField, request: Message): Buffer {
  const copy = withoutSecrets(schema, clone(schema, request));
  clearField(copy, requestIdField);
  return createHash('sha256').update(toBinary(schema, copy)).digest();
}

function reusedError(): InvalidArgumentError {
  return new InvalidArgumentError('request_id', 'request_id reused with different parameters');
}

/** Time left before this call must answer: its deadline less a margin (at most a tenth of the time left). */
function remainingMs(ctx: CallContext): number {
  const left = ctx.deadline.getTime() - Date.now();
  return left - Math.min(DEADLINE_MARGIN_MS, left / 10);
}

/** Resolves with `work`'s value, or with `undefined` once the call's budget is spent (work keeps running). */
async function withinBudget<T>(work: Promise<T>, ctx: CallContext): Promise<{ value: T } | undefined> {
  const timer = new AbortController();
  try {
    return await Promise.race([work.then((value) => ({ value })), sleep(Math.max(0, remainingMs(ctx)), undefined, { signal: timer.signal, ref: false }).then(() => undefined)]);
  } finally {
    timer.abort();
  }
}

/** A claim this call holds: its lease is kept alive until the reply is stored or the claim dropped. */
interface Claim {
  readonly lease: LeaseId;
  readonly keeper: LeaseKeeper;
  readonly modRevision: number;
}

export interface IdempotencyOptions {
  readonly log?: Logger;
}

/** Wraps the handler of an RPC whose policy sets `idempotency` (every mutating unary RPC); returns any other as it is. */
export function withIdempotency(store: Store, policy: CompiledPolicy, handler: Handler, options: IdempotencyOptions = {}): Handler {
  if (!policy.idempotency) return handler;
  const { requestIdField } = policy.idempotency;
  const method = policy.method;
  const log = options.log;
  const replyLeases = replyLeasesByStore.get(store) ?? new ReplyLeases(store);
  replyLeasesByStore.set(store, replyLeases);

  /** Frees a claim whose handler failed (or that was never used): revoking deletes it; if that fails, it expires. */
  const drop = (claim: { lease: LeaseId; keeper: LeaseKeeper }): Promise<void> => {
    claim.keeper.stop();
    return store.revokeLease(claim.lease).catch(() => undefined);
  };

  /** Claims the key, or returns undefined when another call holds it. */
  const claim = async (key: string, fingerprint: Buffer): Promise<Claim | undefined> => {
    const lease = await store.grantLease(CLAIM_TTL_SECONDS);
    const keeper = keepLeaseAlive(store, lease, CLAIM_TTL_SECONDS, (err) => log?.warn({ err: err.message, key }, 'request_id claim lease lost while its call ran'));
    try {
      const claimed = await store.txn({ compare: [{ key, absent: true }], success: [{ type: 'put', key, value: encodeEntry(CLAIM, fingerprint), lease }] });
      if (claimed.succeeded) return { lease, keeper, modRevision: claimed.revision };
      void drop({ lease, keeper });
      return undefined;
    } catch (err) {
      // The answer was lost: whether the claim is ours shows in the lease it sits on.
      const now = await store.get(key).catch(() => undefined);
      if (now?.lease === lease) return { lease, keeper, modRevision: now.modRevision };
      void drop({ lease, keeper });
      throw new RpcError('UNAVAILABLE', 'the state store did not answer; the request was not executed, and a retry with the same request_id is safe', { cause: err });
    }
  };

  /** Replaces our claim by the reply on the long lease. True once the id has a kept reply; false if another call took it over. */
  const saveReply = async (key: string, held: Claim, entry: Uint8Array): Promise<boolean> => {
    const policy = retry(handleAll, { maxAttempts: Number.MAX_SAFE_INTEGER, backoff: new ExponentialBackoff({ initialDelay: 50, maxDelay: 2000 }) });
    const giveUpAt = Date.now() + BACKGROUND_SAVE_MS;
    let attempt = 0;
    const stored = await policy.execute(async () => {
      if (Date.now() > giveUpAt) return false;
      const lease = await replyLeases.lease();
      // The first attempt trusts the claim's revision; later ones look (an earlier write may have landed).
      let compare: Compare = { key, modRevision: held.modRevision };
      if (attempt++ > 0) {
        const current = await store.get(key);
        if (current && current.lease !== held.lease) return decodeEntry(current.value).reply !== undefined;
        // Absent: our claim expired (the store was out longer than its lease), but the outcome is known: keep it.
        compare = current ? { key, modRevision: current.modRevision } : { key, absent: true };
      }
      try {
        const result = await store.txn({ compare: [compare], success: [{ type: 'put', key, value: entry, lease }] });
        if (!result.succeeded) throw new Error('the request_id entry changed under the reply write; looking again');
      } catch (err) {
        replyLeases.suspect(lease);
        throw err;
      }
      return true;
    });
    held.keeper.stop();
    void store.revokeLease(held.lease).catch(() => undefined);
    return stored;
  };

  /** Runs the handler under a held claim and keeps its outcome. */
  const runClaimed = async (request: Message, ctx: CallContext, key: string, held: Claim, fingerprint: Buffer): Promise<{ reply: Message; saved: Promise<unknown> }> => {
    let reply: Message;
    try {
      reply = create(method.output, (await handler(request, ctx)) as never);
    } catch (err) {
      // A failed first attempt may be retried for real.
      await drop(held);
      throw err;
    }
    const entry = encodeEntry(REPLY, fingerprint, toBinary(method.output, withoutSecrets(method.output, clone(method.output, reply))));
    const saved = saveReply(key, held, entry).then(
      (stored) => {
        if (!stored) log?.error({ key }, 'request_id claim was taken over before the reply was stored; the request may run twice');
      },
      (err: unknown) => log?.error({ err, key }, 'could not store the reply of a request_id; a retry may run it again'),
    );
    return { reply, saved };
  };

  /** Waits until the entry at `key` changes from `seen` (or the budget ends). */
  const changed = async (key: string, seen: KeyValue, ctx: CallContext): Promise<boolean> => {
    const signal = AbortSignal.any([ctx.signal, AbortSignal.timeout(Math.max(0, remainingMs(ctx)))]);
    try {
      for await (const event of store.watch(key, { fromRevision: seen.modRevision + 1, signal })) if (event.key === key) return true;
    } catch {
      // A broken watch: look again after a pause (still bounded by the budget).
      await sleep(200, undefined, { signal }).catch(() => undefined);
    }
    return !signal.aborted;
  };

  return async (request, ctx) => {
    const requestId = policy.requestIdOf(request);
    if (requestId === '') return handler(request, ctx);
    // Validation first: a request that names an invalid resource never meets a kept reply.
    validateTargetNames(policy, request);
    if (!REQUEST_ID.test(requestId)) throw new InvalidArgumentError('request_id', 'at most 128 characters of letters, digits and . _ : -');
    const caller = ctx.principal;
    if (!caller) throw new RpcError('UNAUTHENTICATED', 'no principal');
    // A user's request ids are its own per certificate acting for it: another panel never meets its replies.
    const by = caller.delegation?.by.id;
    const owner = by === undefined ? caller.id : `${caller.id} via ${by}`;
    const key = `${LAYOUT.replies}${segment(owner)}/${segment(method.parent.typeName + '.' + method.name)}/${segment(requestId)}`;
    const fingerprint = fingerprintOf(method.input, requestIdField, request);

    for (;;) {
      const kept = await store.get(key);
      if (kept) {
        const entry = decodeEntry(kept.value);
        if (entry.fingerprint && !entry.fingerprint.equals(fingerprint)) throw reusedError();
        if (entry.reply) return fromBinary(method.output, entry.reply);
        // Another call holds the id: wait for its reply, or for its claim to go (it failed, or its daemon died).
        if (await changed(key, kept, ctx)) continue;
        throw new RpcError('ABORTED', `a request with request_id ${requestId} is still in progress; retry shortly`);
      }
      const held = await claim(key, fingerprint);
      if (!held) continue;
      const running = runClaimed(request, ctx, key, held, fingerprint);
      const ran = await withinBudget(running, ctx);
      if (!ran) {
        running.catch(() => undefined);
        throw new RpcError(
          'UNAVAILABLE',
          `the outcome of request_id ${requestId} is not known yet: it was still running when the call's deadline came; a retry with the same request_id is safe (it waits for the outcome or returns it)`,
        );
      }
      // The reply is ours to return either way; a reply write still failing goes on in the background.
      await withinBudget(ran.value.saved, ctx);
      return ran.value.reply;
    }
  };
}
