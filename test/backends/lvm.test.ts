// The LVM backend against REAL lvm2 tools on a metadata-only VG on a loop device
// (test/support/lvm.ts; activation = 0 because this kernel has no device-mapper).
// Real here: volume create/list/get/resize/delete, tags, every error path, and snapshot
// list/delete over real snapshot metadata (writeSnapshotMetadata). Snapshot *creation* cannot
// succeed on this kernel: it is tested for its precise, typed refusal.
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExecError } from '../../src/backends/exec.js';
import { LvmBackend } from '../../src/backends/lvm/lvm.js';
import { encodeTags } from '../../src/backends/lvm/tags.js';
import { InvalidArgumentError, toStatus } from '../../src/rpc/errors.js';
import { startLvm, writeSnapshotMetadata, type TestLvm } from '../support/lvm.js';
import { rejection } from '../support/rejection.js';

const MiB = 1024n * 1024n;
let lvm: TestLvm | undefined;
let backend: LvmBackend;
let vg: string;
let spawned = 0;

beforeAll(async () => {
  // 256 MiB: 63 extents of 4 MiB once the metadata area is taken.
  lvm = await startLvm({ sizeMiB: 256 });
  vg = lvm.vg;
  backend = new LvmBackend({ vgs: [vg], systemDir: lvm.systemDir, onSpawn: () => spawned++ });
});

afterAll(async () => {
  await lvm?.stop();
});

function expectExec(err: unknown, kind: string, code: Status, message: string): void {
  expect(err).toBeInstanceOf(ExecError);
  expect(err).toMatchObject({ kind, backend: 'lvm' });
  const status = toStatus(err, 't');
  expect(status.code).toBe(code);
  expect(status.details).toBe(`${message} (trace_id=t)`);
}

