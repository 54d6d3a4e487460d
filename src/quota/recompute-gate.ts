// RecomputeQuota is an admin repair that lists every pool and VG on the host: one runs at a time on
// this daemon, and the next starts no sooner than quota.recompute_min_interval_seconds after the last
// one ended. The excess is refused at once with RESOURCE_EXHAUSTED and RetryInfo rather than queued:
// a queued repair would hold its caller's deadline and pile host work up behind the storage calls
// that need the rbd and lvm slots, and a retry after the named delay gets the same, fresher, answer.
// Global, not per principal: the cost is the host's (the same listings whoever is recounted).
import { RpcError } from '../rpc/errors.js';

export class RecomputeGate {
  private running = false;
  private lastEndedAt = Number.NEGATIVE_INFINITY;

  constructor(private readonly minIntervalMs: () => number) {}

  async run<T>(work: () => Promise<T>): Promise<T> {
    if (this.running) throw refused('another RecomputeQuota is running on this node', this.minIntervalMs());
    const wait = this.lastEndedAt + this.minIntervalMs() - Date.now();
    if (wait > 0) throw refused(`RecomputeQuota runs at most once every ${this.minIntervalMs() / 1000} s on this node`, wait);
    this.running = true;
    try {
      return await work();
    } finally {
      this.running = false;
      this.lastEndedAt = Date.now();
    }
  }
}

function refused(why: string, retryAfterMs: number): RpcError {
  const seconds = Math.max(1, Math.ceil(retryAfterMs / 1000));
  return new RpcError('RESOURCE_EXHAUSTED', `${why}; retry in ${seconds} s`, { details: { retryAfterMs: seconds * 1000 } });
}
