// StorageManager's failure paths that a healthy Ceph cannot be made to take on demand: protect
// failing after the snapshot exists, flatten failing after the clone exists, a write failing after
// the volume exists, one snapshot of a prune refusing to go. The backend is an in-memory stand-in
// for the VolumeBackend contract (test/support/fake-rbd.ts); the e2e suites run the same code against real Ceph and LVM.
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ExecError } from '../../src/backends/exec.js';
import type { QuotaManager } from '../../src/quota/manager.js';
import { StorageManager } from '../../src/storage/manager.js';
import { FakeRbd, MIB } from '../support/fake-rbd.js';

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
