// request_id exactly-once, with the store faults forced. The store is the real embedded
// one; FaultyStore in front of it fails chosen transactions either before they reach the
// store (not applied) or after (applied, answer lost) — what an etcd timeout during a
// leader change looks like to the daemon. Its limits: it fails whole calls only, never
// delays them, and touches nothing but txn and get; watches and leases are the store's
// own. Real-etcd runs of the same properties are in test/e2e/exactly-once.test.ts.
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import { create, type Message } from '@bufbuild/protobuf';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Principal } from '../../src/rpc/principal.js';
import { StartTestOperationRequestSchema, TestingService, type StartTestOperationRequest } from '../../src/gen/debvisor/testing/v1/testing_pb.js';
import { CLAIM_TTL_SECONDS, fingerprintOf, withIdempotency } from '../../src/operations/idempotency.js';
import type { CallContext } from '../../src/rpc/context.js';
import { RpcError } from '../../src/rpc/errors.js';
import { compilePolicy } from '../../src/rpc/policy.js';
import { StoreUnavailableError } from '../../src/store/errors.js';
import { LAYOUT } from '../../src/store/layout.js';
import type { Store, TxnRequest, TxnResult } from '../../src/store/store.js';
import { embeddedHarness, type StoreHarness } from '../support/store-harness.js';

const method = TestingService.method.startTestOperation;
const REPLY_TAG = 3;
const CLAIM_TAG = 2;

type Fault = 'before' | 'after';
type TxnKind = 'claim' | 'reply';

/** Fails the next transactions of a kind, before or after applying them. */
class FaultyStore {
  readonly faults: Record<TxnKind, Fault[]> = { claim: [], reply: [] };
  /** While set, every reply write fails unapplied. */
  replyWritesDown = false;
  getsDown = false;
  /** When set, gets fail from the next claim fault on (the store went away mid-claim). */
  getsDownAfterClaimFault = false;
  readonly store: Store;

