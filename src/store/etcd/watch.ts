// One Store.watch(): its own etcd watch stream, re-created transparently from the
// next undelivered revision when the stream breaks or stalls, so the consumer
// sees every revision once, in order.
//
// Why not etcd3's Watcher: all watchers share one stream whose WatchManager
// advances its resume revision from response headers (which, for a watcher that
// is still catching up, are ahead of the events it delivered), backs off up to
// 30 s, reports a server-side cancel (compaction) only as a bare `error`, and
// throws an uncaught exception on a response for an unknown watch id.
//
// A stream whose member stops answering (no event and no answer to a progress request
// within progressTimeoutMs, or the member found hung by a call or probe) moves to
// another member from the next undelivered revision.
import type { IWatchRequest, IWatchResponse } from 'etcd3';
import { CompactedError, StoreError, StoreUnavailableError } from '../errors.js';
import type { WatchEvent } from '../store.js';
import {
  discardStream,
  errorMessage,
  invalidateAuthToken,
  isInvalidAuthToken,
  isTransient,
  mapError,
  openTrackedStream,
  rev,
  toBytes,
  type RawDuplex,
} from './util.js';
import type { Member, Members } from './members.js';

const MAX_RETRY_DELAY_MS = 1_000;
const FIRST_RETRY_DELAY_MS = 50;

export interface WatchFeedOptions {
  readonly members: Members;
  readonly key: Buffer;
  readonly rangeEnd: Buffer;
  /** First revision to deliver; 0: from the store's current revision + 1. */
  readonly fromRevision: number;
  /** How long the watch may stay unconnected before it throws StoreUnavailableError. */
  readonly requestTimeoutMs: number;
  /** Silence (no event, no progress) longer than this tears the stream down and re-creates it. */
  readonly progressTimeoutMs: number;
  readonly signal: AbortSignal | undefined;
  readonly onClose: (feed: WatchFeed) => void;
}

export class WatchFeed {
  private readonly options: WatchFeedOptions;
  private events: WatchEvent[] = [];
  private head = 0;
  private failure: Error | undefined;
  private done = false;
  private waiter: (() => void) | undefined;
  /** The next revision etcd must send: everything before it was received. */
  private nextRevision: number;
  private stream: RawDuplex<IWatchRequest, IWatchResponse> | undefined;
  private markHostFailed: ((reason: string) => void) | undefined;
  /** The member of the current stream, and the unsubscribe from its "hung" signal. */
  private member: Member | undefined;
  private unsubscribeHung: (() => void) | undefined;
  /** Bumped per stream: callbacks of an older stream are ignored. */
  private generation = 0;
  private lastActivity = Date.now();
  /** When the current unconnected period began (the feed starts unconnected). */
  private outageSince: number | undefined = Date.now();
  private attempts = 0;
  private lastError: unknown;
  private retryTimer: NodeJS.Timeout | undefined;
  private connectTimer: NodeJS.Timeout | undefined;
  private watchdog: NodeJS.Timeout | undefined;
  private readonly onAbort = (): void => {
    this.close();
  };

  constructor(options: WatchFeedOptions) {
    this.options = options;
    this.nextRevision = Math.max(0, Math.trunc(options.fromRevision));
    if (options.signal?.aborted === true) {
      this.done = true;
      return;
    }
    options.signal?.addEventListener('abort', this.onAbort, { once: true });
    void this.connect();
  }

