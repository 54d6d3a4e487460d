// An EventSink that keeps what sources publish, and lets a test wait for an event (no polling).
import type { EventKind } from '../../src/gen/debvisor/v1/event_pb.js';
import type { EventSink, NewEvent } from '../../src/events/types.js';

export class RecordingSink implements EventSink {
  readonly events: NewEvent[] = [];
  private readonly waiters: { match: (event: NewEvent) => boolean; resolve: (event: NewEvent) => void }[] = [];

  publish(event: NewEvent): void {
    this.events.push(event);
    for (const waiter of this.waiters.filter((w) => w.match(event))) {
      this.waiters.splice(this.waiters.indexOf(waiter), 1);
      waiter.resolve(event);
    }
  }

  of(kind: EventKind): NewEvent[] {
    return this.events.filter((event) => event.kind === kind);
  }

  /** The first event, published already or later, that `match` accepts. */
  next(match: (event: NewEvent) => boolean): Promise<NewEvent> {
    const found = this.events.find(match);
    if (found) return Promise.resolve(found);
    return new Promise((resolve) => this.waiters.push({ match, resolve }));
  }

  clear(): void {
    this.events.length = 0;
  }
}
