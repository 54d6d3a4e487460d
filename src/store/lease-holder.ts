// The daemon's own lease, granted on first use and kept alive; if it is lost (the
// store was unreachable longer than its TTL) the next use grants a fresh one.
// Keys on it (concurrent-operation slots) vanish when the daemon dies.
import type { Logger } from 'pino';
import { keepLeaseAlive, type LeaseKeeper } from './lease-keeper.js';
import type { LeaseId, Store } from './store.js';

export class LeaseHolder {
  private current: Promise<{ lease: LeaseId; keeper: LeaseKeeper }> | undefined;

  constructor(
    private readonly store: Store,
    private readonly ttlSeconds: number,
    private readonly log: Logger,
  ) {}

  lease(): Promise<LeaseId> {
    this.current ??= this.store.grantLease(this.ttlSeconds).then(
      (lease) => ({
        lease,
        keeper: keepLeaseAlive(this.store, lease, this.ttlSeconds, (err) => {
          this.log.warn({ err: err.message, lease }, 'daemon lease lost; its slots are gone, a new lease will be granted');
          this.current = undefined;
        }),
      }),
      (err: unknown) => {
        this.current = undefined;
        throw err;
      },
    );
    return this.current.then(({ lease }) => lease);
  }

  /** Revokes the lease so this daemon's slots free at once on a clean stop. */
  async release(): Promise<void> {
    const held = await this.current?.catch(() => undefined);
    this.current = undefined;
    if (!held) return;
    held.keeper.stop();
    await this.store.revokeLease(held.lease).catch(() => undefined);
  }
}
