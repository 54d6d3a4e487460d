// Long-running operations: a record in the store (state, progress, result), the work
// running in this daemon, cooperative cancel, idempotent retries by request_id,
// recovery after a restart and retention of finished records.
import { randomUUID } from 'node:crypto';
import { status as Status } from '@grpc/grpc-js';
import { ExponentialBackoff, handleType, retry } from 'cockatiel';
import type { Logger } from 'pino';
import type { CallContext } from '../rpc/context.js';
import { InvalidArgumentError, RpcError, toStatus } from '../rpc/errors.js';
import { ConflictError, StoreUnavailableError } from '../store/errors.js';
import type { RecordCache } from '../store/cache.js';
import { LAYOUT, segment } from '../store/layout.js';
import type { OperationRecord } from '../store/records.js';
import type { Repositories } from '../store/repositories.js';
import type { QuotaManager } from '../quota/manager.js';
import { encodeResult, kindOfStored, storedKindName, type OperationKindDefinition, type ResultCase, type ResultOf, type StoredResult } from './kinds.js';
import { OperationKind as OperationKindEnum, OperationState as OperationStateEnum, type OperationKind } from '../gen/debvisor/v1/operation_pb.js';
import { EventKind } from '../gen/debvisor/v1/event_pb.js';
import { ResourceKind } from '../gen/debvisor/v1/options_pb.js';
import { causeOf, type EventCause } from '../events/cause.js';
import { NO_EVENTS, type EventSink } from '../events/types.js';

export type OperationState = OperationRecord['state'];
const TERMINAL: ReadonlySet<OperationState> = new Set(['SUCCEEDED', 'FAILED', 'CANCELLED']);
const PROGRESS_WRITE_INTERVAL_MS = 250;
/** Progress becomes at most one OPERATION_UPDATED per second per operation; state changes always do. */
const PROGRESS_EVENT_INTERVAL_MS = 1000;
const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
/** Writes of a new operation's record whose answer was lost, before the call gives up. */
const CREATE_ATTEMPTS = 5;
/** How often slots that no operation holds are looked for (sweepSlots). */
const SLOT_SWEEP_INTERVAL_MS = 60_000;

export function isTerminal(record: OperationRecord): boolean {
  return TERMINAL.has(record.state);
}

/** What a running operation's work sees: `params` as its kind's schema parsed them. */
export interface OperationHandle<P> {
  readonly id: string;
  readonly params: P;
  /** Aborted when the operation is cancelled or the daemon stops. */
  readonly signal: AbortSignal;
  /** The launching call: the work's own events (a volume created, a snapshot pruned) name it. */
  readonly cause: EventCause;
  /** True when a restarted daemon runs the work again: a killed run may have left it half-done. */
  readonly resumed: boolean;
  /**
   * Marks `step` done in the operation's record: true the first time only, across restarts too.
   * For effects that must not happen twice when the work is resumed (a quota refund): claim, then act.
   */
  claim(step: string): Promise<boolean>;
  /** Reports progress (and, for work measured in bytes, the bytes done and their total when known); writes to the store are throttled. */
  progress(percent: number, stage: string, bytes?: ProgressBytes): void;
}

export interface ProgressBytes {
  readonly done: number;
  readonly total?: number | undefined;
}

export interface OperationKindSpec<P, C extends ResultCase> {
  /** Does the work; its resolved value is stored as the result. Throw to fail. */
  readonly run: (operation: OperationHandle<P>) => Promise<ResultOf<C>>;
  /** Whether a restarted daemon resumes this kind instead of failing it. */
  readonly resumable?: boolean;
}

/** A registered kind, its types checked at registration and erased here. */
interface Runner {
  readonly resumable: boolean;
  readonly run: (operation: OperationHandle<unknown>) => Promise<StoredResult | undefined>;
}

export interface LaunchRequest<P> {
  readonly target: string;
  /** Stored as JSON: plain data only (a bigint as a decimal string). */
  readonly params: P;
  readonly requestId?: string;
  readonly resumable?: boolean;
  readonly quota?: OperationRecord['quota'];
}

