// The etcd members a store talks to, one etcd3 client (one connection) each, and
// which of them to ask next.
//
// etcd3's own pool picks a random host per call and, with a circuit breaker, refuses
// hosts outright: one leader election (every member answers "no leader") opened every
// breaker at once, and a frozen member kept getting a third of the calls. Here a
// member is never refused, only ranked: members that answer come first, suspects
// after (the longest-suspected first, as the likeliest to be back). A background
// probe (a serializable read, answered by the member alone) finds a member that
// stopped answering within about PROBE_INTERVAL_MS + probe timeout, even when no call
// happened to go to it, and tells the watches on it to move.
import type { CallOptions } from '@grpc/grpc-js';
import type { IOptions } from 'etcd3';
import { EtcdClient } from './util.js';

const PROBE_INTERVAL_MS = 250;
/**
 * A member found hung stays last in line this long even when probes answer again: a
 * member whose process answers but whose reads hang (cut off from the leader) must not
 * win back a share of the calls every probe interval.
 */
const HUNG_PENALTY_MS = 2_000;
/** A key no one writes: the cheap read behind probes, ping() and revision(). */
export const PROBE_KEY = Buffer.from('/debvisor/.probe');

export class Member {
  readonly client: EtcdClient;
  /** When it last failed with no success since; undefined while it answers. */
  suspectSince: number | undefined;
  /** When it last answered. */
  lastAnswer = 0;
  private penaltyUntil = 0;
  private probing = false;
  private readonly hungListeners = new Set<() => void>();

  constructor(
    readonly endpoint: string,
    options: IOptions,
  ) {
    this.client = new EtcdClient({ ...options, hosts: [endpoint] });
  }

  get pool() {
    return this.client.connectionPool;
  }

  /** It answered a call (or, `byProbe`, a liveness probe only). */
  answered(byProbe = false): void {
    this.lastAnswer = Date.now();
    if (!byProbe || this.lastAnswer >= this.penaltyUntil) this.suspectSince = undefined;
  }

  /** A call to it failed; `hung`: it did not answer at all in time (frozen process, dead connection). */
  failed(hung: boolean): void {
    this.suspectSince ??= Date.now();
    if (!hung) return;
    this.penaltyUntil = Date.now() + HUNG_PENALTY_MS;
    for (const listener of [...this.hungListeners]) listener();
  }

  /** Calls `listener` when the member is found hung; returns the unsubscribe function. */
  onHung(listener: () => void): () => void {
    this.hungListeners.add(listener);
    return () => this.hungListeners.delete(listener);
  }

  /** One liveness probe unless one is running or the member answered very recently. */
  probe(timeoutMs: number): void {
    if (this.probing || (this.suspectSince === undefined && Date.now() - this.lastAnswer < PROBE_INTERVAL_MS)) return;
    this.probing = true;
    const options: CallOptions = { deadline: new Date(Date.now() + timeoutMs) };
    this.client.kv
      .range({ key: PROBE_KEY, count_only: true, serializable: true }, options)
      .then(
        () => {
          this.answered(true);
        },
        () => {
          this.failed(true);
        },
      )
      .finally(() => {
        this.probing = false;
      });
  }

  close(): void {
    this.hungListeners.clear();
    this.client.close();
  }
}

export class Members {
  readonly all: readonly Member[];
  private next = 0;
  private readonly prober: NodeJS.Timeout | undefined;

  constructor(endpoints: readonly string[], options: IOptions, probeTimeoutMs: number) {
    this.all = endpoints.map((endpoint) => new Member(endpoint, options));
    // One member has nowhere else to go: probing it would only add load.
    if (this.all.length > 1) {
      this.prober = setInterval(() => {
        for (const member of this.all) member.probe(probeTimeoutMs);
      }, PROBE_INTERVAL_MS);
      this.prober.unref();
    }
  }

  /**
   * The member to ask next, skipping `tried` unless every member was tried: answering
   * members in turn (spreading the load), else the longest-suspected one.
   */
  pick(tried: ReadonlySet<Member> = new Set()): Member {
    const untried = this.all.filter((m) => !tried.has(m));
    const candidates = untried.length > 0 ? untried : this.all;
    const answering = candidates.filter((m) => m.suspectSince === undefined);
    const inTurn = answering[this.next++ % Math.max(1, answering.length)];
    if (inTurn !== undefined) return inTurn;
    return candidates.reduce((best, m) => ((m.suspectSince ?? 0) < (best.suspectSince ?? 0) ? m : best));
  }

  close(): void {
    clearInterval(this.prober);
    for (const member of this.all) member.close();
  }
}
