// Quotas per principal: counted resources (snapshots, storage_gb, vms, ...) change by
// compare-and-swap on the usage record, and concurrent operations hold slot keys
// attached to the daemon's lease. Both stay exact with several daemons on one etcd.
import type { Config } from '../config/schema.js';
import { RpcError } from '../rpc/errors.js';
import { ConflictError, StoreUnavailableError } from '../store/errors.js';
import { LAYOUT, segment } from '../store/layout.js';
import { RecomputeGate } from './recompute-gate.js';
import type { QuotaRecord } from '../store/records.js';
import { countedQuotaResources, quotaResources, type CountedResource, type QuotaResourceName } from '../rpc/quota-dimensions.js';
import type { Repositories } from '../store/repositories.js';
import type { KeyValue, LeaseId, Store } from '../store/store.js';
import { EventKind } from '../gen/debvisor/v1/event_pb.js';
import { ResourceKind } from '../gen/debvisor/v1/options_pb.js';
import type { EventCause } from '../events/cause.js';
import { NO_EVENTS, type EventSink } from '../events/types.js';

export type { CountedResource, QuotaResourceName };

export interface QuotaView {
  readonly resource: QuotaResourceName;
  readonly limit: number;
  readonly used: number;
  readonly unlimited: boolean;
}

/**
 * Counts what a principal really holds of some resources (e.g. its volumes' GiB and its snapshots on
 * the storage backends, from one listing). Aborts with the call when `signal` does. `undefined`:
 * it cannot count now (e.g. the VM inventory is not loaded); what it counts is then left as it is.
 */
export type UsageSource = (principal: string, options: { signal?: AbortSignal }) => Promise<Partial<Record<CountedResource, number>> | undefined>;

const MAX_ATTEMPTS = 64;

/** A refusal for a quota, with what QUOTA_EXCEEDED reports. */
class QuotaExceededError extends RpcError {
  constructor(
    readonly principal: string,
    readonly resource: QuotaResourceName,
    readonly limit: number,
    readonly used: number,
    readonly requested: number,
  ) {
    super('RESOURCE_EXHAUSTED', `quota exceeded: ${resource} limit ${limit}, used ${used}, requested ${requested}`, {
      details: { quotaViolations: [{ subject: `principal:${principal}/${resource}`, description: `limit ${limit}, used ${used}, requested ${requested}` }] },
    });
  }
}

export class QuotaManager {
  private readonly sources: { resources: readonly CountedResource[]; count: UsageSource }[] = [];
  private readonly recomputeGate = new RecomputeGate(() => this.settings().quota.recompute_min_interval_seconds * 1000);

  constructor(
    private readonly store: Store,
    private readonly repos: Repositories,
    private readonly settings: () => Config,
    /** The daemon's lease: slots of a daemon that dies are freed when it expires. */
    private readonly lease: () => Promise<LeaseId>,
    private readonly events: EventSink = NO_EVENTS,
  ) {}

  /** A call refused for a quota: QUOTA_EXCEEDED about the principal whose quota it is, visible to it (GetQuota is owner-scoped). */
  private refused(err: unknown, cause: EventCause | undefined): void {
    if (!(err instanceof QuotaExceededError) || !cause) return;
    this.events.publish({
      kind: EventKind.QUOTA_EXCEEDED,
      resource: { kind: ResourceKind.PRINCIPAL, name: err.principal, owner: err.principal },
      actor: cause.actor,
      traceId: cause.traceId,
      payload: { case: 'quota', value: { dimension: err.resource, used: BigInt(err.used), requested: BigInt(err.requested), limit: BigInt(err.limit) } },
    });
  }

  private limitOf(record: QuotaRecord | undefined, resource: QuotaRecord['resource']): number {
    if (record?.unlimited) return Number.POSITIVE_INFINITY;
    return record?.limit ?? this.settings().quota.defaults[resource];
  }

  /**
   * Takes `amount` units or throws RESOURCE_EXHAUSTED with google.rpc.QuotaFailure. Atomic across daemons.
   * `cause`: the call a refusal refuses, published as QUOTA_EXCEEDED; without one (a charge that refuses no call) nothing is.
   */
  async consume(principal: string, resource: CountedResource, amount: number, cause?: EventCause): Promise<number> {
    try {
      const saved = await this.repos.quotas.mutate(
        [principal, resource],
        (current) => {
          const used = current?.used ?? 0;
          const limit = this.limitOf(current, resource);
          if (used + amount > limit) throw new QuotaExceededError(principal, resource, limit, used, amount);
          return { ...(current ?? { schema_version: 1 as const, principal, resource }), used: used + amount, updated_at: new Date().toISOString() };
        },
        MAX_ATTEMPTS,
      );
      return saved?.value.used ?? amount;
    } catch (err) {
      if (err instanceof ConflictError) throw new RpcError('ABORTED', `quota ${resource} of ${principal} is under heavy contention; retry`, { cause: err });
      this.refused(err, cause);
      throw err;
    }
  }

  async usage(principal: string, resource: CountedResource): Promise<number> {
    return (await this.repos.quotas.get([principal, resource]))?.value.used ?? 0;
  }

  /** Gives units back (on delete, or when the work that took them failed). Never below zero. */
  async release(principal: string, resource: CountedResource, amount: number): Promise<void> {
    await this.repos.quotas.mutate([principal, resource], (current) =>
      current ? { ...current, used: Math.max(0, current.used - amount), updated_at: new Date().toISOString() } : undefined,
    );
  }

  private slotDir(principal: string): string {
    return `${LAYOUT.slots}${segment(principal)}/`;
  }

