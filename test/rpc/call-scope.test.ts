// The adapter runs each handler inside a call scope (src/rpc/call-scope.ts) carrying
// the call's deadline, which the etcd store caps its calls by: the scope is the
// handler's, capped by the server's maximum, and ends when the call answers.
import { Metadata, type sendUnaryData } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { toImplementation, type HandlersOf } from '../../src/rpc/adapter.js';
import { currentCallScope, type CallScope } from '../../src/rpc/call-scope.js';

function fakeCall(deadline: Date | number) {
  return {
    metadata: new Metadata(),
    request: {},
    getDeadline: () => deadline,
    getPeer: () => 'ipv4:127.0.0.1:1',
    cancelled: false,
    on: () => undefined,
  };
}

/** Runs WhoAmI through the adapter with a handler that reports the scope it saw. */
async function scopeSeenBy(deadline: Date | number, maxDeadlineMs: number): Promise<{ seen: CallScope | undefined; ctxDeadline: number; later: CallScope | undefined | 'not run' }> {
  let seen: CallScope | undefined;
  let ctxDeadline = 0;
  let resume: (() => void) | undefined;
  let later: CallScope | undefined | 'not run' = 'not run';
  const handlers = new Proxy({} as HandlersOf<typeof AccessService>, {
    get: () => async (_request: unknown, ctx: { deadline: Date }) => {
      await Promise.resolve(); // across an await, as a handler's store calls are
      seen = currentCallScope();
      ctxDeadline = ctx.deadline.getTime();
      // Work the handler leaves running: it resumes once the call has answered.
      void new Promise<void>((r) => (resume = r)).then(() => {
        later = currentCallScope();
      });
      return {};
    },
  });
  const implementation = toImplementation(AccessService, handlers, { maxDeadlineMs, onInternalError: () => undefined });
  const whoAmI = implementation.WhoAmI as (call: unknown, callback: sendUnaryData<unknown>) => void;
  await new Promise<void>((resolve, reject) => {
    whoAmI(fakeCall(deadline), (err) => (err ? reject(new Error(String(err.details))) : resolve()));
  });
  await new Promise((r) => setImmediate(r)); // let the adapter's finally run
  resume?.();
  await new Promise((r) => setImmediate(r));
  return { seen, ctxDeadline, later };
}

describe('call scope from the adapter', () => {
  it("carries the client's deadline, capped by the server's maximum, and ends with the call", async () => {
    const clientDeadline = Date.now() + 2_000;
    const { seen, ctxDeadline, later } = await scopeSeenBy(new Date(clientDeadline), 60_000);
    expect(seen?.deadline).toBe(clientDeadline);
    expect(seen?.deadline).toBe(ctxDeadline);
    expect(seen?.signal.aborted).toBe(false);
    expect(seen?.ended).toBe(true);
    // Work the handler left running no longer counts against the call's deadline.
    expect(later).toBeUndefined();

    const capped = await scopeSeenBy(Infinity, 3_000);
    expect(capped.seen?.deadline).toBeLessThanOrEqual(Date.now() + 3_000);
    expect(capped.seen?.deadline).toBeGreaterThan(Date.now());
  });

  it('outside any call there is no scope', () => {
    expect(currentCallScope()).toBeUndefined();
  });
});
