// The node inventory and node liveness. Nodes are stored by hostname (LAYOUT.nodes);
// liveness is a separate key (LAYOUT.nodeLiveness) attached to a store lease of
// 3 × the heartbeat interval: each heartbeat renews the lease, and when heartbeats
// stop the store deletes the key. Online means "the liveness key exists" — never a
// comparison of timestamps, so every daemon on the same store agrees.
import { randomUUID } from 'node:crypto';
import { LAYOUT, segment } from '../store/layout.js';
import { NotFoundError } from '../store/errors.js';
import type { NodeRecord } from '../store/records.js';
import type { Repositories } from '../store/repositories.js';
import { retryOnConflict } from '../store/repository.js';
import type { Store } from '../store/store.js';

/** A node's lease lasts this many heartbeat intervals. */
export const LEASE_INTERVALS = 3;

export interface NodeInventory {
  readonly hostname: string;
  readonly ip: string;
  readonly rack: string;
  readonly zone: string;
  readonly version: string;
  readonly labels: Record<string, string>;
}

export type NodeHealthRecord = NonNullable<NodeRecord['health']>;

export interface NodeView {
  readonly record: NodeRecord;
  readonly online: boolean;
}

export class UnknownNodeError extends Error {
  constructor(readonly hostname: string) {
    super(`node ${hostname} is not registered`);
    this.name = 'UnknownNodeError';
  }
}

export class NodeIdMismatchError extends Error {
  constructor(readonly hostname: string) {
    super(`node_id does not match the node registered as ${hostname}`);
    this.name = 'NodeIdMismatchError';
  }
}

const encoder = new TextEncoder();

export class NodeRegistry {
  constructor(
    private readonly store: Store,
    private readonly repos: Pick<Repositories, 'nodes'>,
    /** Read per call, so a reloaded interval applies to the next heartbeat. */
    private readonly intervalSeconds: () => number,
    private readonly now: () => Date = () => new Date(),
  ) {}

  heartbeatIntervalSeconds(): number {
    return this.intervalSeconds();
  }

  leaseTtlSeconds(): number {
    return LEASE_INTERVALS * this.intervalSeconds();
  }

  livenessKey(hostname: string): string {
    return LAYOUT.nodeLiveness + segment(hostname);
  }

  /** Adds the node, or updates its inventory; the id and registration time stay. */
  async register(inventory: NodeInventory): Promise<NodeView> {
    const at = this.now().toISOString();
    const saved = await this.repos.nodes.mutate(inventory.hostname, (current) => ({
      schema_version: 1,
      id: current?.id ?? randomUUID(),
      registered_at: current?.registered_at ?? at,
      ...(current?.last_heartbeat_at ? { last_heartbeat_at: current.last_heartbeat_at } : {}),
      ...(current?.health ? { health: current.health } : {}),
      ...(current?.lease_expires_at ? { lease_expires_at: current.lease_expires_at } : {}),
      ...inventory,
      labels: { ...inventory.labels },
      updated_at: at,
    }));
    if (!saved) throw new Error(`node ${inventory.hostname} could not be saved`);
    return { record: saved.value, online: await this.isOnline(inventory.hostname) };
  }

  /**
   * Records the health and renews the liveness lease (a new lease when the old one
   * expired). Returns the lease's expiry.
   */
  async heartbeat(hostname: string, nodeId: string, health: NodeHealthRecord): Promise<{ record: NodeRecord; leaseExpiresAt: Date }> {
    let read = await this.repos.nodes.get(hostname);
    if (!read) throw new UnknownNodeError(hostname);
    if (nodeId && nodeId !== read.value.id) throw new NodeIdMismatchError(hostname);
    const ttl = await this.renewLease(hostname, read.value.id);
    const at = this.now();
    const leaseExpiresAt = new Date(at.getTime() + ttl * 1000);
    // Compare-and-swap against the record read above; only a conflict reads it again.
    const saved = await retryOnConflict(async () => {
      const current = read ?? (await this.repos.nodes.get(hostname));
      read = undefined;
      if (!current) throw new UnknownNodeError(hostname);
      const next = { ...current.value, health: { ...health }, last_heartbeat_at: at.toISOString(), lease_expires_at: leaseExpiresAt.toISOString() };
      return this.repos.nodes.update(hostname, next, current.modRevision);
    });
    return { record: saved.value, leaseExpiresAt };
  }

  /** keepAliveOnce on the liveness key's lease; when the key or the lease is gone, a new lease and the key again. */
  private async renewLease(hostname: string, nodeId: string): Promise<number> {
    const key = this.livenessKey(hostname);
    const current = await this.store.get(key);
    if (current?.lease !== undefined) {
      try {
        return await this.store.keepAliveOnce(current.lease);
      } catch (err) {
        if (!(err instanceof NotFoundError)) throw err;
      }
    }
    const ttl = this.leaseTtlSeconds();
    const lease = await this.store.grantLease(ttl);
    await this.store.put(key, encoder.encode(JSON.stringify({ node_id: nodeId, lease })), { lease });
    return ttl;
  }

  async isOnline(hostname: string): Promise<boolean> {
    return (await this.store.get(this.livenessKey(hostname))) !== undefined;
  }

  async get(hostname: string): Promise<NodeView | undefined> {
    const found = await this.repos.nodes.get(hostname);
    if (!found) return undefined;
    return { record: found.value, online: await this.isOnline(hostname) };
  }

  /** Every node, ordered by hostname, with liveness from one listing of the liveness keys. */
  async all(): Promise<NodeView[]> {
    const [nodes, live] = await Promise.all([this.repos.nodes.all(), this.liveHostnames()]);
    return nodes
      .map((n) => ({ record: n.value, online: live.has(n.value.hostname) }))
      .sort((a, b) => (a.record.hostname < b.record.hostname ? -1 : a.record.hostname > b.record.hostname ? 1 : 0));
  }

  private async liveHostnames(): Promise<Set<string>> {
    const live = new Set<string>();
    let startAfter: string | undefined;
    for (;;) {
      const page = await this.store.list(LAYOUT.nodeLiveness, { limit: 1000, ...(startAfter ? { startAfter } : {}) });
      for (const kv of page.kvs) live.add(decodeURIComponent(kv.key.slice(LAYOUT.nodeLiveness.length)));
      const last = page.kvs[page.kvs.length - 1];
      if (!page.more || !last) return live;
      startAfter = last.key;
    }
  }
}
