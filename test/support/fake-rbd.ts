// An in-memory RBD backend honouring the VolumeBackend and RbdTemplateBackend contracts, with
// switchable failures: for the failure paths a healthy Ceph cannot be made to take on demand.
import { ExecError } from '../../src/backends/exec.js';
import type { CreateSnapshotSpec, CreateVolumeSpec, PoolOwnership, RbdTemplateBackend, SnapshotInfo, VolumeInfo } from '../../src/backends/storage-backend.js';

export const MIB = 1024n * 1024n;

export class FakeRbd implements RbdTemplateBackend {
  readonly kind = 'rbd' as const;
  readonly pools = ['p'];
  readonly volumes = new Map<string, VolumeInfo>();
  readonly snapshots = new Map<string, SnapshotInfo>();
  fail: Partial<Record<'protect' | 'flatten' | 'deleteSnapshot', string>> = {};

  private gone(): ExecError {
    return new ExecError({ kind: 'not_found', backend: 'rbd', command: 'rbd' });
  }
  listVolumes(): Promise<VolumeInfo[]> {
    return Promise.resolve([...this.volumes.values()]);
  }
  getVolume(_pool: string, name: string): Promise<VolumeInfo> {
    const volume = this.volumes.get(name);
    return volume ? Promise.resolve(volume) : Promise.reject(this.gone());
  }
  createVolume(spec: CreateVolumeSpec): Promise<VolumeInfo> {
    const volume: VolumeInfo = { backend: 'rbd', pool: spec.pool, name: spec.name, sizeBytes: spec.sizeBytes, usedBytes: 0n, tags: spec.tags, owner: spec.owner };
    this.volumes.set(spec.name, volume);
    return Promise.resolve(volume);
  }
  resizeVolume(_pool: string, name: string, sizeBytes: bigint): Promise<VolumeInfo> {
    const volume = { ...this.volumes.get(name)!, sizeBytes };
    this.volumes.set(name, volume);
    return Promise.resolve(volume);
  }
  deleteVolume(_pool: string, name: string): Promise<void> {
    this.volumes.delete(name);
    return Promise.resolve();
  }
  listSnapshots(_pool: string, volume: string): Promise<SnapshotInfo[]> {
    if (!this.volumes.has(volume)) return Promise.reject(this.gone());
    return Promise.resolve([...this.snapshots.values()].filter((s) => s.volume === volume));
  }
  createSnapshot(spec: CreateSnapshotSpec): Promise<SnapshotInfo> {
    if (!this.volumes.has(spec.volume)) return Promise.reject(this.gone());
    const snapshot: SnapshotInfo = { pool: spec.pool, volume: spec.volume, name: spec.name, label: spec.label, createTime: new Date(), sizeBytes: 0n, protected: false, clones: [], owner: spec.owner };
    this.snapshots.set(`${spec.volume}@${spec.name}`, snapshot);
    return Promise.resolve(snapshot);
  }
  deleteSnapshot(_pool: string, volume: string, name: string): Promise<void> {
    if (this.fail.deleteSnapshot === name) return Promise.reject(new ExecError({ kind: 'busy', backend: 'rbd', command: 'rbd' }));
    this.snapshots.delete(`${volume}@${name}`);
    return Promise.resolve();
  }
  ownership(): Promise<PoolOwnership> {
    return Promise.resolve({ volumes: [...this.volumes.values()], snapshotOwners: [...this.snapshots.values()].map((s) => s.owner) });
  }
  imageTarget(pool: string, name: string): string {
    return `rbd:${pool}/${name}`;
  }
  protectSnapshot(_pool: string, image: string, snapshot: string): Promise<void> {
    if (this.fail.protect) return Promise.reject(new ExecError({ kind: 'failed', backend: 'rbd', command: 'rbd' }));
    this.snapshots.get(`${image}@${snapshot}`)!.protected = true;
    return Promise.resolve();
  }
  unprotectSnapshot(): Promise<void> {
    return Promise.resolve();
  }
  async clone(from: { image: string; snapshot: string }, to: { pool: string; image: string; owner: string; tags?: Record<string, string> }): Promise<VolumeInfo> {
    this.snapshots.get(`${from.image}@${from.snapshot}`)!.clones.push(`${to.pool}/${to.image}`);
    return this.createVolume({ pool: to.pool, name: to.image, sizeBytes: this.volumes.get(from.image)!.sizeBytes, tags: to.tags ?? {}, owner: to.owner });
  }
  flatten(): Promise<void> {
    return this.fail.flatten ? Promise.reject(new ExecError({ kind: 'timeout', backend: 'rbd', command: 'rbd' })) : Promise.resolve();
  }
}
