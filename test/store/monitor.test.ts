// The store monitor behind readiness: one failed probe (a leader election, a slow
// member) does not turn NOT_SERVING; two in a row do; an answer turns SERVING again.
// A fake store whose ping() the test settles by hand, on fake timers: no timing is assumed.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { monitorStore } from '../../src/store/monitor.js';
import type { Store } from '../../src/store/store.js';

const INTERVAL_MS = 1_000;

/** Each ping() waits until the test settles it; settling moves time on to the next probe. */
function scriptedStore() {
  const pending: { resolve: () => void; reject: (err: Error) => void }[] = [];
  const store = {
    ping: () =>
      new Promise<void>((resolve, reject) => {
        pending.push({ resolve, reject });
      }),
  } as unknown as Store;
  const settle = async (ok: boolean) => {
    const probe = pending.shift();
    if (probe === undefined) throw new Error('no probe in flight');
    if (ok) probe.resolve();
    else probe.reject(new Error('no quorum'));
    await vi.advanceTimersByTimeAsync(INTERVAL_MS);
  };
  return { store, answer: () => settle(true), fail: () => settle(false) };
}

describe('monitorStore', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('needs two failed probes in a row to report the store unreachable', async () => {
    const { store, answer, fail } = scriptedStore();
    const changes: boolean[] = [];
    const monitor = monitorStore(store, INTERVAL_MS, (reachable) => changes.push(reachable));
    try {
      await answer();
      await fail(); // one election: still reachable
      await answer();
      await fail();
      await fail(); // two in a row: unreachable
      await answer();
      expect(changes).toEqual([true, false, true]);
    } finally {
      monitor.stop();
    }
  });

  it('reports unreachable at once when the store never answered', async () => {
    const { store, fail, answer } = scriptedStore();
    const changes: boolean[] = [];
    const monitor = monitorStore(store, INTERVAL_MS, (reachable) => changes.push(reachable));
    try {
      await fail();
      await answer();
      expect(changes).toEqual([false, true]);
    } finally {
      monitor.stop();
    }
  });
});
