// In-process fan-out of committed events to live watchers. Each subscriber buffers
// without bound (a slow consumer costs memory, never a gap).
import type { WatchEvent } from '../store.js';

export class Subscription {
  private queue: WatchEvent[] = [];
  private head = 0;
  private wake: (() => void) | undefined;
  ended = false;

  constructor(readonly prefix: string) {}

  push(event: WatchEvent): void {
    this.queue.push(event);
  }

  /** The next buffered event, if any. */
  shift(): WatchEvent | undefined {
    if (this.head >= this.queue.length) return undefined;
    const event = this.queue[this.head++];
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    return event;
  }

  /** Resolves when events arrive or the subscription is poked (abort, close). */
  wait(): Promise<void> {
    if (this.head < this.queue.length || this.ended) return Promise.resolve();
    return new Promise((resolve) => (this.wake = resolve));
  }

  poke(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}

export class WatchHub {
  private readonly subscriptions = new Set<Subscription>();

  subscribe(prefix: string): Subscription {
    const subscription = new Subscription(prefix);
    this.subscriptions.add(subscription);
    return subscription;
  }

  unsubscribe(subscription: Subscription): void {
    this.subscriptions.delete(subscription);
  }

  publish(events: readonly WatchEvent[]): void {
    for (const subscription of this.subscriptions) {
      let delivered = false;
      for (const event of events) {
        if (event.key.startsWith(subscription.prefix)) {
          subscription.push(event);
          delivered = true;
        }
      }
      if (delivered) subscription.poke();
    }
  }

  /** Ends every subscription (the store is closing). */
  endAll(): void {
    for (const subscription of this.subscriptions) {
      subscription.ended = true;
      subscription.poke();
    }
    this.subscriptions.clear();
  }
}
