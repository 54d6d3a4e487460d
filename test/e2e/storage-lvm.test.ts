// StorageService on LVM end to end: the REAL daemon's RPCs against a REAL metadata-only VG on
// a loop device (test/support/lvm.ts), configured only through DEBVISOR_RPCD_LVM_* variables.
// Linear volumes are created, listed, resized, tagged and deleted for real. This kernel has no
// device-mapper, so snapshot creation is answered with the precise FAILED_PRECONDITION; RBD,
// not configured on this daemon, answers FAILED_PRECONDITION too.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { OperationService, OperationState } from '../../src/gen/debvisor/v1/operation_pb.js';
import { StorageService } from '../../src/gen/debvisor/v1/storage_pb.js';
import { StorageBackend } from '../../src/gen/debvisor/v1/storage_types_pb.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { defineTestDomain, startLibvirt, type TestLibvirt } from '../support/libvirt.js';
import { encodeTags } from '../../src/backends/lvm/tags.js';
import { lvmEnv, startLvm, writeSnapshotMetadata, type TestLvm } from '../support/lvm.js';
import { auditRecord, rejection } from '../support/security.js';
import { finished, MIB, NO_RATE_LIMITS, snapshotsUsed, storageGb, T, type Client } from '../support/storage.js';

const run = promisify(execFile);
const ADMIN = 'spiffe://debvisor/admin/admin';
const CI = 'spiffe://debvisor/lvm-test/ci';
const LVM = StorageBackend.LVM;

let lvm: TestLvm;
let libvirt: TestLibvirt;
let daemon: RunningDaemon;
let storage: Client<typeof StorageService>;
let access: Client<typeof AccessService>;
let ops: Client<typeof OperationService>;

async function lvs(): Promise<{ lv_name: string; lv_size: string; lv_tags: string }[]> {
  const { stdout } = await run('/sbin/lvm', ['lvs', '--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', 'lv_name,lv_size,lv_tags', lvm.vg], { env: lvmEnv(lvm) });
  return (JSON.parse(stdout) as { report: { lv: { lv_name: string; lv_size: string; lv_tags: string }[] }[] }).report[0]?.lv ?? [];
}

const ref = (name: string) => ({ backend: LVM, pool: lvm.vg, name });

beforeAll(async () => {
  [lvm, libvirt] = await Promise.all([startLvm({ sizeMiB: 512 }), startLibvirt()]);
  daemon = await startDaemon({
    env: { DEBVISOR_RPCD_LVM_VGS: lvm.vg, DEBVISOR_RPCD_LVM_SYSTEM_DIR: lvm.systemDir, DEBVISOR_RPCD_LIBVIRT_URI: libvirt.uri },
    config: NO_RATE_LIMITS,
  });
  storage = await clientFor(StorageService, daemon);
  access = await clientFor(AccessService, daemon);
  ops = await clientFor(OperationService, daemon);
});

afterAll(async () => {
  for (const c of [storage, access, ops] as ({ close(): void } | undefined)[]) c?.close();
  await (daemon as RunningDaemon | undefined)?.cleanup();
  await Promise.all([(lvm as TestLvm | undefined)?.stop(), (libvirt as TestLibvirt | undefined)?.stop()]);
});