export class OperationManager {
  private readonly kinds = new Map<OperationKind, Runner>();
  private readonly running = new Map<string, AbortController>();
  /** Operations between taking their slot and being run (or failing to start). */
  private readonly launching = new Set<string>();
  private slotSweep: NodeJS.Timeout | undefined;
  private retention: NodeJS.Timeout | undefined;
  /** Set by stop(): resumable work aborted from then on is left for the next start to resume. */
  private stopping = false;

  constructor(
    private readonly repos: Repositories,
    private readonly cache: RecordCache<OperationRecord>,
    private readonly quotas: QuotaManager,
    private readonly node: string,
    private readonly log: Logger,
    private readonly retentionMs: () => number,
    private readonly events: EventSink = NO_EVENTS,
  ) {
    // Cancellation may be requested through any daemon: follow the records.
    cache.subscribe((id, record) => {
      if (record?.cancel_requested) this.running.get(id)?.abort(new RpcError('CANCELLED', 'operation cancelled'));
    });
  }

  register<P, C extends ResultCase>(definition: OperationKindDefinition<P, C>, spec: OperationKindSpec<P, C>): void {
    if (this.kinds.has(definition.kind)) throw new Error(`operation kind ${storedKindName(definition.kind)} is registered twice`);
    this.kinds.set(definition.kind, {
      resumable: spec.resumable ?? false,
      run: async (operation) => {
        const params = definition.params.safeParse(operation.params);
        if (!params.success) throw new RpcError('INTERNAL', `the stored params of this ${storedKindName(definition.kind)} operation are not what its kind takes`);
        return encodeResult(await spec.run({ ...operation, params: params.data }));
      },
    });
  }

  /** Whether a runner is registered for `kind` (every kind an RPC declares needs one). */
  has(kind: OperationKind): boolean {
    return this.kinds.has(kind);
  }

  /** The runner of a stored kind; undefined for a kind this daemon does not know or run. */
  private runnerOf(record: OperationRecord): Runner | undefined {
    const kind = kindOfStored(record.kind);
    return kind === undefined ? undefined : this.kinds.get(kind);
  }

  /** After the cache has loaded: fail or resume this node's unfinished operations, and start retention. */
  async recover(): Promise<void> {
    for (const record of this.cache.values()) {
      if (record.node !== this.node || isTerminal(record)) continue;
      const spec = this.runnerOf(record);
      if (record.resumable && spec?.resumable) {
        this.log.info({ operation: record.id, kind: record.kind }, 'resuming operation after restart');
        this.execute(record, { resumed: true });
      } else {
        await this.finish(record.id, 'FAILED', { error: { code: 14, message: 'the daemon restarted while this operation was running; it did not complete' } });
      }
    }
    this.retention = setInterval(() => void this.sweep(), Math.min(600_000, Math.max(1000, this.retentionMs() / 10)));
    this.retention.unref();
    this.slotSweep = setInterval(() => {
      this.sweepSlots().catch((err: unknown) => this.log.warn({ err }, 'could not sweep operation slots'));
    }, SLOT_SWEEP_INTERVAL_MS);
    this.slotSweep.unref();
  }

  stop(): void {
    this.stopping = true;
    if (this.retention) clearInterval(this.retention);
    if (this.slotSweep) clearInterval(this.slotSweep);
    for (const controller of this.running.values()) controller.abort(new RpcError('UNAVAILABLE', 'the daemon is shutting down'));
  }

  private idempotencyKey(owner: string, requestId: string): string {
    return `${LAYOUT.idempotency}${segment(owner)}/${segment(requestId)}`;
  }