describe('LvmBackend volumes on a real VG', () => {
  it('starts empty', async () => {
    expect(backend.kind).toBe('lvm');
    expect(backend.pools).toEqual([vg]);
    expect(await backend.listVolumes(vg)).toEqual([]);
  });

  it('creates a linear LV with owner and hostile tags, rounded up to whole extents', async () => {
    const tags = { env: 'ci', 'a=b,c': 'x y#z%€ @', ['__proto__']: '"q"\\', empty: '' };
    const created = await backend.createVolume({ pool: vg, name: 'disk0', sizeBytes: 65n * MiB + 1n, tags, owner: 'user:alice@example.com' });
    expect(created).toMatchObject({ backend: 'lvm', pool: vg, name: 'disk0', sizeBytes: 68n * MiB, usedBytes: 68n * MiB, owner: 'user:alice@example.com' });
    expect(created.tags).toEqual(tags);
    expect(Math.abs(created.createTime!.getTime() - Date.now())).toBeLessThan(120_000);
    expect(await backend.getVolume(vg, 'disk0')).toEqual(created);
    await backend.createVolume({ pool: vg, name: 'disk1', sizeBytes: 4n * MiB, tags: {}, owner: '' });
    const list = await backend.listVolumes(vg);
    expect(list.map((v) => [v.name, v.owner, v.sizeBytes])).toEqual([
      ['disk0', 'user:alice@example.com', 68n * MiB],
      ['disk1', '', 4n * MiB],
    ]);
  });

  it('refuses an existing name and a size the VG cannot hold, with precise codes', async () => {
    expectExec(
      await rejection(backend.createVolume({ pool: vg, name: 'disk0', sizeBytes: 4n * MiB, tags: {}, owner: 'x' })),
      'exists',
      Status.ALREADY_EXISTS,
      'a logical volume with that name already exists in the volume group',
    );
    expectExec(
      await rejection(backend.createVolume({ pool: vg, name: 'huge', sizeBytes: 10n * 1024n * MiB, tags: {}, owner: 'x' })),
      'no_space',
      Status.RESOURCE_EXHAUSTED,
      'the volume group has not enough free space',
    );
    expect((await backend.listVolumes(vg)).map((v) => v.name)).toEqual(['disk0', 'disk1']);
  });

  it('grows, shrinks only when asked, and treats the current size as a no-op', async () => {
    expect((await backend.resizeVolume(vg, 'disk1', 16n * MiB, { shrink: false })).sizeBytes).toBe(16n * MiB);
    // A grow call never shrinks: lvextend refuses a smaller size.
    const refused = await rejection(backend.resizeVolume(vg, 'disk1', 8n * MiB, { shrink: false }));
    expect(refused).toMatchObject({ name: 'ExecError', kind: 'failed' });
    expect((await backend.getVolume(vg, 'disk1')).sizeBytes).toBe(16n * MiB);
    expect((await backend.resizeVolume(vg, 'disk1', 8n * MiB, { shrink: true })).sizeBytes).toBe(8n * MiB);
    expect((await backend.resizeVolume(vg, 'disk1', 8n * MiB, { shrink: false })).sizeBytes).toBe(8n * MiB);
    expectExec(
      await rejection(backend.resizeVolume(vg, 'disk1', 100n * 1024n * MiB, { shrink: false })),
      'no_space',
      Status.RESOURCE_EXHAUSTED,
      'the volume group has not enough free space',
    );
    expectExec(await rejection(backend.resizeVolume(vg, 'nosuch', 8n * MiB, { shrink: false })), 'not_found', Status.NOT_FOUND, 'the logical volume does not exist');
  });

  it('deletes, then reports not found', async () => {
    await backend.deleteVolume(vg, 'disk1');
    expectExec(await rejection(backend.getVolume(vg, 'disk1')), 'not_found', Status.NOT_FOUND, 'the logical volume does not exist');
    expectExec(await rejection(backend.deleteVolume(vg, 'disk1')), 'not_found', Status.NOT_FOUND, 'the logical volume does not exist');
    expect((await backend.listVolumes(vg)).map((v) => v.name)).toEqual(['disk0']);
  });

  it('refuses VGs outside the configuration and bad names before spawning anything', async () => {
    const before = spawned;
    const other = await rejection(backend.listVolumes('vg-other'));
    expect(other).toBeInstanceOf(InvalidArgumentError);
    expect(toStatus(other, 't').code).toBe(Status.INVALID_ARGUMENT);
    for (const name of ['-rf', 'a/b', '..', 'snapshot1', 'x_tdata', 'a b', '']) {
      expect(await rejection(backend.getVolume(vg, name))).toBeInstanceOf(InvalidArgumentError);
    }
    expect(await rejection(backend.createVolume({ pool: vg, name: 'ok', sizeBytes: 0n, tags: {}, owner: '' }))).toBeInstanceOf(InvalidArgumentError);
    expect(await rejection(backend.createVolume({ pool: vg, name: 'ok', sizeBytes: MiB, tags: { '': 'v' }, owner: '' }))).toBeInstanceOf(InvalidArgumentError);
    expect(() => backend.imageTarget(vg, '../etc')).toThrow(InvalidArgumentError);
    expect(spawned).toBe(before);
  });

  it('names the device qemu-img writes into', () => {
    expect(backend.imageTarget(vg, 'disk0')).toBe(`/dev/${vg}/disk0`);
  });

  it('passes cancellation to the command', async () => {
    const err = await rejection(backend.listVolumes(vg, { signal: AbortSignal.abort() }));
    expectExec(err, 'cancelled', Status.CANCELLED, 'the backend command was cancelled');
  });
});

