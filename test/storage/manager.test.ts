// StorageManager's failure paths that a healthy Ceph cannot be made to take on demand: protect
// failing after the snapshot exists, flatten failing after the clone exists, a write failing after
// the volume exists, one snapshot of a prune refusing to go. The backend is an in-memory stand-in
// for the VolumeBackend contract; the e2e suites run the same code against real Ceph and LVM.
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ExecError } from '../../src/backends/exec.js';
import type { QuotaManager } from '../../src/quota/manager.js';
import type { CreateSnapshotSpec, CreateVolumeSpec, PoolOwnership, RbdTemplateBackend, SnapshotInfo, VolumeInfo } from '../../src/backends/storage-backend.js';
import { StorageManager } from '../../src/storage/manager.js';

const MIB = 1024n * 1024n;

class FakeRbd implements RbdTemplateBackend {
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
  async clone(from: { image: string; snapshot: string }, to: { pool: string; image: string; owner: string }): Promise<VolumeInfo> {
    this.snapshots.get(`${from.image}@${from.snapshot}`)!.clones.push(`${to.pool}/${to.image}`);
    return this.createVolume({ pool: to.pool, name: to.image, sizeBytes: this.volumes.get(from.image)!.sizeBytes, tags: {}, owner: to.owner });
  }
  flatten(): Promise<void> {
    return this.fail.flatten ? Promise.reject(new ExecError({ kind: 'timeout', backend: 'rbd', command: 'rbd' })) : Promise.resolve();
  }
}

function setup() {
  const rbd = new FakeRbd();
  const ledger: string[] = [];
  const quotas = {
    consume: (principal: string, resource: string, amount: number) => Promise.resolve(ledger.push(`+${amount} ${resource} ${principal}`)),
    release: (principal: string, resource: string, amount: number) => Promise.resolve(void ledger.push(`-${amount} ${resource} ${principal}`)),
  } as unknown as QuotaManager;
  const failingWrite = {
    info: () => Promise.resolve({ format: 'raw', virtualSizeBytes: MIB }),
    convert: () => Promise.reject(new ExecError({ kind: 'failed', backend: 'qemu-img', command: 'qemu-img' })),
  };
  const manager = new StorageManager({ backends: { rbd }, quotas, images: failingWrite, imagesDir: () => import.meta.dirname });
  return { rbd, ledger, manager };
}

describe('StorageManager failure paths', () => {
  it('removes the template snapshot and gives its unit back when protecting fails', async () => {
    const { rbd, ledger, manager } = setup();
    await rbd.createVolume({ pool: 'p', name: 'golden', sizeBytes: MIB, tags: {}, owner: 'a' });
    rbd.fail.protect = 'yes';
    await expect(manager.createTemplateSnapshot('p', 'golden', 'v1', 'a')).rejects.toBeInstanceOf(ExecError);
    expect(rbd.snapshots.size).toBe(0);
    expect(ledger).toEqual(['+1 snapshots a', '-1 snapshots a']);
  });

  it('removes a clone whose flatten failed', async () => {
    const { rbd, manager } = setup();
    await rbd.createVolume({ pool: 'p', name: 'golden', sizeBytes: MIB, tags: {}, owner: 'a' });
    await manager.createTemplateSnapshot('p', 'golden', 'v1', 'a');
    rbd.fail.flatten = 'yes';
    await expect(manager.clone({ pool: 'p', image: 'golden', snapshot: 'v1' }, { pool: 'p', image: 'c1', owner: 'b' }, true)).rejects.toMatchObject({ kind: 'timeout' });
    expect([...rbd.volumes.keys()]).toEqual(['golden']);
  });

  it('removes only the volume a failed provisioning made', async () => {
    const { rbd, manager } = setup();
    await rbd.createVolume({ pool: 'p', name: 'other', sizeBytes: MIB, tags: {}, owner: 'a' });
    const key = { backend: 'rbd' as const, pool: 'p', name: 'new' };
    await expect(manager.provision(key, { sizeBytes: MIB, tags: {}, owner: 'a', imagePath: basename(fileURLToPath(import.meta.url)) })).rejects.toBeInstanceOf(ExecError);
    expect([...rbd.volumes.keys()]).toEqual(['other']);
  });

  it('prunes the rest when one snapshot refuses, releases what went to each owner, then reports the failure', async () => {
    const { rbd, ledger, manager } = setup();
    await rbd.createVolume({ pool: 'p', name: 'db', sizeBytes: MIB, tags: {}, owner: 'a' });
    for (const [name, owner] of [['d-2026-01-01', 'x'], ['d-2026-01-02', 'y'], ['d-2026-01-03', 'x'], ['d-2026-01-04', 'x']] as const) {
      await manager.createSnapshot({ backend: 'rbd', pool: 'p', name: 'db' }, name, '', owner);
    }
    rbd.fail.deleteSnapshot = 'd-2026-01-02';
    const key = { backend: 'rbd' as const, pool: 'p', name: 'db' };
    await expect(manager.prune(key, { keepLast: 1, keepDailyDays: 0, keepWeeklyWeeks: 0 }, false, { now: new Date('2026-01-05T00:00:00Z') })).rejects.toThrow(
      'pruned 2 of 3 snapshots of rbd:p/db; could not delete d-2026-01-02',
    );
    expect([...rbd.snapshots.values()].map((s) => s.name).sort()).toEqual(['d-2026-01-02', 'd-2026-01-04']);
    expect(ledger).toEqual(['-1 snapshots x', '-1 snapshots x']);
  });

  it('charges only the change in size, always to the owner of the volume', async () => {
    const { rbd, ledger, manager } = setup();
    const GIB = 1024n * MIB;
    await rbd.createVolume({ pool: 'p', name: 'v', sizeBytes: 2n * GIB, tags: {}, owner: 'owner' });
    const key = { backend: 'rbd' as const, pool: 'p', name: 'v' };
    await manager.resizeVolume(key, 3n * GIB, false, 'owner');
    expect(ledger.splice(0)).toEqual(['+1 storage_gb owner']);
    await manager.resizeVolume(key, 5n * GIB, false, 'admin');
    expect(ledger.splice(0)).toEqual(['+2 storage_gb owner']);
    await manager.resizeVolume(key, GIB, true, 'admin');
    expect(ledger.splice(0)).toEqual(['-4 storage_gb owner']);
    await expect(manager.resizeVolume(key, GIB / 2n, false, 'owner')).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
    expect(ledger).toEqual([]);
  });
});
