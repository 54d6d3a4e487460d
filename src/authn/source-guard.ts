// Brute-force protection and source tracking, per source address.
// - More than `maxFailures` authentication failures from one address within a minute
//   blocks it for `blockMs`.
// - Each principal's known source addresses are remembered; a new one is reported once.
// Memory is bounded: old entries are evicted in insertion order.

const WINDOW_MS = 60_000;
const MAX_TRACKED = 50_000;

export interface SourceGuardOptions {
  readonly maxFailures: number;
  readonly blockMs: number;
  readonly now?: () => number;
}

function evictOldest<K, V>(map: Map<K, V>, limit: number): void {
  while (map.size > limit) {
    const oldest = map.keys().next();
    if (oldest.done) return;
    map.delete(oldest.value);
  }
}

export class SourceGuard {
  private readonly failures = new Map<string, number[]>();
  private readonly blockedUntil = new Map<string, number>();
  private readonly sources = new Map<string, Set<string>>();
  private readonly now: () => number;

  constructor(private readonly options: SourceGuardOptions) {
    this.now = options.now ?? Date.now;
  }

  /** Milliseconds the address stays blocked, or 0. */
  blockedFor(ip: string): number {
    const until = this.blockedUntil.get(ip);
    if (until === undefined) return 0;
    const left = until - this.now();
    if (left <= 0) this.blockedUntil.delete(ip);
    return Math.max(0, left);
  }

  /** Records a failure; true when this failure newly blocks the address. */
  recordFailure(ip: string): boolean {
    const now = this.now();
    const recent = (this.failures.get(ip) ?? []).filter((t) => now - t < WINDOW_MS);
    recent.push(now);
    this.failures.delete(ip); // re-insert: keeps eviction order by last activity
    this.failures.set(ip, recent.slice(-(this.options.maxFailures + 1)));
    evictOldest(this.failures, MAX_TRACKED);
    if (recent.length > this.options.maxFailures && this.blockedFor(ip) === 0) {
      this.blockedUntil.set(ip, now + this.options.blockMs);
      evictOldest(this.blockedUntil, MAX_TRACKED);
      return true;
    }
    return false;
  }

  /** Remembers that `principal` used `ip`; true if the principal had used other addresses but never this one. */
  noteSource(principal: string, ip: string): boolean {
    let known = this.sources.get(principal);
    if (!known) {
      known = new Set();
      this.sources.set(principal, known);
      evictOldest(this.sources, MAX_TRACKED);
    }
    if (known.has(ip)) return false;
    const isNew = known.size > 0;
    if (known.size < 256) known.add(ip);
    return isNew;
  }
}