  constructor(inner: Store) {
    const kindOf = (request: TxnRequest): TxnKind | undefined => {
      const put = request.success.find((op) => op.type === 'put' && op.key.startsWith(LAYOUT.replies));
      if (put?.type !== 'put') return undefined;
      return put.value[0] === REPLY_TAG ? 'reply' : put.value[0] === CLAIM_TAG ? 'claim' : undefined;
    };
    const txn = async (request: TxnRequest): Promise<TxnResult> => {
      const kind = kindOf(request);
      const fault = kind && (kind === 'reply' && this.replyWritesDown ? 'before' : this.faults[kind].shift());
      if (fault === 'before') throw new StoreUnavailableError('forced: request timed out (not applied)');
      const result = await inner.txn(request);
      if (fault === 'after') {
        if (kind === 'claim' && this.getsDownAfterClaimFault) this.getsDown = true;
        throw new StoreUnavailableError('forced: request timed out (applied, answer lost)');
      }
      return result;
    };
    const get = (key: string) => (this.getsDown ? Promise.reject(new StoreUnavailableError('forced: get timed out')) : inner.get(key));
    this.store = new Proxy(inner, {
      get: (target, property, receiver) => {
        if (property === 'txn') return txn;
        if (property === 'get') return get;
        const value: unknown = Reflect.get(target, property, receiver);
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
  }
}

function contextFor(timeoutMs = 10_000): CallContext {
  return {
    traceId: 't',
    principal: { id: 'alice' } as Principal,
    deadline: new Date(Date.now() + timeoutMs),
    signal: AbortSignal.timeout(timeoutMs),
    peer: 'test',
  };
}

/** A latch a test opens when it wants the held handler to finish. */
function latch(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

describe('request_id exactly-once', () => {
  let harness: StoreHarness;
  let inner: Store;
  let faulty: FaultyStore;
  let runs: number;
  let hold: Promise<void> | undefined;
  let fail: Error | undefined;
  let call: (request: StartTestOperationRequest, ctx?: CallContext) => Promise<Message>;

  beforeEach(async () => {
    harness = await embeddedHarness();
    inner = await harness.open();
    faulty = new FaultyStore(inner);
    runs = 0;
    hold = undefined;
    fail = undefined;
    const handler = async () => {
      const run = ++runs;
      await hold;
      if (fail) throw fail;
      return { operation: { id: `op-${run}` } };
    };
    const wrapped = withIdempotency(faulty.store, compilePolicy(method)!, handler);
    call = (request, ctx = contextFor()) => wrapped(request, ctx) as Promise<Message>;
  });
  afterEach(async () => {
    await inner.close();
    await harness.cleanup();
  });

  const request = (requestId: string, ms = 1000) => create(StartTestOperationRequestSchema, { requestId, duration: durationFromMs(ms) });
  const idOf = (reply: Message) => (reply as unknown as { operation?: { id: string } }).operation?.id;

  it('replays the first reply to a retry, running the handler once', async () => {
    const first = await call(request('r1'));
    const again = await call(request('r1'));
    expect(idOf(again)).toBe(idOf(first));
    expect(runs).toBe(1);
  });

  it('refuses the same request_id with different parameters, whatever they are, without running anything', async () => {
    await call(request('r2', 1000));
    const reused = await call(request('r2', 2000)).catch((err: unknown) => err);
    expect(reused).toBeInstanceOf(RpcError);
    expect((reused as RpcError).code).toBe('INVALID_ARGUMENT');
    expect((reused as RpcError).message).toContain('request_id reused with different parameters');
    expect(runs).toBe(1);
  });

  it('keeps the outcome when the reply write fails: retried until stored, the handler runs once', async () => {
    faulty.faults.reply.push('before', 'before', 'before');
    const first = await call(request('r3'));
    const again = await call(request('r3'));
    expect(idOf(again)).toBe(idOf(first));
    expect(runs).toBe(1);
  });

  it('recognises its own reply write whose answer was lost', async () => {
    faulty.faults.reply.push('after');
    const first = await call(request('r4'));
    expect(idOf(await call(request('r4')))).toBe(idOf(first));
    expect(runs).toBe(1);
  });

  it('recognises its own claim whose answer was lost', async () => {
    faulty.faults.claim.push('after');
    const first = await call(request('r5'));
    expect(idOf(await call(request('r5')))).toBe(idOf(first));
    expect(runs).toBe(1);
  });

  it('answers UNAVAILABLE "not executed" when it cannot tell whether it claimed, and the retry runs it once', { timeout: 30_000 }, async () => {
    faulty.faults.claim.push('after');
    faulty.getsDownAfterClaimFault = true;
    const lost = await call(request('r6')).catch((err: unknown) => err);
    faulty.getsDown = false;
    expect((lost as RpcError).code).toBe('UNAVAILABLE');
    expect((lost as RpcError).message).toContain('not executed');
    expect((lost as RpcError).message).toContain('retry with the same request_id is safe');
    expect(runs).toBe(0);
    // The orphaned claim (if it landed) is freed by revocation or, at worst, its short lease.
    await call(request('r6'), contextFor(4 * CLAIM_TTL_SECONDS * 1000));
    expect(runs).toBe(1);
  });

  it('returns the reply while its write still fails at the deadline; a waiting retry gets it once the store recovers', { timeout: 30_000 }, async () => {
    faulty.replyWritesDown = true;
    const first = await call(request('r7'), contextFor(1500));
    expect(idOf(first)).toBe('op-1');
    const retry = call(request('r7'), contextFor(20_000));
    faulty.replyWritesDown = false;
    expect(idOf(await retry)).toBe('op-1');
    expect(runs).toBe(1);
  });

  it('answers UNAVAILABLE "outcome unknown" for a handler still running at the deadline; the retry waits and gets its reply', { timeout: 30_000 }, async () => {
    const gate = latch();
    hold = gate.promise;
    const first = await call(request('r8'), contextFor(1500)).catch((err: unknown) => err);
    expect((first as RpcError).code).toBe('UNAVAILABLE');
    expect((first as RpcError).message).toContain('not known');
    expect((first as RpcError).message).toContain('retry with the same request_id is safe');
    const retry = call(request('r8'), contextFor(20_000));
    gate.open();
    expect(idOf(await retry)).toBe('op-1');
    expect(runs).toBe(1);
  });

  it('lets a retry take over within seconds from a claimer that died', { timeout: 30_000 }, async () => {
    // A dead daemon's claim: on a short lease nobody keeps alive.
    const lease = await inner.grantLease(CLAIM_TTL_SECONDS);
    const key = `${LAYOUT.replies}alice/${encodeURIComponent(`${method.parent.typeName}.${method.name}`)}/r9`;
    const fingerprint = fingerprintOf(method.input, method.input.field.requestId, request('r9'));
    await inner.put(key, Buffer.concat([Buffer.of(CLAIM_TAG), fingerprint]), { lease });
    const started = Date.now();
    expect(idOf(await call(request('r9'), contextFor(4 * CLAIM_TTL_SECONDS * 1000)))).toBe('op-1');
    expect(Date.now() - started).toBeLessThan(3 * CLAIM_TTL_SECONDS * 1000);
    expect(runs).toBe(1);
  });

  it('drops the claim of a failed handler, so the retry runs for real', async () => {
    fail = new RpcError('FAILED_PRECONDITION', 'no');
    await expect(call(request('r10'))).rejects.toThrow('no');
    fail = undefined;
    expect(idOf(await call(request('r10')))).toBe('op-2');
  });

  it('fingerprints the request without its request_id, the same however the message was built', () => {
    const a = create(StartTestOperationRequestSchema, { requestId: 'x', steps: 3, duration: durationFromMs(5000) });
    const b = create(StartTestOperationRequestSchema, { duration: { seconds: 5n }, steps: 3, requestId: 'y' });
    const c = create(StartTestOperationRequestSchema, { requestId: 'x', steps: 4, duration: durationFromMs(5000) });
    const field = method.input.field.requestId;
    expect(fingerprintOf(method.input, field, a).equals(fingerprintOf(method.input, field, b))).toBe(true);
    expect(fingerprintOf(method.input, field, a).equals(fingerprintOf(method.input, field, c))).toBe(false);
    expect(a.requestId).toBe('x');
  });
});