  /**
   * Writes a new operation's record (and its request_id claim) once. The record's key is a
   * fresh id, so the txn can be repeated when its answer is lost: compared on that key being
   * absent, a repeat never writes twice, and a record found under it is the lost write's.
   */
  private async createRecord(record: OperationRecord, requestId: string | undefined): Promise<{ succeeded: boolean; revision: number }> {
    const operations = this.repos.operations;
    const opKey = operations.keyOf(record.id);
    const claim = requestId ? this.idempotencyKey(record.owner, requestId) : undefined;
    for (let attempt = 1; ; attempt++) {
      let result: { succeeded: boolean; revision: number } | undefined;
      try {
        result = await operations.store.txn({
          compare: [{ key: opKey, absent: true as const }, ...(claim ? [{ key: claim, absent: true as const }] : [])],
          success: [
            { type: 'put', key: opKey, value: operations.encode(record) },
            ...(claim ? [{ type: 'put' as const, key: claim, value: new TextEncoder().encode(record.id) }] : []),
          ],
        });
        if (result.succeeded || attempt === 1) return result;
      } catch (err) {
        if (!(err instanceof StoreUnavailableError) || attempt >= CREATE_ATTEMPTS) throw err;
      }
      // An earlier attempt's answer was lost: it may have been applied, late or not.
      const written = await operations.get(record.id);
      if (written) return { succeeded: true, revision: written.modRevision };
      if (result) return result;
    }
  }

  /** Gives a slot back, retrying while the store is briefly unreachable: a slot left behind would hold quota until the daemon's lease ends. */
  private async releaseSlotOf(owner: string, id: string): Promise<void> {
    try {
      await retry(handleType(StoreUnavailableError), { maxAttempts: 5, backoff: new ExponentialBackoff({ initialDelay: 200, maxDelay: 5_000 }) }).execute(() =>
        this.quotas.releaseSlot(owner, id),
      );
    } catch (err) {
      this.log.warn({ err, operation: id }, 'could not release operation slot');
    }
  }

  /** Starts an operation, or returns the one already started with the same request_id by the same principal. */
  async launch<P, C extends ResultCase>(ctx: CallContext, definition: OperationKindDefinition<P, C>, request: LaunchRequest<P>): Promise<OperationRecord> {
    const owner = ctx.principal?.id;
    if (!owner) throw new RpcError('UNAUTHENTICATED', 'no principal');
    if (!this.kinds.has(definition.kind)) throw new RpcError('INTERNAL', `no runner for operation kind ${storedKindName(definition.kind)}`);
    // The RPC declares what it starts (operation_kind); a handler launching another kind is a bug.
    if (ctx.policy && ctx.policy.operationKind !== definition.kind) {
      throw new RpcError('INTERNAL', `${ctx.policy.path} declares operation kind ${ctx.policy.operationKind === undefined ? 'none' : storedKindName(ctx.policy.operationKind)} but launched ${storedKindName(definition.kind)}`);
    }
    if (request.requestId !== undefined && !REQUEST_ID.test(request.requestId)) {
      throw new InvalidArgumentError('request_id', 'at most 128 characters of letters, digits and . _ : -');
    }
    const existing = request.requestId ? await this.byRequestId(owner, request.requestId) : undefined;
    if (existing) return existing;

    const id = randomUUID();
    this.launching.add(id);
    try {
      return await this.launchAs(ctx, definition, request, owner, id);
    } finally {
      this.launching.delete(id);
    }
  }

  private async launchAs<P, C extends ResultCase>(ctx: CallContext, definition: OperationKindDefinition<P, C>, request: LaunchRequest<P>, owner: string, id: string): Promise<OperationRecord> {
    try {
      await this.quotas.acquireSlot(owner, id, causeOf(ctx));
    } catch (err) {
      // A slot txn whose answer was lost may have been applied: give the slot back.
      if (err instanceof StoreUnavailableError) await this.releaseSlotOf(owner, id);
      throw err;
    }
    const now = new Date().toISOString();
    const record: OperationRecord = {
      schema_version: 1,
      id,
      kind: storedKindName(definition.kind),
      owner,
      target: request.target,
      node: this.node,
      state: 'PENDING',
      progress_percent: 0,
      stage: 'queued',
      cancel_requested: false,
      resumable: request.resumable ?? false,
      created_at: now,
      updated_at: now,
      ...(request.requestId ? { request_id: request.requestId } : {}),
      ...(ctx.traceId ? { trace_id: ctx.traceId } : {}),
      ...(ctx.principal?.delegation ? { impersonated_by: ctx.principal.delegation.by.id } : {}),
      ...(request.params !== undefined ? { params: request.params } : {}),
      ...(request.quota ? { quota: request.quota } : {}),
    };
    let result: { succeeded: boolean; revision: number };
    try {
      result = await this.createRecord(record, request.requestId);
    } catch (err) {
      await this.releaseSlotOf(owner, id);
      throw err;
    }
    if (!result.succeeded) {
      // Another daemon won the race for this request_id: return its operation.
      await this.quotas.releaseSlot(owner, id);
      const winner = request.requestId ? await this.byRequestId(owner, request.requestId) : undefined;
      if (winner) return winner;
      throw new RpcError('ABORTED', 'concurrent retry of the same request; retry');
    }
    this.cache.remember(id, record, result.revision);
    this.publish(EventKind.OPERATION_UPDATED, record);
    this.execute(record, { resumed: false });
    return record;
  }

