// LVM snapshots and provisioning FOR REAL: this host kernel has no device-mapper, so LvmBackend and
// QemuImg drive the real lvm2 and qemu-img of a QEMU guest that has it (scripts/lvm-vm-start;
// test/support/lvm-vm.ts): the exact argv the backends build runs there, on active LVs with real
// /dev/vg0/* devices, and the real output comes back through the exec layer.
// One to two minutes: the guest boots in ~15 s under TCG and each command takes 1–3 s there.
// DEBVISOR_SKIP_SLOW=1 skips it locally.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LvmBackend } from '../../src/backends/lvm/lvm.js';
import { QemuImg } from '../../src/backends/qemu-img/qemu-img.js';
import { toStatus } from '../../src/rpc/errors.js';
import { identicalInGuest, lvmVmAvailable, startLvmVm, type LvmVm } from '../support/lvm-vm.js';
import { rejection } from '../support/rejection.js';

const MiB = 1024n * 1024n;
const skip = process.env.DEBVISOR_SKIP_SLOW === '1' || !lvmVmAvailable();
let vm: LvmVm | undefined;
let backend: LvmBackend;
let qemuImg: QemuImg;
let imagesDir: string | undefined;
const run = promisify(execFile);

describe.skipIf(skip)('LvmBackend and QemuImg in a device-mapper guest', () => {
  beforeAll(async () => {
    // Images to provision from, copied into the guest's /images: 4 MiB of random data then 4 MiB of
    // zeros as qcow2, and an all-0xAA raw image standing for a volume's previous content.
    imagesDir = mkdtempSync(join(tmpdir(), 'debvisor-vm-images-'));
    writeFileSync(join(imagesDir, 'disk.raw'), Buffer.concat([randomBytes(4 * 1024 * 1024), Buffer.alloc(4 * 1024 * 1024)]));
    await run('/usr/bin/qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', join(imagesDir, 'disk.raw'), join(imagesDir, 'disk.qcow2')]);
    rmSync(join(imagesDir, 'disk.raw'));
    writeFileSync(join(imagesDir, 'stale.raw'), Buffer.alloc(8 * 1024 * 1024, 0xaa));
    vm = await startLvmVm({ imagesDir });
    // One command at a time: the guest serves one serial line.
    backend = new LvmBackend({ vgs: [vm.vg], lvmPath: vm.lvmPath, maxConcurrent: 1 });
    // The image paths are the guest's (/images), which this process cannot stat; headers are read from the shared host directory.
    const hostDir = imagesDir;
    qemuImg = new QemuImg({
      qemuImgPath: vm.qemuImgPath,
      maxConcurrent: 1,
      checkFileVersions: false,
      readHeader: async (path, bytes) => (await readFile(join(hostDir, relative('/images', path)))).subarray(0, bytes),
    });
  }, 300_000);

  afterAll(async () => {
    await vm?.stop();
    if (imagesDir !== undefined) rmSync(imagesDir, { recursive: true, force: true });
  });

  it('provisions an image into a real LV device, leaving nothing of its previous content', async () => {
    const volume = await backend.createVolume({ pool: 'vg0', name: 'prov', sizeBytes: 8n * MiB, tags: {}, owner: 'user:alice' });
    const device = backend.imageTarget('vg0', volume.name);
    expect(device).toBe('/dev/vg0/prov');
    // The volume's previous life.
    await qemuImg.convert({ source: '/images/stale.raw', sourceFormat: 'raw', target: device, targetFormat: 'raw', targetExists: true });
    expect(await identicalInGuest(vm!, '/images/stale.raw', 'raw', device)).toBe(true);

    const info = await qemuImg.info('/images/disk.qcow2');
    expect(info).toMatchObject({ format: 'qcow2', virtualSizeBytes: 8n * MiB });
    const progress: number[] = [];
    await qemuImg.convert({ source: '/images/disk.qcow2', sourceFormat: info.format, target: device, targetFormat: 'raw', targetExists: true, onProgress: (p) => progress.push(p) });
    expect(progress.at(-1)).toBe(100);
    // Byte for byte, including the image's zero half over the old 0xAA.
    expect(await identicalInGuest(vm!, '/images/disk.qcow2', 'qcow2', device)).toBe(true);
    await backend.deleteVolume('vg0', 'prov');
  }, 180_000);

  it('creates, lists and deletes real, active snapshots', async () => {
    await backend.createVolume({ pool: 'vg0', name: 'disk0', sizeBytes: 32n * MiB, tags: { env: 'ci' }, owner: 'user:alice' });
    const before = Date.now();
    const snap = await backend.createSnapshot({ pool: 'vg0', volume: 'disk0', name: 'disk0-pre', label: 'before upgrade ✓', owner: 'user:bob' });
    expect(snap).toMatchObject({ pool: 'vg0', volume: 'disk0', name: 'disk0-pre', label: 'before upgrade ✓', owner: 'user:bob', sizeBytes: 0n, protected: false, clones: [] });
    // Guest clock and host clock agree to within the boot time.
    expect(Math.abs(snap.createTime!.getTime() - before)).toBeLessThan(120_000);
    await backend.createSnapshot({ pool: 'vg0', volume: 'disk0', name: 'disk0-post', label: '', owner: 'user:bob' });
    expect((await backend.listSnapshots('vg0', 'disk0')).map((s) => s.name).sort()).toEqual(['disk0-post', 'disk0-pre']);
    // An origin with active snapshots cannot be resized: a precise FAILED_PRECONDITION, not INTERNAL.
    const resize = await rejection(backend.resizeVolume('vg0', 'disk0', 64n * MiB, { shrink: false }));
    expect(toStatus(resize, 't')).toMatchObject({ code: Status.FAILED_PRECONDITION, details: 'LVM cannot resize a volume that has snapshots; delete its snapshots first (trace_id=t)' });

    await backend.deleteSnapshot('vg0', 'disk0', 'disk0-pre');
    await backend.deleteSnapshot('vg0', 'disk0', 'disk0-post');
    expect((await backend.resizeVolume('vg0', 'disk0', 64n * MiB, { shrink: false })).sizeBytes).toBe(64n * MiB);
    await backend.deleteVolume('vg0', 'disk0');
  }, 180_000);

  it('refuses a snapshot larger than the free space with no_space', async () => {
    await backend.createVolume({ pool: 'vg0', name: 'big', sizeBytes: 160n * MiB, tags: {}, owner: '' });
    const err = await rejection(backend.createSnapshot({ pool: 'vg0', volume: 'big', name: 'big-snap', label: '', owner: '' }));
    expect(toStatus(err, 't').code).toBe(Status.RESOURCE_EXHAUSTED);
    await backend.deleteVolume('vg0', 'big');
  }, 60_000);
});