  /**
   * Takes a concurrent-operation slot. Slots are keys on the daemon's lease; every
   * acquire bumps a marker key, and the compare on that marker makes count-then-add
   * atomic across daemons. Expired slots only lower the count, so they never break it.
   * The marker is read at the very revision the slots were listed at: read separately,
   * an acquire committing between the two reads would be missing from the count while
   * the compare still passed.
   */
  async acquireSlot(principal: string, operationId: string, cause?: EventCause): Promise<void> {
    const dir = this.slotDir(principal);
    const marker = `${dir.slice(0, -1)}.marker`;
    const slotKey = dir + segment(operationId);
    let outcomeUnknown: StoreUnavailableError | undefined;
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const [slots, record, lease] = await Promise.all([this.store.list(dir), this.repos.quotas.get([principal, 'concurrent_operations']), this.lease()]);
      // A txn whose answer was lost may have been applied: then the slot is ours already. If it
      // is missing, that txn can no longer apply, since it compared the marker this one moves.
      if (outcomeUnknown && slots.kvs.some((kv) => kv.key === slotKey)) return;
      const markerKv = await this.keyAt(marker, slots.revision);
      const limit = this.limitOf(record?.value, 'concurrent_operations');
      if (slots.kvs.length + 1 > limit) {
        const refusal = new QuotaExceededError(principal, 'concurrent_operations', limit, slots.kvs.length, 1);
        this.refused(refusal, cause);
        throw refusal;
      }
      try {
        const result = await this.store.txn({
          compare: markerKv ? [{ key: marker, modRevision: markerKv.modRevision }] : [{ key: marker, absent: true }],
          success: [
            { type: 'put', key: marker, value: new TextEncoder().encode(operationId) },
            { type: 'put', key: slotKey, value: new TextEncoder().encode(new Date().toISOString()), lease },
          ],
        });
        if (result.succeeded) return;
      } catch (err) {
        // The store gives up on its own at the call's deadline, so this loop cannot outlive it.
        if (!(err instanceof StoreUnavailableError)) throw err;
        outcomeUnknown = err;
      }
    }
    if (outcomeUnknown) throw outcomeUnknown;
    throw new RpcError('ABORTED', `concurrent operations of ${principal} are under heavy contention; retry`);
  }

  /** One key as it was at `revision` (the marker sorts first among keys it prefixes). */
  private async keyAt(key: string, revision: number): Promise<KeyValue | undefined> {
    const [first] = (await this.store.list(key, { revision, limit: 1 })).kvs;
    return first?.key === key ? first : undefined;
  }

  /** The slots held on this daemon's lease: each slot's key and its operation's id. */
  async slotsOfThisDaemon(): Promise<{ key: string; operationId: string }[]> {
    const lease = await this.lease();
    const { kvs } = await this.store.list(LAYOUT.slots);
    return kvs.flatMap((kv) => {
      const [principal, operation] = kv.key.slice(LAYOUT.slots.length).split('/');
      return kv.lease === lease && principal !== undefined && operation !== undefined ? [{ key: kv.key, operationId: decodeURIComponent(operation) }] : [];
    });
  }

  /** Deletes a slot by its key (see slotsOfThisDaemon). */
  async dropSlot(key: string): Promise<void> {
    await this.store.delete(key);
  }

  async releaseSlot(principal: string, operationId: string): Promise<void> {
    await this.store.delete(this.slotDir(principal) + segment(operationId));
  }

  /**
   * Backends register how to count what exists, so usage can be repaired (RecomputeQuota). Several
   * may count one resource (VM snapshots and volume snapshots are both `snapshots`): they are summed.
   */
  registerUsageSource(resources: readonly CountedResource[], count: UsageSource): void {
    this.sources.push({ resources, count });
  }

  /** Limits and usage; concurrent operations are counted live from the slots. */
  async view(principal: string): Promise<QuotaView[]> {
    return Promise.all(
      quotaResources.map(async (resource): Promise<QuotaView> => {
        const record = (await this.repos.quotas.get([principal, resource]))?.value;
        const used = resource === 'concurrent_operations' ? (await this.store.list(this.slotDir(principal))).kvs.length : (record?.used ?? 0);
        return { resource, limit: record?.unlimited ? 0 : this.limitOf(record, resource), used, unlimited: record?.unlimited ?? false };
      }),
    );
  }

  /**
   * Admin repair: recounts counted resources from their sources, each asked once. Those without a source
   * stay as they are. Rate-limited (RecomputeGate); the sources' host commands end with `signal`.
   */
  async recompute(principal: string, options: { signal?: AbortSignal } = {}): Promise<{ before: QuotaView[]; after: QuotaView[]; notRecounted: QuotaResourceName[] }> {
    return this.recomputeGate.run(async () => {
      const before = await this.view(principal);
      const counts = await Promise.all(this.sources.map(async ({ resources, count }) => ({ resources, counted: await count(principal, options) })));
      const notRecounted: QuotaResourceName[] = [];
      for (const resource of countedQuotaResources) {
        const counting = counts.filter(({ resources }) => resources.includes(resource));
        // A partial sum would undercount: every source of a resource must have answered.
        if (counting.length === 0 || counting.some(({ counted }) => counted === undefined)) {
          notRecounted.push(resource);
          continue;
        }
        const actual = counting.reduce((sum, { counted }) => sum + (counted?.[resource] ?? 0), 0);
        await this.repos.quotas.mutate([principal, resource], (current) => ({
          ...(current ?? { schema_version: 1 as const, principal, resource }),
          used: actual,
          updated_at: new Date().toISOString(),
        }));
      }
      return { before, after: await this.view(principal), notRecounted };
    });
  }
}
