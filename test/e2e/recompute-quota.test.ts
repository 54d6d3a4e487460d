// RecomputeQuota's cost and rate limit, end to end: the REAL daemon over a REAL single-node Ceph
// (two pools, 8 images, snapshots) and a REAL metadata-only LVM VG (6 LVs and a snapshot). One
// recount must spawn one listing per pool and VG (from the daemon's own
// backend_command_duration_seconds counts, one sample per spawned host command), whatever the
// number of images and LVs (it was one rbd per image and per snapshot: about 80 for this set-up),
// count right, and run once at a time and at most once per quota.recompute_min_interval_seconds.
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeTags } from '../../src/backends/lvm/tags.js';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { QuotaResource } from '../../src/gen/debvisor/v1/options_pb.js';
import { StorageService } from '../../src/gen/debvisor/v1/storage_pb.js';
import { StorageBackend } from '../../src/gen/debvisor/v1/storage_types_pb.js';
import { startCeph, type TestCeph } from '../support/ceph.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { startLvm, writeSnapshotMetadata, type TestLvm } from '../support/lvm.js';
import { issueClientFor, rejection } from '../support/security.js';
import { GIB, MIB, NO_RATE_LIMITS, snapshotsUsed, storageGb, T, type Client } from '../support/storage.js';

const OPERATOR = 'spiffe://debvisor/recompute-test/operator';
const POOLS = ['rc-a', 'rc-b'];
const MIN_INTERVAL_SECONDS = 600;

let ceph: TestCeph;
let lvm: TestLvm;
let daemon: RunningDaemon;
let access: Client<typeof AccessService>;
let storage: Client<typeof StorageService>;
let operatorStorage: Client<typeof StorageService>;

/** Host commands a backend has spawned so far, by command: the daemon's own counts from /metrics. */
async function hostCommands(backend: string): Promise<Record<string, number>> {
  const text = await (await fetch(`http://${daemon.httpAddress}/metrics`)).text();
  const counts: Record<string, number> = {};
  for (const m of text.matchAll(/^backend_command_duration_seconds_count\{([^}]*)\} (\d+)$/gm)) {
    const labels = new Map([...(m[1] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((l): [string, string] => [l[1] ?? '', l[2] ?? '']));
    const command = labels.get('command') ?? '';
    if (labels.get('backend_service') === backend) counts[command] = (counts[command] ?? 0) + Number(m[2]);
  }
  return counts;
}

function delta(after: Record<string, number>, before: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(after).flatMap(([command, n]) => (n - (before[command] ?? 0) > 0 ? [[command, n - (before[command] ?? 0)]] : [])));
}

beforeAll(async () => {
  [ceph, lvm] = await Promise.all([startCeph({ pools: POOLS }), startLvm({ sizeMiB: 512 })]);
  daemon = await startDaemon({
    env: {
      DEBVISOR_RPCD_RBD_CEPH_CONF: ceph.conf,
      DEBVISOR_RPCD_RBD_POOLS: POOLS.join(','),
      DEBVISOR_RPCD_LVM_VGS: lvm.vg,
      DEBVISOR_RPCD_LVM_SYSTEM_DIR: lvm.systemDir,
    },
    config: { ...NO_RATE_LIMITS, quota: { recompute_min_interval_seconds: MIN_INTERVAL_SECONDS } },
  });
  access = await clientFor(AccessService, daemon);
  storage = await clientFor(StorageService, daemon);
  await access.bindRole({ principal: OPERATOR, roleName: 'operator' }, T);
  operatorStorage = await clientFor(StorageService, daemon, await issueClientFor(daemon.pki, OPERATOR));
});

afterAll(async () => {
  for (const c of [access, storage, operatorStorage] as ({ close(): void } | undefined)[]) c?.close();
  await (daemon as RunningDaemon | undefined)?.cleanup();
  await Promise.all([(ceph as TestCeph | undefined)?.stop(), (lvm as TestLvm | undefined)?.stop()]);
});

