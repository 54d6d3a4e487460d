// Keeps a lease alive in the background and reports its loss. Backend-neutral: it
// only needs keepAliveOnce, so both stores share it.
import { NotFoundError } from './errors.js';
import type { LeaseId, Store } from './store.js';

export interface LeaseKeeper {
  readonly lease: LeaseId;
  /** Stops refreshing; the lease then expires after its TTL unless revoked. */
  stop(): void;
}

/**
 * Refreshes at a third of the TTL, so two refreshes can fail before it lapses.
 * `onLost` fires once, when the store says the lease is gone (expired or revoked).
 */
export function keepLeaseAlive(store: Store, lease: LeaseId, ttlSeconds: number, onLost: (err: Error) => void): LeaseKeeper {
  let stopped = false;
  const timer = setInterval(
    () => {
      store.keepAliveOnce(lease).catch((err: unknown) => {
        if (stopped) return;
        if (err instanceof NotFoundError) {
          stopped = true;
          clearInterval(timer);
          onLost(err);
        }
        // Unavailable: keep trying; the lease may still be alive on the server.
      });
    },
    Math.max(100, (ttlSeconds * 1000) / 3),
  );
  timer.unref();
  return {
    lease,
    stop: () => {
      stopped = true;
      clearInterval(timer);
    },
  };
}
