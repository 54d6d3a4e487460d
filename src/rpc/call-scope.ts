// The deadline of the RPC a store operation runs for (shared RPC base: the adapter sets it, the store reads it). The adapter runs each handler
// inside a call scope; the etcd store caps every operation's own timeout by it, so a
// handler's sequential store calls share one budget that never exceeds the client's
// deadline. Work with no call scope (background tasks) keeps the store's own timeout.
import { AsyncLocalStorage } from 'node:async_hooks';

export interface CallScope {
  /** Absolute deadline (ms since the epoch). */
  readonly deadline: number;
  /** Aborted when the call is cancelled or its deadline passes. */
  readonly signal: AbortSignal;
  /**
   * Set once the call has answered: work it started and left running (an operation's
   * task) no longer counts against its deadline.
   */
  ended: boolean;
}

const scopes = new AsyncLocalStorage<CallScope>();

/** Runs `fn` (and everything it starts) within the call's deadline. */
export function runInCallScope<T>(scope: CallScope, fn: () => T): T {
  return scopes.run(scope, fn);
}

/** The scope of the call this code runs for, if that call is still in flight. */
export function currentCallScope(): CallScope | undefined {
  const scope = scopes.getStore();
  return scope === undefined || scope.ended ? undefined : scope;
}