describe('RecomputeQuota', () => {
  it('costs one listing per pool and VG however many images and LVs, counts right, and is rate-limited', async () => {
    // 8 RBD images over two pools: 6 the operator's (1 GiB each, 2 with snapshots), 2 the admin's.
    for (let i = 0; i < 8; i++) {
      const client = i < 6 ? operatorStorage : storage;
      await client.createVolume({ volume: { backend: StorageBackend.RBD, pool: POOLS[i % 2], name: `img${i}` }, sizeBytes: GIB }, T);
    }
    for (const [image, snapshot] of [['img0', 's1'], ['img0', 's2'], ['img1', 's1']] as const) {
      const pool = image === 'img0' ? POOLS[0] : POOLS[1];
      await operatorStorage.createSnapshot({ dataset: { backend: StorageBackend.RBD, pool, name: image }, snapshotName: snapshot }, T);
    }
    // 6 LVs: 4 the operator's (10 MiB: 1 GiB each when counted), 2 the admin's.
    for (let i = 0; i < 6; i++) {
      const client = i < 4 ? operatorStorage : storage;
      await client.createVolume({ volume: { backend: StorageBackend.LVM, pool: lvm.vg, name: `lv${i}` }, sizeBytes: 10n * MIB }, T);
    }
    // A snapshot of the operator's made on the host behind the daemon's back: the recount must find it.
    await writeSnapshotMetadata(lvm, { origin: 'lv0', name: 'lv0-snap', tags: encodeTags({ owner: OPERATOR, label: '' }) });
    expect([await storageGb(access, OPERATOR), await snapshotsUsed(access, OPERATOR)]).toEqual([10n, 3n]);

    const before = { rbd: await hostCommands('rbd'), lvm: await hostCommands('lvm') };
    // Two at once: one runs, the other is refused at once (another is running, or the interval has not passed).
    const results = await Promise.allSettled([access.recomputeQuota({ principal: OPERATOR }, T), access.recomputeQuota({ principal: OPERATOR }, T)]);
    const done = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const refused = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as { code: number; details: string }] : []));
    expect(done).toHaveLength(1);
    expect(refused.map((e) => e.code)).toEqual([Status.RESOURCE_EXHAUSTED]);
    expect(refused[0]?.details).toMatch(/RecomputeQuota.*retry in \d+ s/);

    // Exactly one listing per pool (python3 with librbd) and one lvs for the VG, nothing per image or LV.
    expect(delta(await hostCommands('rbd'), before.rbd)).toEqual({ python3: POOLS.length });
    expect(delta(await hostCommands('lvm'), before.lvm)).toEqual({ lvm: 1 });

    // The counts: 6 × 1 GiB images + 4 × 1 GiB LVs; 3 RBD snapshots + the LVM one made behind the daemon's back.
    const used = (resource: QuotaResource) => done[0]?.after.find((q) => q.resource === resource)?.used;
    // No libvirt on this daemon: the VM dimensions are left as they are, never zeroed.
    expect(done[0]?.notRecounted).toEqual([QuotaResource.VMS, QuotaResource.VCPUS, QuotaResource.MEMORY_GB]);
    expect([used(QuotaResource.STORAGE_GB), used(QuotaResource.SNAPSHOTS)]).toEqual([10n, 4n]);
    expect([await storageGb(access, OPERATOR), await snapshotsUsed(access, OPERATOR)]).toEqual([10n, 4n]);
    // The admin's own images and LVs are the admin's: 2 × 1 GiB images + 2 LVs.
    // (Recounting the admin now is refused: the interval has not passed.)
    const again = await rejection(access.recomputeQuota({ principal: 'spiffe://debvisor/admin/admin' }, T));
    expect(again.code).toBe(Status.RESOURCE_EXHAUSTED);
    expect(again.details).toMatch(new RegExp(`at most once every ${MIN_INTERVAL_SECONDS} s`));
    expect(delta(await hostCommands('rbd'), before.rbd)).toEqual({ python3: POOLS.length });
  });
});
