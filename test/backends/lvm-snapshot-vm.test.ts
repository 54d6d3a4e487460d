// LVM snapshots FOR REAL: this host kernel has no device-mapper, so the LvmBackend drives the real
// lvm2 of a QEMU guest that has it (scripts/lvm-vm-start; test/support/lvm-vm.ts): the exact argv
// the backend builds runs there, and its real output comes back through the exec layer.
// About a minute: the guest boots in ~15 s under TCG and each lvm command takes ~1 s there.
// DEBVISOR_SKIP_SLOW=1 skips it locally.
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LvmBackend } from '../../src/backends/lvm/lvm.js';
import { toStatus } from '../../src/server/errors.js';
import { lvmVmAvailable, startLvmVm, type LvmVm } from '../support/lvm-vm.js';
import { rejection } from '../support/rejection.js';

const MiB = 1024n * 1024n;
const skip = process.env.DEBVISOR_SKIP_SLOW === '1' || !lvmVmAvailable();
let vm: LvmVm | undefined;
let backend: LvmBackend;

describe.skipIf(skip)('LvmBackend snapshots in a device-mapper guest', () => {
  beforeAll(async () => {
    vm = await startLvmVm();
    // One command at a time: the guest serves one serial line.
    backend = new LvmBackend({ vgs: [vm.vg], lvmPath: vm.lvmPath, systemDir: vm.systemDir, maxConcurrent: 1 });
  }, 300_000);

  afterAll(async () => {
    await vm?.stop();
  });

  it('creates, lists and deletes real, active snapshots', async () => {
    await backend.createVolume({ pool: 'vg0', name: 'disk0', sizeBytes: 32n * MiB, tags: { env: 'ci' }, owner: 'user:alice' });
    const before = Date.now();
    const snap = await backend.createSnapshot({ pool: 'vg0', volume: 'disk0', name: 'disk0-pre', label: 'before upgrade ✓', owner: 'user:bob' });
    expect(snap).toMatchObject({ pool: 'vg0', volume: 'disk0', name: 'disk0-pre', label: 'before upgrade ✓', owner: 'user:bob', sizeBytes: 0n, protected: false, clones: [] });
    // Guest clock and host clock agree to within the boot time.
    expect(Math.abs(snap.createTime!.getTime() - before)).toBeLessThan(120_000);
    await backend.createSnapshot({ pool: 'vg0', volume: 'disk0', name: 'disk0-post', label: '', owner: 'user:bob' });
    expect((await backend.listSnapshots('vg0', 'disk0')).map((s) => s.name).sort()).toEqual(['disk0-post', 'disk0-pre']);
    expect((await backend.listVolumes('vg0')).map((v) => v.name)).toEqual(['disk0']);

    const exists = await rejection(backend.createSnapshot({ pool: 'vg0', volume: 'disk0', name: 'disk0-pre', label: '', owner: '' }));
    expect(exists).toMatchObject({ name: 'ExecError', kind: 'exists' });
    // An origin with active snapshots cannot be resized: a precise FAILED_PRECONDITION, not INTERNAL.
    const resize = await rejection(backend.resizeVolume('vg0', 'disk0', 64n * MiB, { shrink: false }));
    expect(toStatus(resize, 't')).toMatchObject({ code: Status.FAILED_PRECONDITION, details: 'LVM cannot resize a volume that has snapshots; delete its snapshots first (trace_id=t)' });

    await backend.deleteSnapshot('vg0', 'disk0', 'disk0-pre');
    expect((await backend.listSnapshots('vg0', 'disk0')).map((s) => s.name)).toEqual(['disk0-post']);
    await backend.deleteSnapshot('vg0', 'disk0', 'disk0-post');
    expect((await backend.resizeVolume('vg0', 'disk0', 64n * MiB, { shrink: false })).sizeBytes).toBe(64n * MiB);
    await backend.deleteVolume('vg0', 'disk0');
    expect(await backend.listVolumes('vg0')).toEqual([]);
  }, 180_000);

  it('refuses a snapshot larger than the free space with no_space', async () => {
    await backend.createVolume({ pool: 'vg0', name: 'big', sizeBytes: 160n * MiB, tags: {}, owner: '' });
    const err = await rejection(backend.createSnapshot({ pool: 'vg0', volume: 'big', name: 'big-snap', label: '', owner: '' }));
    expect(toStatus(err, 't').code).toBe(Status.RESOURCE_EXHAUSTED);
    await backend.deleteVolume('vg0', 'big');
  }, 60_000);
});
