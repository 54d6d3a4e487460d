// The cluster's record of which persistent VMs each node has (LAYOUT.vmInventory), kept by each
// node's own daemon with its self heartbeat. A failed node's libvirt cannot be asked for its
// domain definitions, so FailoverVM takes them from here.
import type { VmLiveInventory } from '../vms/inventory.js';
import { RpcError } from '../rpc/errors.js';
import { ConflictError } from '../store/errors.js';
import type { VmInventoryRecord } from '../store/records.js';
import type { Repositories } from '../store/repositories.js';
import type { Versioned } from '../store/repository.js';

type InventoryRepository = Repositories['vmInventory'];

/** Even with nothing changed, the store's records are compared again this often (repairs drift, e.g. a restored backup). */
const FULL_PUBLISH_INTERVAL_MS = 300_000;

export class VmInventory {
  private lastPublished: { readonly node: string; readonly generation: number; readonly atMs: number } | undefined;

  constructor(
    private readonly repo: InventoryRepository,
    private readonly now: () => Date = () => new Date(),
  ) {}

  /**
   * Makes the store's list of `node`'s VMs match its libvirt: every persistent domain with its
   * inactive XML and state; records of domains that are gone are deleted. Unchanged records are not rewritten.
   * Read from the live inventory: no host process (it throws, and nothing is published, while the
   * inventory is stale: records of VMs that still exist must not be deleted). Skipped while the
   * live inventory has not changed since the last publication, up to FULL_PUBLISH_INTERVAL_MS.
   */
  async publish(node: string, live: Pick<VmLiveInventory, 'persistentDomains' | 'generation'>): Promise<void> {
    // A heartbeat with nothing changed since the last publication costs nothing (no store listing).
    const generation = live.generation;
    const nowMs = this.now().getTime();
    const last = this.lastPublished;
    if (last && last.node === node && last.generation === generation && nowMs - last.atMs < FULL_PUBLISH_INTERVAL_MS) return;
    const domains = live.persistentDomains();
    const stored = new Map((await this.repo.list({ pageSize: 10_000, under: node })).items.map((r) => [r.value.name, r]));
    for (const domain of domains) {
      const xml = domain.inactiveXml ?? '';
      const current = stored.get(domain.name)?.value;
      stored.delete(domain.name);
      if (current && current.xml === xml && current.state === domain.state) continue;
      await this.repo.put([node, domain.name], {
        schema_version: 1,
        node,
        name: domain.name,
        uuid: domain.uuid,
        state: domain.state,
        memory_bytes: domain.maxMemoryBytes,
        xml,
        published_at: this.now().toISOString(),
      });
    }
    for (const gone of stored.values()) await this.repo.delete([node, gone.value.name], gone.modRevision).catch(ignoreConflict);
    this.lastPublished = { node, generation, atMs: nowMs };
  }

  async get(node: string, vmName: string): Promise<Versioned<VmInventoryRecord> | undefined> {
    return this.repo.get([node, vmName]);
  }

  /**
   * Takes the record out of the inventory (compare-and-delete), so two failovers of the same VM
   * cannot both start it: the loser gets ABORTED. restore() puts it back if the failover fails.
   */
  async claim(node: string, vmName: string): Promise<VmInventoryRecord> {
    const found = await this.get(node, vmName);
    if (!found) throw new RpcError('NOT_FOUND', `VM ${JSON.stringify(vmName)} is not in node ${node}'s published inventory (already failed over?)`);
    try {
      await this.repo.delete([node, vmName], found.modRevision);
    } catch (err) {
      if (err instanceof ConflictError) throw new RpcError('ABORTED', `another failover of VM ${JSON.stringify(vmName)} is in progress`, { cause: err });
      throw err;
    }
    return found.value;
  }

  async restore(record: VmInventoryRecord): Promise<void> {
    await this.repo.create([record.node, record.name], record).catch(ignoreConflict);
  }
}

function ignoreConflict(err: unknown): void {
  // Someone wrote a newer record meanwhile: theirs stands.
  if (!(err instanceof ConflictError)) throw err;
}