  private async byRequestId(owner: string, requestId: string): Promise<OperationRecord | undefined> {
    const kv = await this.repos.operations.store.get(this.idempotencyKey(owner, requestId));
    if (!kv) return undefined;
    return (await this.repos.operations.get(new TextDecoder().decode(kv.value)))?.value;
  }

  private execute(record: OperationRecord, { resumed }: { resumed: boolean }): void {
    const spec = this.runnerOf(record);
    const controller = new AbortController();
    // Cancelled before a restart: the resumed work still runs, aborted, so it can undo what the killed run left.
    if (record.cancel_requested) controller.abort(new RpcError('CANCELLED', 'operation cancelled'));
    this.running.set(record.id, controller);
    let lastWrite = 0;
    let lastEvent = 0;
    let pending: { percent: number; stage: string; bytes?: ProgressBytes | undefined } | undefined;
    /** Writes the last progress reported after a throttled report, so a stalled operation still shows where it stopped. */
    let trailing: NodeJS.Timeout | undefined;
    const writeProgress = () => {
      trailing = undefined;
      const update = pending;
      if (!update) return;
      lastWrite = Date.now();
      const byteFields = update.bytes ? { progress_bytes: update.bytes.done, ...(update.bytes.total !== undefined ? { total_bytes: update.bytes.total } : {}) } : {};
      void this.update(record.id, (current) => (isTerminal(current) ? undefined : { ...current, progress_percent: update.percent, stage: update.stage, ...byteFields })).then((written) => {
        if (!written || Date.now() - lastEvent < PROGRESS_EVENT_INTERVAL_MS) return;
        lastEvent = Date.now();
        this.publish(EventKind.OPERATION_UPDATED, written);
      });
    };
    const handle: OperationHandle<unknown> = {
      id: record.id,
      params: record.params,
      signal: controller.signal,
      cause: this.causeOf(record),
      resumed,
      claim: (step) => this.claim(record.id, step),
      progress: (percent, stage, bytes) => {
        pending = { percent: Math.max(0, Math.min(100, Math.round(percent))), stage, bytes };
        const wait = PROGRESS_WRITE_INTERVAL_MS - (Date.now() - lastWrite);
        if (wait <= 0) writeProgress();
        else if (!trailing) {
          trailing = setTimeout(writeProgress, wait);
          trailing.unref();
        }
      },
    };
    void (async () => {
      try {
        if (!spec) throw new RpcError('INTERNAL', `this daemon has no runner for operation kind ${JSON.stringify(record.kind)}`);
        const running = await this.update(record.id, (current) => (isTerminal(current) ? undefined : { ...current, state: 'RUNNING', stage: current.stage === 'queued' ? 'running' : current.stage }));
        if (running) {
          lastEvent = Date.now();
          this.publish(EventKind.OPERATION_UPDATED, running);
        }
        const result = await spec.run(handle);
        // The last byte count reported may not have been written yet (progress writes are throttled).
        await this.finish(record.id, 'SUCCEEDED', { result, progress: 100, ...(pending?.bytes ? { bytes: pending.bytes } : {}) });
      } catch (err) {
        // A graceful stop is a restart like a crash: resumable work stays unfinished, and recover() resumes it.
        if (this.stopping && controller.signal.aborted && record.resumable && spec?.resumable) {
          this.log.info({ operation: record.id, kind: record.kind }, 'operation left for the next start to resume');
          return;
        }
        const cancelled = controller.signal.aborted && controller.signal.reason instanceof RpcError && controller.signal.reason.code === 'CANCELLED';
        const status = toStatus(cancelled ? controller.signal.reason : err, record.id);
        if (status.code === Status.INTERNAL) this.log.error({ err, operation: record.id, kind: record.kind }, 'operation failed with an internal error');
        await this.finish(record.id, cancelled ? 'CANCELLED' : 'FAILED', {
          error: { code: status.code, message: status.details.replace(/ \(trace_id=[^)]*\)$/, '') },
        });
      } finally {
        clearTimeout(trailing);
        this.running.delete(record.id);
        await this.releaseSlotOf(record.owner, record.id);
      }
    })();
  }

  /** OperationHandle.claim: adds `step` to the record's claimed steps unless it is there; a store failure throws (nothing claimed, or unknown: the caller does not act). */
  private async claim(id: string, step: string): Promise<boolean> {
    const outcome = { claimed: false };
    const written = await this.repos.operations.mutate(id, (current) => {
      outcome.claimed = current !== undefined && !(current.claimed_steps ?? []).includes(step);
      return outcome.claimed && current ? { ...current, claimed_steps: [...(current.claimed_steps ?? []), step], updated_at: new Date().toISOString() } : undefined;
    });
    if (outcome.claimed && written) this.cache.remember(id, written.value, written.modRevision);
    return outcome.claimed;
  }

  /** The record as written; undefined when `change` left it as it was (mutate would hand back the unchanged record). */
  private async update(id: string, change: (current: OperationRecord) => OperationRecord | undefined): Promise<OperationRecord | undefined> {
    try {
      const outcome = { changed: false };
      const written = await this.repos.operations.mutate(id, (current) => {
        const next = current && change(current);
        outcome.changed = next !== undefined;
        return next && { ...next, updated_at: new Date().toISOString() };
      });
      if (!written || !outcome.changed) return undefined;
      this.cache.remember(id, written.value, written.modRevision);
      return written.value;
    } catch (err) {
      if (!(err instanceof ConflictError)) this.log.warn({ err, operation: id }, 'could not update operation record');
      return undefined;
    }
  }

  private async finish(id: string, state: 'SUCCEEDED' | 'FAILED' | 'CANCELLED', outcome: { result?: StoredResult | undefined; error?: { code: number; message: string }; progress?: number; bytes?: ProgressBytes }): Promise<void> {
    const done = await this.update(id, (current) =>
      isTerminal(current)
        ? undefined
        : {
            ...current,
            state,
            stage: state.toLowerCase(),
            done_at: new Date().toISOString(),
            ...(outcome.progress !== undefined ? { progress_percent: outcome.progress } : {}),
            ...(outcome.bytes ? { progress_bytes: outcome.bytes.done, ...(outcome.bytes.total !== undefined ? { total_bytes: outcome.bytes.total } : {}) } : {}),
            ...(outcome.result !== undefined ? { result: outcome.result } : {}),
            ...(outcome.error ? { error: outcome.error } : {}),
          },
    );
    // Only the write that made the record terminal publishes: FINISHED once, however finish() is reached.
    if (done) this.publish(EventKind.OPERATION_FINISHED, done);
    // Work that failed or was cancelled gives its quota back.
    if (done?.quota && state !== 'SUCCEEDED') {
      await this.quotas.release(done.owner, done.quota.resource, done.quota.amount).catch((err: unknown) => this.log.warn({ err, operation: id }, 'could not release quota'));
    }
  }

  private causeOf(record: OperationRecord): EventCause {
    return { actor: { principal: record.owner, ...(record.impersonated_by ? { impersonatedBy: record.impersonated_by } : {}) }, traceId: record.trace_id ?? '' };
  }

  /** Called only by this daemon, for the operations it runs, after the record was written. */
  private publish(kind: EventKind.OPERATION_UPDATED | EventKind.OPERATION_FINISHED, record: OperationRecord): void {
    const cause = this.causeOf(record);
    this.events.publish({
      kind,
      resource: { kind: ResourceKind.OPERATION, node: record.node, name: record.id, owner: record.owner },
      actor: cause.actor,
      traceId: cause.traceId,
      payload: {
        case: 'operation',
        value: {
          operationKind: kindOfStored(record.kind) ?? OperationKindEnum.UNSPECIFIED,
          state: OperationStateEnum[record.state],
          progressPercent: record.progress_percent,
          message: record.stage,
          errorCode: record.error ? (Status[record.error.code] ?? String(record.error.code)) : '',
        },
      },
    });
  }

  // ---- reads ------------------------------------------------------------------------

  get(id: string): OperationRecord | undefined {
    return this.cache.get(id);
  }

  list(filter: { owner?: string; state?: OperationState; kind?: OperationKind }): OperationRecord[] {
    const kind = filter.kind === undefined ? undefined : storedKindName(filter.kind);
    return this.cache
      .values()
      .filter((op) => (filter.owner === undefined || op.owner === filter.owner) && (filter.state === undefined || op.state === filter.state) && (kind === undefined || op.kind === kind))
      .sort((a, b) => (a.created_at === b.created_at ? a.id.localeCompare(b.id) : a.created_at < b.created_at ? 1 : -1));
  }

  /** Resolves with the record once it is terminal, or as it is when `timeoutMs` passes. */
  async wait(id: string, timeoutMs: number, signal: AbortSignal): Promise<OperationRecord | undefined> {
    const iterator = this.changes(id, AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]));
    let last = this.get(id);
    for await (const record of iterator) last = record;
    return last;
  }

  /** The record now and after every change, ending when it is terminal (or gone, or the signal aborts). */
  async *changes(id: string, signal: AbortSignal): AsyncGenerator<OperationRecord> {
    const queue: (OperationRecord | undefined)[] = [];
    let wake: (() => void) | undefined;
    const unsubscribe = this.cache.subscribe((changed, record) => {
      if (changed !== id) return;
      queue.push(record);
      wake?.();
    });
    const onAbort = () => wake?.();
    signal.addEventListener('abort', onAbort);
    try {
      let current = this.get(id);
      if (!current) return;
      yield current;
      while (!isTerminal(current) && !signal.aborted) {
        if (queue.length === 0) await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
        while (queue.length > 0) {
          const next = queue.shift();
          if (!next) return;
          if (next.updated_at === current.updated_at && next.state === current.state && next.progress_percent === current.progress_percent) continue;
          current = next;
          yield current;
        }
      }
    } finally {
      unsubscribe();
      signal.removeEventListener('abort', onAbort);
    }
  }

  /** Cooperative: marks the record; the daemon running it aborts the work (and its host command). */
  async cancel(id: string): Promise<OperationRecord | undefined> {
    const updated = await this.update(id, (current) => (isTerminal(current) || current.cancel_requested ? undefined : { ...current, cancel_requested: true }));
    return updated ?? this.get(id);
  }

  /** Deletes finished records older than the retention period, with their request_id keys. */
  /**
   * Drops the slots on this daemon's lease whose operation is neither starting nor running
   * here, and whose record is finished or was never written: left by a write whose answer was
   * lost and that was applied after the launch gave up. The lease frees them only when the
   * daemon dies. Returns how many it dropped.
   */
  async sweepSlots(): Promise<number> {
    let dropped = 0;
    for (const slot of await this.quotas.slotsOfThisDaemon()) {
      if (this.running.has(slot.operationId) || this.launching.has(slot.operationId)) continue;
      const record = this.cache.get(slot.operationId) ?? (await this.repos.operations.get(slot.operationId))?.value;
      if (record && !isTerminal(record)) continue;
      // Taken again since the listing: still starting, so still needed.
      if (this.launching.has(slot.operationId) || this.running.has(slot.operationId)) continue;
      await this.quotas.dropSlot(slot.key);
      this.log.warn({ operation: slot.operationId }, 'dropped an operation slot that no operation held');
      dropped++;
    }
    return dropped;
  }

  async sweep(now = Date.now()): Promise<number> {
    let removed = 0;
    for (const record of this.cache.values()) {
      if (!isTerminal(record) || !record.done_at || now - Date.parse(record.done_at) < this.retentionMs()) continue;
      await this.repos.operations.delete(record.id);
      if (record.request_id) await this.repos.operations.store.delete(this.idempotencyKey(record.owner, record.request_id));
      removed++;
    }
    return removed;
  }
}