  /** The next event; undefined once closed or aborted; throws the feed's failure after the buffered events. */
  async take(): Promise<WatchEvent | undefined> {
    for (;;) {
      if (this.done) return undefined;
      const event = this.events[this.head];
      if (event !== undefined) {
        this.head++;
        if (this.head >= 1024 && this.head * 2 >= this.events.length) {
          this.events = this.events.slice(this.head);
          this.head = 0;
        }
        return event;
      }
      if (this.failure !== undefined) throw this.failure;
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
      });
    }
  }

  /** Ends the feed (take() returns undefined). */
  close(): void {
    if (this.done) return;
    this.done = true;
    this.teardown();
    this.options.signal?.removeEventListener('abort', this.onAbort);
    this.options.onClose(this);
    this.wake();
  }

  /** Fails the feed: take() throws `error` once the buffered events are consumed. */
  fail(error: Error): void {
    if (this.done || this.failure !== undefined) return;
    this.failure = error;
    this.teardown();
    this.options.signal?.removeEventListener('abort', this.onAbort);
    this.options.onClose(this);
    this.wake();
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.();
  }

  private active(): boolean {
    return !this.done && this.failure === undefined;
  }

  private teardown(): void {
    this.generation++;
    clearTimeout(this.retryTimer);
    clearTimeout(this.connectTimer);
    clearInterval(this.watchdog);
    this.retryTimer = this.connectTimer = this.watchdog = undefined;
    this.unsubscribeHung?.();
    this.unsubscribeHung = undefined;
    if (this.stream !== undefined) discardStream(this.stream);
    this.stream = undefined;
  }

  private async connect(): Promise<void> {
    if (!this.active()) return;
    this.generation++;
    const generation = this.generation;
    this.markHostFailed = undefined;
    const budgetEnd = (this.outageSince ?? Date.now()) + this.options.requestTimeoutMs;
    this.connectTimer = setTimeout(() => {
      this.stalled(generation, `watch not established within ${this.options.requestTimeoutMs} ms`);
    }, Math.max(0, budgetEnd - Date.now()));
    let stream: RawDuplex<IWatchRequest, IWatchResponse>;
    const member = this.options.members.pick();
    this.member = member;
    try {
      const opened = await openTrackedStream<IWatchRequest, IWatchResponse>(member.pool, 'Watch', 'watch', {});
      stream = opened.stream;
      this.markHostFailed = opened.markHostFailed;
    } catch (error) {
      this.lost(generation, error);
      return;
    }
    if (generation !== this.generation) {
      discardStream(stream);
      return;
    }
    this.stream = stream;
    this.unsubscribeHung = member.onHung(() => {
      this.stalled(generation, `watch moved: ${member.endpoint} stopped answering`, false);
    });
    // Until etcd confirms the watch, silence counts as for an established one.
    this.lastActivity = Date.now();
    this.startWatchdog(generation);
    stream.on('data', (response) => {
      this.onResponse(generation, response);
    });
    stream.on('error', (error) => {
      this.lost(generation, error);
    });
    stream.on('end', () => {
      this.lost(generation, new StoreUnavailableError('watch stream ended by the server'));
    });
    stream.write({
      create_request: {
        key: this.options.key,
        range_end: this.options.rangeEnd,
        ...(this.nextRevision > 0 ? { start_revision: this.nextRevision } : {}),
        progress_notify: true,
      },
    });
  }

  private onResponse(generation: number, response: IWatchResponse): void {
    if (generation !== this.generation || !this.active()) return;
    this.lastActivity = Date.now();
    if (response.canceled) {
      const compactRevision = rev(response.compact_revision);
      if (compactRevision > 0) {
        this.fail(new CompactedError(compactRevision));
      } else if (isInvalidAuthToken(response.cancel_reason)) {
        // The stream's auth token expired: re-create the watch with a fresh one.
        this.lost(generation, new Error(response.cancel_reason));
      } else if (/no leader|leader changed/i.test(response.cancel_reason)) {
        this.lost(generation, new StoreUnavailableError(`watch canceled: ${response.cancel_reason}`));
      } else {
        this.fail(new StoreError(`etcd watch canceled: ${response.cancel_reason || 'no reason given'}`));
      }
      return;
    }
    if (response.created) {
      clearTimeout(this.connectTimer);
      this.connectTimer = undefined;
      this.outageSince = undefined;
      this.attempts = 0;
      this.lastError = undefined;
      // Watching "from now": pin the revision so a re-created stream misses nothing.
      if (this.nextRevision === 0) this.nextRevision = rev(response.header.revision) + 1;
      this.member?.answered();
    }
    if (response.events.length === 0) return;
    // etcd never splits one revision across responses (without `fragment`), so
    // every revision below nextRevision was delivered whole: skip replays.
    const floor = this.nextRevision;
    let last = floor - 1;
    for (const event of response.events) {
      const modRevision = rev(event.kv.mod_revision);
      if (modRevision < floor) continue;
      const type: string = event.type; // proto-loader gives 'PUT' / 'DELETE'
      const isDelete = type.toUpperCase() === 'DELETE';
      this.events.push({
        type: isDelete ? 'delete' : 'put',
        key: event.kv.key.toString('utf8'),
        value: isDelete ? new Uint8Array(0) : toBytes(event.kv.value),
        modRevision,
        createRevision: rev(event.kv.create_revision),
      });
      if (modRevision > last) last = modRevision;
    }
    if (last + 1 > this.nextRevision) {
      this.nextRevision = last + 1;
      this.wake();
    }
  }

  /** Asks for progress when idle, and re-creates a stream that stays silent past the timeout. */
  private startWatchdog(generation: number): void {
    clearInterval(this.watchdog);
    const timeout = this.options.progressTimeoutMs;
    const tick = Math.max(20, Math.floor(timeout / 4));
    this.watchdog = setInterval(() => {
      if (generation !== this.generation) return;
      const idle = Date.now() - this.lastActivity;
      if (idle >= timeout) {
        this.stalled(generation, `watch stalled: nothing from etcd for ${idle} ms`);
      } else if (idle >= tick) {
        try {
          this.stream?.write({ progress_request: {} });
        } catch (error) {
          this.lost(generation, error);
        }
      }
    }, tick);
    this.watchdog.unref();
  }

  /**
   * The stream (or its connection) went silent: a half-dead TCP connection looks
   * exactly like this, so have etcd3 rebuild the host's channels before re-creating.
   */
  private stalled(generation: number, reason: string, report = true): void {
    if (generation !== this.generation || !this.active()) return;
    const member = this.member;
    this.markHostFailed?.(reason);
    this.lost(generation, new StoreUnavailableError(reason));
    // After lost(): its teardown unsubscribed this feed from the member's signal.
    if (report) member?.failed(true);
  }

  /** The stream broke: reconnect with backoff while the outage budget lasts, else fail. */
  private lost(generation: number, error: unknown): void {
    if (generation !== this.generation || !this.active()) return;
    this.teardown();
    if (isInvalidAuthToken(error)) {
      if (this.member !== undefined) invalidateAuthToken(this.member.pool);
    } else if (!isTransient(error)) {
      this.fail(mapError(error, 'watch'));
      return;
    }
    this.lastError = error;
    const now = Date.now();
    this.outageSince ??= now;
    const budgetEnd = this.outageSince + this.options.requestTimeoutMs;
    if (now >= budgetEnd) {
      this.fail(
        new StoreUnavailableError(`etcd watch: no stream for ${now - this.outageSince} ms: ${errorMessage(this.lastError)}`, {
          cause: this.lastError,
        }),
      );
      return;
    }
    const delay = Math.min(FIRST_RETRY_DELAY_MS * 2 ** this.attempts, MAX_RETRY_DELAY_MS, budgetEnd - now);
    this.attempts++;
    this.retryTimer = setTimeout(() => void this.connect(), delay);
  }
}
