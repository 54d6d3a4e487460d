// Who created each VM snapshot. libvirt's snapshot XML has no place for an owner, so the
// store keeps one record per snapshot: the `snapshots` quota unit goes back to its creator on
// delete (not to whoever deletes it), and RecomputeQuota can count a principal's VM snapshots.
import { ExecError } from '../backends/exec.js';
import type { Libvirt } from '../backends/libvirt/virsh.js';
import type { Repositories } from '../store/repositories.js';

export class VmSnapshotOwners {
  constructor(
    private readonly repos: Repositories,
    private readonly libvirt: Libvirt,
    private readonly node: () => string,
  ) {}

  async recordCreated(vm: string, snapshot: string, owner: string): Promise<void> {
    const node = this.node();
    await this.repos.vmSnapshotOwners.put([node, vm, snapshot], { schema_version: 1, node, vm, snapshot, owner, created_at: new Date().toISOString() });
  }

  /**
   * Forgets the deleted snapshots and says how many quota units go back to whom. A snapshot
   * without a record (made outside DebVisor, or before owners were kept) counts for `fallback`.
   */
  async forgetDeleted(vm: string, snapshots: readonly string[], fallback: string): Promise<Map<string, number>> {
    const node = this.node();
    const units = new Map<string, number>();
    for (const snapshot of snapshots) {
      const record = await this.repos.vmSnapshotOwners.get([node, vm, snapshot]);
      const owner = record?.value.owner ?? fallback;
      units.set(owner, (units.get(owner) ?? 0) + 1);
      if (record) await this.repos.vmSnapshotOwners.delete([node, vm, snapshot]);
    }
    return units;
  }

  /** RecomputeQuota's count: this node's VM snapshots the principal created that libvirt still has. */
  async countOwnedBy(principal: string, options: { signal?: AbortSignal } = {}): Promise<number> {
    const node = this.node();
    const byVm = new Map<string, Set<string>>();
    for (const { value } of await this.repos.vmSnapshotOwners.all()) {
      if (value.node !== node || value.owner !== principal) continue;
      byVm.set(value.vm, (byVm.get(value.vm) ?? new Set()).add(value.snapshot));
    }
    let count = 0;
    for (const [vm, recorded] of byVm) {
      const existing = await this.libvirt.snapshotNames(vm, options).catch((err: unknown) => {
        // A VM that no longer exists has no snapshots left; anything else (libvirt down) must not undercount.
        if (err instanceof ExecError && err.kind === 'not_found') return [];
        throw err;
      });
      count += existing.filter((name) => recorded.has(name)).length;
    }
    return count;
  }
}
