// NODE_ONLINE and NODE_OFFLINE, exactly once per transition however many daemons share the store.
//
// A node is online while its liveness key exists (registry.ts). Each online period is named by
// that key's createRevision C, which every daemon reads alike; its two transitions rank 2C
// (online) and 2C+1 (offline), so a later transition always ranks higher. Every daemon follows
// the liveness keys, and publishes a transition only after claiming it: a compare-and-swap of
// /debvisor/liveness/transitions/<host> from a lower rank to the transition's. One swap per
// transition succeeds, so one daemon publishes it; a daemon finding that rank or a higher one
// stored leaves it (published already, or overtaken by a later transition: never out of order).
//
// A store transaction rather than a leader: no election to lose events in, and a transition
// any live daemon sees is published even while others restart. On (re)start a daemon publishes
// only transitions no daemon claimed (they happened while every daemon was down); a host with no
// claim at all is recorded silently, so the first start of this code makes no storm either.
import type { Logger } from 'pino';
import { EventKind } from '../gen/debvisor/v1/event_pb.js';
import { ResourceKind } from '../gen/debvisor/v1/options_pb.js';
import type { EventSink } from '../events/types.js';
import { runInformer } from '../store/informer.js';
import { LAYOUT, segment } from '../store/layout.js';
import type { Repositories } from '../store/repositories.js';
import type { KeyValue, Store } from '../store/store.js';

const MAX_CLAIM_ATTEMPTS = 16;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

export type Transition = 'online' | 'offline';

export interface NodeTransitionsOptions {
  /** Each transition this daemon handled: `published` when it won the claim (for metrics and tests). */
  readonly onDecided?: (decision: { host: string; transition: Transition; published: boolean }) => void;
}

function rankOf(period: number, transition: Transition): number {
  return 2 * period + (transition === 'offline' ? 1 : 0);
}

function storedRank(kv: KeyValue | undefined): number | undefined {
  if (!kv) return undefined;
  const rank = Number(decoder.decode(kv.value));
  return Number.isSafeInteger(rank) ? rank : -1;
}

function hostOf(key: string, prefix: string): string {
  return decodeURIComponent(key.slice(prefix.length));
}

export class NodeTransitions {
  /** Live hosts as this daemon last saw them: hostname → createRevision of the liveness key. */
  private live = new Map<string, number>();
  private queue: Promise<void> = Promise.resolve();
  private markSynced: () => void = () => undefined;
  /** Settles once the first listing's unclaimed transitions are handled. */
  readonly synced = new Promise<void>((resolve) => (this.markSynced = resolve));

  constructor(
    private readonly store: Store,
    private readonly repos: Pick<Repositories, 'nodes'>,
    private readonly events: EventSink,
    private readonly log: Logger,
    private readonly options: NodeTransitionsOptions = {},
  ) {}

  /** Follows the liveness keys until `signal` aborts; resolves once the claims queued so far are settled. */
  async run(signal: AbortSignal): Promise<void> {
    let first = true;
    await runInformer(
      this.store,
      LAYOUT.nodeLiveness,
      {
        onReset: (kvs, revision) => {
          this.live = new Map(kvs.map((kv) => [hostOf(kv.key, LAYOUT.nodeLiveness), kv.createRevision]));
          const seed = first;
          first = false;
          const live = new Map(this.live);
          this.enqueue(() => this.catchUp(live, revision, seed).finally(() => this.markSynced()));
        },
        onEvent: (event) => {
          const host = hostOf(event.key, LAYOUT.nodeLiveness);
          if (event.type === 'delete') {
            const period = this.live.get(host);
            this.live.delete(host);
            if (period !== undefined) this.enqueue(() => this.claim(host, period, 'offline'));
          } else if (event.createRevision === event.modRevision) {
            // Created, not renewed: a new online period.
            this.live.set(host, event.createRevision);
            this.enqueue(() => this.claim(host, event.createRevision, 'online'));
          }
        },
        onRecover: (err) => this.log.warn({ err: err.message }, 'node transitions: store problem, resyncing'),
      },
      { signal },
    );
    await this.queue;
  }

  /** Claims run one at a time, in the order the store reported the changes. */
  private enqueue(work: () => Promise<void>): void {
    this.queue = this.queue.then(work).catch((err: unknown) => this.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'node transitions: could not claim a transition'));
  }

  /** After a listing: the transitions unclaimed as of that listing's revision (claims read at the same revision). */
  private async catchUp(live: ReadonlyMap<string, number>, revision: number, seed: boolean): Promise<void> {
    const claims = await this.store.list(LAYOUT.nodeTransitions, { revision });
    const ranks = new Map(claims.kvs.map((kv) => [hostOf(kv.key, LAYOUT.nodeTransitions), storedRank(kv) ?? -1]));
    for (const host of new Set([...live.keys(), ...ranks.keys()])) {
      const period = live.get(host);
      const rank = ranks.get(host);
      if (rank === undefined) {
        if (period !== undefined) await this.claim(host, period, 'online', { silently: seed });
        continue;
      }
      // The stored claim is an online period that has ended since (offline, or replaced by a newer one).
      if (rank % 2 === 0 && period !== rank / 2) await this.claim(host, rank / 2, 'offline');
      if (period !== undefined) await this.claim(host, period, 'online');
    }
  }

  private async claim(host: string, period: number, transition: Transition, options: { silently?: boolean } = {}): Promise<void> {
    const rank = rankOf(period, transition);
    const key = LAYOUT.nodeTransitions + segment(host);
    for (let attempt = 0; attempt < MAX_CLAIM_ATTEMPTS; attempt++) {
      const current = await this.store.get(key);
      if ((storedRank(current) ?? -1) >= rank) {
        this.options.onDecided?.({ host, transition, published: false });
        return;
      }
      const result = await this.store.txn({
        compare: [current ? { key, modRevision: current.modRevision } : { key, absent: true }],
        success: [{ type: 'put', key, value: encoder.encode(String(rank)) }],
      });
      if (!result.succeeded) continue;
      if (!options.silently) await this.publish(host, transition);
      this.options.onDecided?.({ host, transition, published: !options.silently });
      return;
    }
    this.log.warn({ host, transition }, 'node transitions: claim kept conflicting; event not published');
  }

  private async publish(host: string, transition: Transition): Promise<void> {
    const node = (await this.repos.nodes.get(host).catch(() => undefined))?.value;
    this.events.publish({
      kind: transition === 'online' ? EventKind.NODE_ONLINE : EventKind.NODE_OFFLINE,
      resource: { kind: ResourceKind.NODE, node: host, name: host },
      payload: { case: 'node', value: { ip: node?.ip ?? '', version: node?.version ?? '' } },
    });
  }
}
