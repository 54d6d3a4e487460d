// The event journal on both store backends: coalescing, reading by cursor, resume across a
// restart, delivery between two daemons' journals, pruning with the shared floor, and a
// watch that fails mid-way (re-listed, with no event lost or repeated).
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { EventKind, type Event } from '../../src/gen/debvisor/v1/event_pb.js';
import { ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { EventJournal, type JournalSettings } from '../../src/events/journal.js';
import { END, decodeToken, encodeToken, type Position } from '../../src/events/position.js';
import { CompactedError } from '../../src/store/errors.js';
import { LAYOUT } from '../../src/store/layout.js';
import type { Store, WatchOptions } from '../../src/store/store.js';
import { HARNESSES, type StoreHarness } from '../support/store-harness.js';

const WAIT = { timeout: 20_000, interval: 20 };
const SETTINGS: JournalSettings = { batchMs: 20, retainEvents: 10_000, retainSeconds: 900 };

function vmEvent(name: string): Parameters<EventJournal['publish']>[0] {
  return { kind: EventKind.VM_STATE_CHANGED, resource: { kind: ResourceKind.VM, node: 'n1', name } };
}

const names = (events: readonly { event: Event }[]) => events.map(({ event }) => event.resource?.name);

/** Every event after `cursor` the journal holds now. */
function readAll(journal: EventJournal, cursor: Position): { events: { event: Event; position: Position }[]; cursor: Position } {
  const events: { event: Event; position: Position }[] = [];
  for (;;) {
    const page = journal.read(cursor, 100);
    if (page === 'expired') throw new Error('expired');
    events.push(...page.events);
    cursor = page.cursor;
    if (page.events.length < 100) return { events, cursor };
  }
}

describe('resume tokens', () => {
  it('round-trip positions and refuse what is not one', () => {
    for (const position of [{ revision: 7, index: 0 }, { revision: 123456, index: 41 }, { revision: 9, index: END }]) {
      expect(decodeToken(encodeToken(position))).toEqual(position);
    }
    for (const bad of ['', 'x', 'e1.', 'e1.!!', `e1.${Buffer.from('1.2.3').toString('base64url')}`, `e1.${Buffer.from('-1').toString('base64url')}`]) {
      expect(decodeToken(bad)).toBeUndefined();
    }
  });
});

describe.each(HARNESSES)('event journal on the %s store', (_name, makeHarness) => {
  let harness: StoreHarness;
  const stores: Store[] = [];
  const journals: EventJournal[] = [];
  const problems: string[] = [];

  beforeAll(async () => {
    harness = await makeHarness();
  });
  afterEach(async () => {
    for (const journal of journals.splice(0)) await journal.stop();
    for (const store of stores.splice(0)) await store.close();
  });
  afterAll(() => harness.cleanup());

  async function open(): Promise<Store> {
    const store = await harness.open();
    stores.push(store);
    await store.delete(LAYOUT.events, { prefix: true });
    return store;
  }

  /** Another client on the same data (the embedded store admits one per process: share it). */
  async function secondClient(store: Store): Promise<Store> {
    if (harness.name === 'embedded') return store;
    const other = await harness.open();
    stores.push(other);
    return other;
  }

  async function journalOn(store: Store, node: string, settings: JournalSettings = SETTINGS): Promise<EventJournal> {
    const journal = new EventJournal(store, node, () => settings, { onProblem: (err, what) => problems.push(`${what}: ${String(err)}`) });
    journals.push(journal);
    await journal.start();
    return journal;
  }

  it('coalesces a burst into one write and reads it back in order, by cursor', async () => {
    const store = await open();
    const journal = await journalOn(store, 'n1');
    const start = journal.headPosition();
    for (const name of ['a', 'b', 'c']) journal.publish(vmEvent(name));
    await vi.waitFor(() => expect(readAll(journal, start).events).toHaveLength(3), WAIT);
    const { events } = readAll(journal, start);
    expect(names(events)).toEqual(['a', 'b', 'c']);
    expect((await store.list(`${LAYOUT.events}batches/`)).kvs).toHaveLength(1);
    expect(events.every(({ event }) => event.time !== undefined)).toBe(true);
    const second = events[1]?.position;
    expect(second).toBeDefined();
    if (second) expect(names(readAll(journal, second).events)).toEqual(['c']);
    expect(journal.published).toBe(3);
  });

  it('resumes after a restart of the journal with every later event, none repeated', async () => {
    const store = await open();
    const first = await journalOn(store, 'n1');
    const start = first.headPosition();
    for (const name of ['a', 'b', 'c', 'd', 'e']) first.publish(vmEvent(name));
    await first.flush();
    await vi.waitFor(() => expect(readAll(first, start).events).toHaveLength(5), WAIT);
    const token = encodeToken(readAll(first, start).events[1]?.position ?? start);
    await first.stop();

    const second = await journalOn(store, 'n1');
    second.publish(vmEvent('f'));
    const cursor = decodeToken(token);
    if (!cursor) throw new Error('token');
    await vi.waitFor(() => expect(names(readAll(second, cursor).events)).toEqual(['c', 'd', 'e', 'f']), WAIT);
  });

  it("delivers one node's events to another node's journal", async () => {
    const store = await open();
    const other = await secondClient(store);
    const a = await journalOn(store, 'node-a');
    const b = await journalOn(other, 'node-b');
    const fromB = b.headPosition();
    const fromA = a.headPosition();
    a.publish(vmEvent('from-a'));
    b.publish(vmEvent('from-b'));
    await vi.waitFor(() => expect(new Set(names(readAll(b, fromB).events))).toEqual(new Set(['from-a', 'from-b'])), WAIT);
    await vi.waitFor(() => expect(names(readAll(a, fromA).events)).toEqual(names(readAll(b, fromB).events)), WAIT);
  });

  it('prunes its own batches beyond the window and expires older tokens on every journal alike', async () => {
    const store = await open();
    const other = await secondClient(store);
    const settings: JournalSettings = { batchMs: 5, retainEvents: 3, retainSeconds: 0.001 };
    const a = await journalOn(store, 'node-a', settings);
    const b = await journalOn(other, 'node-b', settings);
    const start = a.headPosition();
    for (let i = 0; i < 6; i++) {
      a.publish(vmEvent(`e${i}`));
      await a.flush();
    }
    await vi.waitFor(async () => {
      await a.prune();
      expect(a.size()).toBe(3);
      expect(b.size()).toBe(3);
    }, WAIT);
    // The oldest token, and one at a pruned event: expired on both; one at the newest pruned batch's end, and later ones, not.
    for (const journal of [a, b]) {
      expect(journal.read(start, 10)).toBe('expired');
    }
    const floorRecord = await store.get(`${LAYOUT.events}floor`);
    const floor = (JSON.parse(new TextDecoder().decode(floorRecord?.value)) as { revision: number }).revision;
    for (const journal of [a, b]) {
      await vi.waitFor(() => expect(journal.expired({ revision: floor, index: 0 })).toBe(true), WAIT);
      const page = journal.read({ revision: floor, index: END }, 10);
      if (page === 'expired') throw new Error('a position past the floor is not expired');
      expect(names(page.events)).toEqual(['e3', 'e4', 'e5']);
    }
  });

  it('re-lists after its watch fails, losing and repeating nothing', async () => {
    const store = await open();
    const writer = await journalOn(await secondClient(store), 'writer');
    // The reader's first watch fails after its first event, as after a compaction.
    let failed = false;
    const flakyWatch = (prefix: string, options: WatchOptions) =>
      (async function* () {
        for await (const event of store.watch(prefix, options)) {
          yield event;
          if (!failed) {
            failed = true;
            throw new CompactedError(event.modRevision);
          }
        }
      })();
    const flaky = new Proxy(store, {
      get: (target, property) => {
        if (property === 'watch') return flakyWatch;
        const value: unknown = Reflect.get(target, property, target);
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
    const reader = await journalOn(flaky, 'reader');
    const start = reader.headPosition();
    const expected: string[] = [];
    for (let i = 0; i < 5; i++) {
      expected.push(`w${i}`);
      writer.publish(vmEvent(`w${i}`));
      await writer.flush();
    }
    await vi.waitFor(() => expect(names(readAll(reader, start).events)).toEqual(expected), WAIT);
    expect(failed).toBe(true);
    expect(problems.some((p) => p.includes('re-listing'))).toBe(true);
  });
});