describe('LVM volumes', () => {
  it('creates linear LVs with owner and tags, lists, resizes and deletes them, with storage_gb in step', async () => {
    const { volume } = await storage.createVolume({ volume: ref('disk0'), sizeBytes: 100n * MIB, tags: { team: 'ci', build: '42' } }, T);
    expect(volume).toMatchObject({ ref: { backend: LVM, pool: lvm.vg, name: 'disk0' }, sizeBytes: 100n * MIB, owner: ADMIN, tags: { team: 'ci', build: '42' } });
    await storage.createVolume({ volume: ref('disk1'), sizeBytes: 10n * MIB }, T);
    expect(await storageGb(access)).toBe(2n);
    const real = await lvs();
    expect(real.map((lv) => lv.lv_name).sort()).toEqual(['disk0', 'disk1']);
    expect(real.find((lv) => lv.lv_name === 'disk0')?.lv_tags).toContain('debvisor.owner=');

    const listed = await storage.listVolumes({ backend: LVM, pool: lvm.vg }, T);
    expect(listed.volumes.map((v) => [v.ref?.name, v.sizeBytes, v.owner])).toEqual([
      ['disk0', 100n * MIB, ADMIN],
      ['disk1', 12n * MIB, ADMIN],
    ]);
    expect((await storage.listVolumes({ nameGlob: 'disk1' }, T)).volumes.map((v) => v.ref?.name)).toEqual(['disk1']);

    expect((await storage.resizeVolume({ volume: ref('disk0'), newSizeBytes: 200n * MIB }, T)).volume?.sizeBytes).toBe(200n * MIB);
    expect((await lvs()).find((lv) => lv.lv_name === 'disk0')?.lv_size).toBe(String(200n * MIB));
    expect((await rejection(storage.resizeVolume({ volume: ref('disk0'), newSizeBytes: 50n * MIB }, T))).code).toBe(Status.FAILED_PRECONDITION);
    expect((await storage.resizeVolume({ volume: ref('disk0'), newSizeBytes: 52n * MIB, allowShrink: true }, T)).volume?.sizeBytes).toBe(52n * MIB);
    expect(await storageGb(access)).toBe(2n);

    const full = await rejection(storage.createVolume({ volume: ref('huge'), sizeBytes: 10n * 1024n * MIB }, T));
    expect(full.code).toBe(Status.RESOURCE_EXHAUSTED);
    expect(full.details).toContain('not enough free space');
    expect(await storageGb(access)).toBe(2n);
    expect((await rejection(storage.createVolume({ volume: ref('disk1'), sizeBytes: MIB }, T))).code).toBe(Status.ALREADY_EXISTS);
    // LVM reserves names starting with "snapshot".
    expect((await rejection(storage.createVolume({ volume: ref('snapshot1'), sizeBytes: MIB }, T))).details).toMatch(/^volume\.name: /);

    await auditRecord(daemon, (r) => String(r.method).endsWith('/ResizeVolume') && r.object === `pool:${lvm.vg}/disk0`);
    await storage.deleteVolume({ volume: ref('disk0') }, T);
    await storage.deleteVolume({ volume: ref('disk1') }, T);
    expect(await lvs()).toEqual([]);
    expect(await storageGb(access)).toBe(0n);
    expect((await rejection(storage.deleteVolume({ volume: ref('disk0') }, T))).code).toBe(Status.NOT_FOUND);
  });

  it('answers snapshot creation with the precise no-device-mapper FAILED_PRECONDITION and gives the unit back', async () => {
    await storage.createVolume({ volume: ref('snapme'), sizeBytes: 8n * MIB }, T);
    const err = await rejection(storage.createSnapshot({ dataset: ref('snapme'), snapshotName: 'before-test' }, T));
    expect(err.code).toBe(Status.FAILED_PRECONDITION);
    expect(err.details).toContain('LVM snapshots need the device-mapper kernel driver, which this host does not have');
    expect(await snapshotsUsed(access)).toBe(0n);
    expect((await storage.listSnapshots({ dataset: ref('snapme') }, T)).snapshots).toEqual([]);
    const { results } = await storage.deleteSnapshot({ dataset: ref('snapme'), snapshotNames: ['before-test'] }, T);
    expect(results[0]?.status?.code).toBe(Status.NOT_FOUND);
    const prune = await finished(ops, (await storage.pruneSnapshots({ dataset: ref('snapme'), retention: { keepLast: 1 } }, T)).operation);
    expect(prune.state).toBe(OperationState.SUCCEEDED);
    expect(prune.result.case === 'prunePlan' ? prune.result.value : undefined).toMatchObject({ kept: [], deleted: [], removedCount: 0 });
    await storage.deleteVolume({ volume: ref('snapme') }, T);
    for (const call of [() => storage.listSnapshots({ dataset: ref('ghost') }, T), () => storage.createSnapshot({ dataset: ref('ghost'), snapshotName: 's' }, T)]) {
      const err = await rejection(call());
      expect([err.code, err.details]).toEqual([Status.NOT_FOUND, expect.stringContaining(`volume lvm:${lvm.vg}/ghost not found`) as unknown]);
    }
    expect(await snapshotsUsed(access)).toBe(0n);
  });

  it('lists, prunes and deletes real LVM snapshot metadata, refusing volume deletion while snapshots exist, releasing to the owner', async () => {
    await storage.createVolume({ volume: ref('db'), sizeBytes: 16n * MIB }, T);
    const hour = 3_600_000;
    const day = 24 * hour;
    // Retention periods are UTC days: the times are placed in days, not at ages from now, so the
    // plan is the same at any time of day (db-d earlier today, db-c yesterday at noon, …).
    const now = Date.now();
    const today = Math.floor(now / day) * day;
    const created: [string, number][] = [['db-a', today - 40 * day + 12 * hour], ['db-b', today - 10 * day + 12 * hour], ['db-c', today - day + 12 * hour], ['db-d', today + Math.floor((now - today) / 2)]];
    // Written into the VG metadata (this kernel cannot run lvcreate -s), backdated, owned by CI.
    for (const [name, time] of created) {
      await writeSnapshotMetadata(lvm, { origin: 'db', name, tags: encodeTags({ owner: CI, label: `made ${new Date(time).toISOString()}` }), createTime: new Date(time) });
    }
    const listed = await storage.listSnapshots({ dataset: ref('db') }, T);
    expect(listed.snapshots.map((s) => [s.name, s.label])).toEqual(created.map(([name, time]) => [name, `made ${new Date(time).toISOString()}`]));
    expect(Math.abs(Number(listed.snapshots[0]!.createTime!.seconds) * 1000 - created[0]![1])).toBeLessThan(2000);
    // Snapshots are LVs, never volumes.
    expect((await storage.listVolumes({ backend: LVM }, T)).volumes.map((v) => v.ref?.name)).toEqual(['db']);

    const refused = await rejection(storage.deleteVolume({ volume: ref('db') }, T));
    expect(refused.code).toBe(Status.FAILED_PRECONDITION);
    expect(refused.details).toContain('has snapshots: db-a, db-b, db-c, db-d');
    // RecomputeQuota counts CI's snapshots from the VG.
    const recount = await access.recomputeQuota({ principal: CI }, T);
    expect(recount.notRecounted).toEqual([]);
    expect(await snapshotsUsed(access, CI)).toBe(4n);

    const retention = { keepLast: 1, keepDailyDays: 2 };
    const dry = await finished(ops, (await storage.pruneSnapshots({ dataset: ref('db'), retention, dryRun: true }, T)).operation);
    expect(dry.result.case === 'prunePlan' ? dry.result.value : undefined).toMatchObject({ kept: ['db-d', 'db-c'], deleted: ['db-b', 'db-a'], removedCount: 0, dryRun: true });
    const pruned = await finished(ops, (await storage.pruneSnapshots({ dataset: ref('db'), retention }, T)).operation);
    expect(pruned.result.case === 'prunePlan' ? pruned.result.value : undefined).toMatchObject({ removedCount: 2 });
    expect(await snapshotsUsed(access, CI)).toBe(2n);

    const { results } = await storage.deleteSnapshot({ dataset: ref('db'), snapshotNames: ['db-c', 'db-a'] }, T);
    expect(results.map((r) => r.status?.code)).toEqual([Status.OK, Status.NOT_FOUND]);
    expect(await snapshotsUsed(access, CI)).toBe(1n);
    expect((await storage.deleteVolume({ volume: ref('db'), deleteSnapshots: true }, T)).deletedSnapshots).toEqual(['db-d']);
    expect(await snapshotsUsed(access, CI)).toBe(0n);
    expect(await lvs()).toEqual([]);
  });

  it('refuses VGs outside lvm.vgs, and answers RBD calls with "RBD is not configured on this node"', async () => {
    const other = await rejection(storage.createVolume({ volume: { backend: LVM, pool: 'vg-other', name: 'x' }, sizeBytes: MIB }, T));
    expect(other.code).toBe(Status.INVALID_ARGUMENT);
    expect(other.details).toContain(`volume.pool: volume group "vg-other" is not one this node uses (lvm.vgs: ${lvm.vg})`);
    const rbdCalls: (() => Promise<unknown>)[] = [
      () => storage.createVolume({ volume: { backend: StorageBackend.RBD, pool: 'rbd', name: 'x' }, sizeBytes: MIB }, T),
      () => storage.listVolumes({ backend: StorageBackend.RBD }, T),
      () => storage.createRbdTemplateSnapshot({ pool: 'rbd', image: 'x', snapshot: 's' }, T),
      () => storage.cloneRbdFromTemplate({ templatePool: 'rbd', templateImage: 'x', templateSnapshot: 's', targetPool: 'rbd', targetImage: 'y' }, T),
    ];
    for (const call of rbdCalls) {
      const err = await rejection(call());
      expect(err.code).toBe(Status.FAILED_PRECONDITION);
      expect(err.details).toContain('RBD is not configured on this node');
    }
    expect(await storageGb(access)).toBe(0n);
    expect(daemon.logs()).not.toContain('internal error in handler');
  });
});

describe('LVM volumes in use by a VM', () => {
  it('refuses to delete an LV that a VM on this host has as a disk, naming the VM; force deletes it', async () => {
    await storage.createVolume({ volume: ref('inuse'), sizeBytes: 8n * MIB }, T);
    await defineTestDomain(libvirt, 'db-vm', '0000000000a1', `<disk type='block' device='disk'><source dev='/dev/${lvm.vg}/inuse'/><target dev='vdb' bus='virtio'/></disk>`);
    const refused = await rejection(storage.deleteVolume({ volume: ref('inuse') }, T));
    expect(refused.code).toBe(Status.FAILED_PRECONDITION);
    expect(refused.details).toContain('"db-vm"');
    expect((await lvs()).map((lv) => lv.lv_name)).toContain('inuse');
    await storage.deleteVolume({ volume: ref('inuse'), force: true }, T);
    expect((await lvs()).map((lv) => lv.lv_name)).not.toContain('inuse');
  });
});
