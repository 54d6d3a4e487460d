// Brute-force protection for API-key and anonymous calls, and source tracking.
// - Authentication failures are counted per source address and, for a known API key id
//   presented with a wrong secret, also per key id. More than the limit within the
//   window blocks that address or key id for `blockMs`. The key limit is below the
//   address limit, so a key whose secret is being guessed is blocked before the address.
// - A block refuses API-key and anonymous calls only: the identity step never consults it
//   for a call whose client certificate verified (src/chain/identity.ts).
// - Blocks live in this daemon's memory: each daemon counts and blocks on its own, and a
//   restart forgets them.
// - Each principal's known source addresses are remembered; a new one is reported once.
// Memory is bounded: old entries are evicted in insertion order.
import { isIP } from 'node:net';
import { Counter, Gauge, type Registry } from 'prom-client';
import { normalizeIp } from './apikey.js';

const MAX_TRACKED = 50_000;

export type BlockKind = 'address' | 'key';
const KINDS: readonly BlockKind[] = ['address', 'key'];

/** One active block. Times are epoch milliseconds. */
export interface Block {
  readonly kind: BlockKind;
  /** The source address (IPv4-mapped IPv6 written as IPv4) or the API key id. */
  readonly subject: string;
  readonly since: number;
  readonly until: number;
  /** Failures counted in the window that imposed it. */
  readonly failures: number;
}

export interface SourceGuardOptions {
  /** Failures per source address within the window before it is blocked. */
  readonly maxFailures: number;
  /** Failures per API key id within the window before it is blocked; capped at maxFailures - 1. */
  readonly maxKeyFailures: number;
  readonly windowMs: number;
  readonly blockMs: number;
  readonly now?: () => number;
  /** Where auth_blocks_active and auth_blocks_total are registered, if anywhere. */
  readonly registry?: Registry;
}

function evictOldest<K, V>(map: Map<K, V>, limit: number): void {
  while (map.size > limit) {
    const oldest = map.keys().next();
    if (oldest.done) return;
    map.delete(oldest.value);
  }
}

/** The address as blocks key it: `::ffff:10.0.0.1` and `10.0.0.1` are one source. */
export function blockAddress(ip: string): string {
  return normalizeIp(ip).address;
}

/** Sliding-window failure counts and the blocks they impose, for one kind of subject. */
class FailureCounter {
  private readonly failures = new Map<string, number[]>();
  private readonly blocks = new Map<string, Block>();

  constructor(
    private readonly kind: BlockKind,
    private readonly limit: number,
    private readonly windowMs: number,
    private readonly blockMs: number,
  ) {}

  get size(): number {
    return this.blocks.size;
  }

  blockedFor(subject: string, now: number): number {
    const block = this.blocks.get(subject);
    if (block === undefined) return 0;
    const left = block.until - now;
    if (left <= 0) this.blocks.delete(subject);
    return Math.max(0, left);
  }

  /** Records a failure; the block it newly imposes, if any. */
  record(subject: string, now: number): Block | undefined {
    const recent = (this.failures.get(subject) ?? []).filter((t) => now - t < this.windowMs);
    recent.push(now);
    this.failures.delete(subject); // re-insert: keeps eviction order by last activity
    this.failures.set(subject, recent.slice(-(this.limit + 1)));
    evictOldest(this.failures, MAX_TRACKED);
    if (recent.length <= this.limit || this.blockedFor(subject, now) > 0) return undefined;
    const block: Block = { kind: this.kind, subject, since: now, until: now + this.blockMs, failures: recent.length };
    this.blocks.set(subject, block);
    evictOldest(this.blocks, MAX_TRACKED);
    return block;
  }

  /** Lifts the block and forgets the failures; the block lifted, if one was active. */
  lift(subject: string, now: number): Block | undefined {
    const active = this.blockedFor(subject, now) > 0 ? this.blocks.get(subject) : undefined;
    this.blocks.delete(subject);
    this.failures.delete(subject);
    return active;
  }

  active(now: number): Block[] {
    return [...this.blocks.keys()].filter((subject) => this.blockedFor(subject, now) > 0).map((subject) => this.blocks.get(subject) as Block);
  }
}

export class SourceGuard {
  private readonly counters: Readonly<Record<BlockKind, FailureCounter>>;
  private readonly sources = new Map<string, Set<string>>();
  private readonly now: () => number;
  private readonly imposed: Counter<'kind'> | undefined;

  constructor(options: SourceGuardOptions) {
    this.now = options.now ?? Date.now;
    const keyLimit = Math.max(0, Math.min(options.maxKeyFailures, options.maxFailures - 1));
    this.counters = {
      address: new FailureCounter('address', options.maxFailures, options.windowMs, options.blockMs),
      key: new FailureCounter('key', keyLimit, options.windowMs, options.blockMs),
    };
    if (options.registry) {
      const { counters, now } = this;
      new Gauge({
        name: 'auth_blocks_active',
        help: 'Source addresses (kind="address") and API key ids (kind="key") currently blocked after repeated authentication failures.',
        labelNames: ['kind'] as const,
        registers: [options.registry],
        collect() {
          for (const kind of KINDS) this.set({ kind }, counters[kind].active(now()).length);
        },
      });
      this.imposed = new Counter({
        name: 'auth_blocks_total',
        help: 'Blocks imposed on source addresses (kind="address") and API key ids (kind="key") after repeated authentication failures.',
        labelNames: ['kind'] as const,
        registers: [options.registry],
      });
      for (const kind of KINDS) this.imposed.inc({ kind }, 0);
    }
  }

  /** Milliseconds the source address stays blocked, or 0. */
  addressBlockedFor(ip: string): number {
    return this.counters.address.blockedFor(blockAddress(ip), this.now());
  }

  /** Milliseconds the API key id stays blocked, or 0. */
  keyBlockedFor(keyId: string): number {
    return this.counters.key.size === 0 ? 0 : this.counters.key.blockedFor(keyId, this.now());
  }

  /** True if some key id may be blocked: lets the caller skip parsing a token otherwise. */
  get anyKeyBlocked(): boolean {
    return this.counters.key.size > 0;
  }

  /**
   * Records an authentication failure from `ip`; `wrongSecretFor` is the key id when a
   * known key was presented with a wrong secret. Returns the blocks this failure imposed.
   */
  recordFailure(ip: string, wrongSecretFor?: string): Block[] {
    const now = this.now();
    const imposed: Block[] = [];
    if (wrongSecretFor !== undefined) {
      const keyBlock = this.counters.key.record(wrongSecretFor, now);
      if (keyBlock) imposed.push(keyBlock);
    }
    const addressBlock = this.counters.address.record(blockAddress(ip), now);
    if (addressBlock) imposed.push(addressBlock);
    for (const block of imposed) this.imposed?.inc({ kind: block.kind });
    return imposed;
  }

  /** Active blocks, address blocks first, each kind oldest first. */
  list(): Block[] {
    const now = this.now();
    return KINDS.flatMap((kind) => this.counters[kind].active(now));
  }

  /**
   * Lifts the block on an address or a key id, and forgets its failures. `subject` is
   * an IP address or a key id; returns the blocks lifted (none if none was active).
   */
  unblock(subject: string): Block[] {
    const now = this.now();
    const lifted = isIP(subject) !== 0 ? this.counters.address.lift(blockAddress(subject), now) : this.counters.key.lift(subject, now);
    return lifted ? [lifted] : [];
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