describe('LvmBackend snapshots on a real VG', () => {
  it('refuses to create a snapshot on a kernel without device-mapper: a precise FAILED_PRECONDITION', async () => {
    const err = await rejection(backend.createSnapshot({ pool: vg, volume: 'disk0', name: 'snap-new', label: 'l', owner: 'user:bob' }));
    expectExec(err, 'unsupported', Status.FAILED_PRECONDITION, 'LVM snapshots need the device-mapper kernel driver, which this host does not have');
    expect((err as ExecError).stderr).toContain("Can't create snapshot without using device-mapper kernel driver");
    expect((err as ExecError).exitCode).toBe(5);
    // Nothing was left behind.
    expect((await backend.listVolumes(vg)).map((v) => v.name)).toEqual(['disk0']);
    // A missing origin is reported as such (lvm checks it before device-mapper).
    expectExec(
      await rejection(backend.createSnapshot({ pool: vg, volume: 'nosuch', name: 'snap-new', label: '', owner: '' })),
      'not_found',
      Status.NOT_FOUND,
      'the logical volume does not exist',
    );
    expect(await rejection(backend.createSnapshot({ pool: vg, volume: 'disk0', name: 'snapshot0', label: '', owner: '' }))).toBeInstanceOf(InvalidArgumentError);
  });

  it('lists, guards and deletes real snapshot metadata', async () => {
    const l = lvm!;
    await writeSnapshotMetadata(l, { origin: 'disk0', name: 'disk0-b', tags: encodeTags({ owner: 'user:bob', label: 'second' }), createTime: new Date('2026-02-01T00:00:00Z') });
    await writeSnapshotMetadata(l, { origin: 'disk0', name: 'disk0-a', tags: encodeTags({ owner: 'user:bob', label: 'before upgrade ✓' }), createTime: new Date('2026-01-01T00:00:00Z') });
    const snaps = await backend.listSnapshots(vg, 'disk0');
    expect(snaps).toEqual([
      { pool: vg, volume: 'disk0', name: 'disk0-a', label: 'before upgrade ✓', owner: 'user:bob', createTime: new Date('2026-01-01T00:00:00Z'), sizeBytes: 0n, protected: false, clones: [] },
      { pool: vg, volume: 'disk0', name: 'disk0-b', label: 'second', owner: 'user:bob', createTime: new Date('2026-02-01T00:00:00Z'), sizeBytes: 0n, protected: false, clones: [] },
    ]);
    // Snapshots are LVs, but never volumes.
    expect((await backend.listVolumes(vg)).map((v) => v.name)).toEqual(['disk0']);
    expectExec(await rejection(backend.getVolume(vg, 'disk0-a')), 'not_found', Status.NOT_FOUND, 'the logical volume does not exist');
    expectExec(await rejection(backend.deleteVolume(vg, 'disk0-a')), 'not_found', Status.NOT_FOUND, 'the logical volume does not exist');
    expectExec(await rejection(backend.resizeVolume(vg, 'disk0-a', 64n * MiB, { shrink: false })), 'not_found', Status.NOT_FOUND, 'the logical volume does not exist');
    // A snapshot name under the wrong volume, a volume as a snapshot, a missing one.
    await backend.createVolume({ pool: vg, name: 'disk2', sizeBytes: 4n * MiB, tags: {}, owner: '' });
    expect(await backend.listSnapshots(vg, 'disk2')).toEqual([]);
    for (const [volume, name] of [['disk2', 'disk0-a'], ['disk0', 'disk2'], ['disk0', 'nosuch']] as const) {
      expectExec(await rejection(backend.deleteSnapshot(vg, volume, name)), 'not_found', Status.NOT_FOUND, 'the snapshot does not exist');
    }
    expectExec(await rejection(backend.listSnapshots(vg, 'nosuch')), 'not_found', Status.NOT_FOUND, 'the logical volume does not exist');
    // A new snapshot's name collides with the snapshot LV: the VG is one namespace.
    expectExec(
      await rejection(backend.createVolume({ pool: vg, name: 'disk0-a', sizeBytes: 4n * MiB, tags: {}, owner: '' })),
      'exists',
      Status.ALREADY_EXISTS,
      'a logical volume with that name already exists in the volume group',
    );

    await backend.deleteSnapshot(vg, 'disk0', 'disk0-a');
    expect((await backend.listSnapshots(vg, 'disk0')).map((s) => s.name)).toEqual(['disk0-b']);
    // The origin is untouched.
    expect(await backend.getVolume(vg, 'disk0')).toMatchObject({ sizeBytes: 68n * MiB, owner: 'user:alice@example.com' });
  });

  it('refuses to delete an origin while it has snapshots (lvremove -f would take them along)', async () => {
    expect(await backend.listSnapshots(vg, 'disk0')).toHaveLength(1);
    expectExec(await rejection(backend.deleteVolume(vg, 'disk0')), 'busy', Status.ABORTED, 'the volume has snapshots; delete them first');
    expect((await backend.listSnapshots(vg, 'disk0')).map((s) => s.name)).toEqual(['disk0-b']);
    await backend.deleteSnapshot(vg, 'disk0', 'disk0-b');
    await backend.deleteVolume(vg, 'disk0');
    expect((await backend.listVolumes(vg)).map((v) => v.name)).toEqual(['disk2']);
  });
});
