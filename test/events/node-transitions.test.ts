// NODE_ONLINE and NODE_OFFLINE on a real etcd with two daemons' watchers (two clients): one event
// per transition between them, whichever wins the claim; a renewed lease is no transition; a
// restarted watcher publishes nothing already published, and watchers started after a transition
// nobody saw (every daemon down) publish it once.
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EventKind } from '../../src/gen/debvisor/v1/event_pb.js';
import { ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { NodeRegistry, type NodeHealthRecord } from '../../src/nodes/registry.js';
import { NodeTransitions, type Transition } from '../../src/nodes/transitions.js';
import { createRepositories } from '../../src/store/repositories.js';
import type { Store } from '../../src/store/store.js';
import { RecordingSink } from '../support/recording-sink.js';
import { etcdHarness, type StoreHarness } from '../support/store-harness.js';

const silent = pino({ level: 'silent' });
const health: NodeHealthRecord = { status: 'HEALTHY', cpu_load: 0, mem_used_pct: 1, disk_used_pct: 1, net_rtt_ms: 0, ceph_status: '', memory_total_bytes: 1, memory_free_bytes: 1 };
const inventory = { hostname: 'hv-1', ip: '10.0.0.1', rack: '', zone: '', version: '9.9.9', labels: {} };

let harness: StoreHarness;
const stores: Store[] = [];

/** One daemon's watcher on its own etcd client, with what it decided. */
class Watcher {
  readonly sink = new RecordingSink();
  readonly decided: { host: string; transition: Transition; published: boolean }[] = [];
  private readonly waiters: { count: number; transition: Transition; resolve: () => void }[] = [];
  private readonly stop = new AbortController();
  private running: Promise<void> | undefined;
  transitions: NodeTransitions | undefined;

  async start(): Promise<this> {
    const store = await harness.open();
    stores.push(store);
    this.transitions = new NodeTransitions(store, createRepositories(store), this.sink, silent, {
      onDecided: (decision) => {
        this.decided.push(decision);
        for (const waiter of [...this.waiters]) {
          if (this.count(waiter.transition) >= waiter.count) {
            this.waiters.splice(this.waiters.indexOf(waiter), 1);
            waiter.resolve();
          }
        }
      },
    });
    this.running = this.transitions.run(this.stop.signal);
    await this.transitions.synced;
    return this;
  }

  count(transition: Transition): number {
    return this.decided.filter((d) => d.transition === transition).length;
  }

  /** Until this watcher has handled `count` transitions of that kind (published or found claimed). */
  handled(transition: Transition, count: number): Promise<void> {
    if (this.count(transition) >= count) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ count, transition, resolve }));
  }

  async close(): Promise<void> {
    this.stop.abort();
    await this.running;
  }
}

const published = (watchers: Watcher[], kind: EventKind) => watchers.flatMap((w) => w.sink.of(kind));

beforeAll(async () => {
  harness = await etcdHarness();
});

afterAll(async () => {
  for (const store of stores) await store.close();
  await harness.cleanup();
});

describe('node transitions on one etcd', () => {
  it('publish one event per transition between two daemons, none on renewal or restart, and catch up what nobody saw', async () => {
    const registryStore = await harness.open();
    stores.push(registryStore);
    // A 1 s heartbeat interval: the liveness lease lasts 3 s.
    const registry = new NodeRegistry(registryStore, createRepositories(registryStore), () => 1);
    const a = await new Watcher().start();
    const b = await new Watcher().start();

    const { record } = await registry.register(inventory);
    await registry.heartbeat('hv-1', record.id, health);
    await Promise.all([a.handled('online', 1), b.handled('online', 1)]);
    // Both saw it; the claim let exactly one publish.
    expect([...a.decided, ...b.decided].map((d) => d.published).sort()).toEqual([false, true]);
    const online = published([a, b], EventKind.NODE_ONLINE);
    expect(online).toMatchObject([{ resource: { kind: ResourceKind.NODE, node: 'hv-1', name: 'hv-1' }, payload: { case: 'node', value: { ip: '10.0.0.1', version: '9.9.9' } } }]);

    // Renewals are no transition; then the heartbeats stop and the lease lapses.
    await registry.heartbeat('hv-1', record.id, health);
    await registry.heartbeat('hv-1', record.id, health);
    await Promise.all([a.handled('offline', 1), b.handled('offline', 1)]);
    expect(published([a, b], EventKind.NODE_ONLINE)).toHaveLength(1);
    expect(published([a, b], EventKind.NODE_OFFLINE)).toMatchObject([{ resource: { name: 'hv-1' }, payload: { value: { ip: '10.0.0.1' } } }]);

    // A daemon restarts: nothing it missed, nothing to publish again.
    await a.close();
    const a2 = await new Watcher().start();
    expect(a2.sink.events).toEqual([]);

    // The node comes back while every daemon is down: the daemons starting later publish that once, then its lapse once.
    await a2.close();
    await b.close();
    await registry.heartbeat('hv-1', record.id, health);
    const c = await new Watcher().start();
    const d = await new Watcher().start();
    expect(published([c, d], EventKind.NODE_ONLINE)).toHaveLength(1);
    await Promise.all([c.handled('offline', 1), d.handled('offline', 1)]);
    expect(published([c, d], EventKind.NODE_OFFLINE)).toHaveLength(1);
    expect(published([c, d], EventKind.NODE_ONLINE)).toHaveLength(1);
    await c.close();
    await d.close();
  });
});
