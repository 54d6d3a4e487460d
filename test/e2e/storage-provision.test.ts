// ProvisionVolume end to end: the REAL daemon with a REAL Ceph, a REAL metadata-only LVM VG and
// real qemu-img. Image paths are confined to DEBVISOR_RPCD_IMAGES_DIR (absolute, "..", symlinks
// out, missing files refused at once with INVALID_ARGUMENT naming image_path); the format is
// detected from the header and given to qemu-img with -f; a qcow2 is written into RBD for real through an `rbd:` target and read
// back. LVM has no /dev/VG/LV on this kernel: the operation fails at the write and removes the
// LV it made (only that), and the qemu-img argv into the LV device is checked on its own.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { status as Status } from '@grpc/grpc-js';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LvmBackend } from '../../src/backends/lvm/lvm.js';
import { QemuImg } from '../../src/backends/qemu-img/qemu-img.js';
import type { SpawnEvent } from '../../src/backends/exec.js';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { OperationKind, OperationService, OperationState } from '../../src/gen/debvisor/v1/operation_pb.js';
import { StorageService } from '../../src/gen/debvisor/v1/storage_pb.js';
import { StorageBackend } from '../../src/gen/debvisor/v1/storage_types_pb.js';
import type { QuotaManager } from '../../src/quota/manager.js';
import { StorageManager } from '../../src/storage/manager.js';
import { RBD, startCeph, type TestCeph } from '../support/ceph.js';
import { ctlOn } from '../support/ctl.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { startLibvirt, type TestLibvirt } from '../support/libvirt.js';
import { lvmEnv, startLvm, type TestLvm } from '../support/lvm.js';
import { rejection } from '../support/security.js';
import { finished, MIB, NO_RATE_LIMITS, storageBackendsEnv, storageGb, T, type Client } from '../support/storage.js';

const run = promisify(execFile);
const QEMU_IMG = '/usr/bin/qemu-img';
const POOL = 'images-pool';
const RAW_BYTES = 4 * 1024 * 1024;

let ceph: TestCeph;
let lvm: TestLvm;
let libvirt: TestLibvirt;
let dir: string;
let images: string;
let daemon: RunningDaemon;
let storage: Client<typeof StorageService>;
let access: Client<typeof AccessService>;
let ops: Client<typeof OperationService>;
let pattern: Buffer;

beforeAll(async () => {
  [ceph, lvm, libvirt] = await Promise.all([startCeph({ pools: [POOL] }), startLvm({ sizeMiB: 256 }), startLibvirt()]);
  dir = await mkdtemp(join(tmpdir(), 'debvisor-provision-'));
  images = join(dir, 'images');
  await mkdir(join(images, 'linux'), { recursive: true });
  // A raw image with a recognisable pattern, the same image as qcow2, a qcow2 with a backing file,
  // a file outside the directory and a symlink to it.
  pattern = Buffer.alloc(RAW_BYTES);
  for (let i = 0; i < RAW_BYTES; i += 4) pattern.writeUInt32LE(i ^ 0x5a5a5a5a, i);
  await writeFile(join(images, 'disk.raw'), pattern);
  await run(QEMU_IMG, ['convert', '-f', 'raw', '-O', 'qcow2', join(images, 'disk.raw'), join(images, 'linux', 'disk.qcow2')]);
  await run(QEMU_IMG, ['create', '-f', 'qcow2', '-b', join(images, 'linux', 'disk.qcow2'), '-F', 'qcow2', join(images, 'overlay.qcow2')]);
  await writeFile(join(dir, 'outside.raw'), pattern);
  await symlink(join(dir, 'outside.raw'), join(images, 'escape.raw'));
  daemon = await startDaemon({
    env: storageBackendsEnv({ cephConf: ceph.conf, pools: [POOL], lvm, imagesDir: images, libvirtUri: libvirt.uri }),
    config: NO_RATE_LIMITS,
  });
  storage = await clientFor(StorageService, daemon);
  access = await clientFor(AccessService, daemon);
  ops = await clientFor(OperationService, daemon);
});

afterAll(async () => {
  for (const c of [storage, access, ops] as ({ close(): void } | undefined)[]) c?.close();
  await (daemon as RunningDaemon | undefined)?.cleanup();
  await Promise.all([(ceph as TestCeph | undefined)?.stop(), (lvm as TestLvm | undefined)?.stop(), (libvirt as TestLibvirt | undefined)?.stop()]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

const rbdRef = (name: string) => ({ backend: StorageBackend.RBD, pool: POOL, name });
const lvmRef = (name: string) => ({ backend: StorageBackend.LVM, pool: lvm.vg, name });

describe('ProvisionVolume', () => {
  it('refuses image paths outside the images directory at once, naming image_path, and creates nothing', async () => {
    const cases: [string, string][] = [
      ['/etc/passwd', 'absolute'],
      ['../outside.raw', "'..'"],
      ['linux/../../outside.raw', "'..'"],
      ['escape.raw', 'outside the images directory'],
      ['missing.raw', 'no such image'],
      ['linux', 'not a regular file'],
      ['rbd:images-pool/x', 'protocol'],
      ['', 'required'],
    ];
    for (const [imagePath, problem] of cases) {
      const err = await rejection(storage.provisionVolume({ volume: rbdRef('never'), sizeBytes: 8n * MIB, imagePath }, T));
      expect({ imagePath, code: err.code }).toEqual({ imagePath, code: Status.INVALID_ARGUMENT });
      expect(err.details).toMatch(/^image_path: /);
      expect(err.details).toContain(problem);
    }
    // qemu-img's own safety checks: a backing file could read anything on the host.
    const backed = await rejection(storage.provisionVolume({ volume: rbdRef('never'), sizeBytes: 8n * MIB, imagePath: 'overlay.qcow2' }, T));
    expect(backed.code).toBe(Status.INVALID_ARGUMENT);
    expect(backed.details).toContain('backing file');
    const small = await rejection(storage.provisionVolume({ volume: rbdRef('never'), sizeBytes: MIB, imagePath: 'linux/disk.qcow2' }, T));
    expect(small.code).toBe(Status.INVALID_ARGUMENT);
    expect(small.details).toContain(`size_bytes: ${MIB} is smaller than the image's virtual size of ${RAW_BYTES} bytes`);
    expect((await storage.listVolumes({}, T)).volumes).toEqual([]);
    expect(await storageGb(access)).toBe(0n);
  });

  it('detects a qcow2 image and writes it into a new RBD image for real', async () => {
    const { operation } = await storage.provisionVolume({ volume: rbdRef('vm-disk'), sizeBytes: 8n * MIB, imagePath: 'linux/disk.qcow2', tags: { os: 'linux' } }, T);
    expect(operation?.kind).toBe(OperationKind.PROVISION_VOLUME);
    expect(operation?.target).toBe(`rbd:${POOL}/vm-disk`);
    const done = await finished(ops, operation);
    expect(done.state).toBe(OperationState.SUCCEEDED);
    expect(done.result).toEqual({ case: 'provisionedVolume', value: expect.objectContaining({ backend: StorageBackend.RBD, pool: POOL, name: 'vm-disk' }) as unknown });
    const [volume] = (await storage.listVolumes({ pool: POOL }, T)).volumes;
    expect(volume).toMatchObject({ sizeBytes: 8n * MIB, tags: { os: 'linux' }, owner: 'spiffe://debvisor/admin/admin' });
    expect(await storageGb(access)).toBe(1n);
    // Read it back: the raw bytes of the qcow2's content, then zeros.
    const exported = join(dir, 'exported.raw');
    await run(RBD, ['--conf', ceph.conf, 'export', `${POOL}/vm-disk`, exported]);
    const back = await readFile(exported);
    expect(back.length).toBe(8 * 1024 * 1024);
    expect(back.subarray(0, RAW_BYTES).equals(pattern)).toBe(true);
    expect(back.subarray(RAW_BYTES).every((b) => b === 0)).toBe(true);

    // The name is taken now: refused at once, and the existing image is left alone.
    const taken = await rejection(storage.provisionVolume({ volume: rbdRef('vm-disk'), sizeBytes: 8n * MIB, imagePath: 'disk.raw' }, T));
    expect(taken.code).toBe(Status.ALREADY_EXISTS);
    expect(taken.details).toContain('volume.name: volume rbd:images-pool/vm-disk already exists');
    expect((await storage.listVolumes({ pool: POOL }, T)).volumes).toHaveLength(1);
    await storage.deleteVolume({ volume: rbdRef('vm-disk') }, T);
    expect(await storageGb(access)).toBe(0n);
  });

  it('debvisorctl volume provision waits for the operation and prints it: exit 0 when it succeeds, 1 when it fails or is refused', async () => {
    const ok = await ctlOn(daemon, 'volume', 'provision', 'rbd', POOL, 'cli-disk', '--image', 'linux/disk.qcow2', '--size', '8MiB', '--tag', 'os=linux');
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/^state: +succeeded$/m);
    expect((await storage.listVolumes({ pool: POOL }, T)).volumes).toMatchObject([{ ref: { name: 'cli-disk' }, sizeBytes: 8n * MIB, tags: { os: 'linux' } }]);
    // Into LVM the write cannot run on this kernel (see below): the operation fails.
    const failed = await ctlOn(daemon, 'volume', 'provision', 'lvm', lvm.vg, 'cli-lv', '--image', 'disk.raw', '--size', '8MiB');
    expect(failed.code).toBe(1);
    expect(failed.stdout).toMatch(/^state: +failed$/m);
    const escape = await ctlOn(daemon, 'volume', 'provision', 'rbd', POOL, 'cli-escape', '--image', '../outside.raw', '--size', '8MiB');
    expect(escape.code).toBe(1);
    expect(escape.stderr).toMatch(/^debvisorctl: INVALID_ARGUMENT: image_path: .*\(trace_id=[0-9a-f]+\)\n$/);
    await storage.deleteVolume({ volume: rbdRef('cli-disk') }, T);
    expect(await storageGb(access)).toBe(0n);
  });

  it('into LVM: fails at the write (no /dev/VG/LV on this kernel), removes only the LV it made and gives the quota back', async () => {
    await storage.createVolume({ volume: lvmRef('keep-me'), sizeBytes: 8n * MIB }, T);
    const { operation } = await storage.provisionVolume({ volume: lvmRef('from-image'), sizeBytes: 8n * MIB, imagePath: 'disk.raw' }, T);
    const done = await finished(ops, operation);
    expect(done.state).toBe(OperationState.FAILED);
    const { stdout } = await run('/sbin/lvm', ['lvs', '--noheadings', '-o', 'lv_name', lvm.vg], { env: lvmEnv(lvm) });
    expect(stdout.split('\n').map((l) => l.trim()).filter(Boolean)).toEqual(['keep-me']);
    expect(await storageGb(access)).toBe(1n);
    await storage.deleteVolume({ volume: lvmRef('keep-me') }, T);
  });

  it('into LVM: converts the detected format to raw into the LV device (argv checked; the write itself cannot run here)', async () => {
    const spawned: SpawnEvent[] = [];
    const registry = new Registry();
    const qemuImg = new QemuImg({ registry, onSpawn: (event) => spawned.push(event) });
    const lvmBackend = new LvmBackend({ vgs: [lvm.vg], systemDir: lvm.systemDir, registry, onSpawn: (event) => spawned.push(event) });
    const quotaCalls: string[] = [];
    const quotas = {
      consume: (principal: string, resource: string, amount: number) => Promise.resolve(quotaCalls.push(`consume ${principal} ${resource} ${amount}`)),
      release: (principal: string, resource: string, amount: number) => Promise.resolve(void quotaCalls.push(`release ${principal} ${resource} ${amount}`)),
    } as unknown as QuotaManager;
    const manager = new StorageManager({
      backends: { lvm: lvmBackend },
      quotas,
      imagesDir: () => images,
      images: {
        info: (path, options) => qemuImg.info(path, options),
        convert: (source, sourceFormat, target, options) => qemuImg.convert({ source, sourceFormat, target, targetFormat: 'raw', targetExists: true, ...options }),
      },
    });
    const key = { backend: 'lvm' as const, pool: lvm.vg, name: 'argv-check' };
    await expect(manager.provision(key, { sizeBytes: 8n * MIB, tags: {}, owner: 'ci', imagePath: 'linux/disk.qcow2' })).rejects.toThrow();
    const qemu = spawned.filter((e) => e.backend === 'qemu-img').map((e) => e.args);
    expect(qemu).toEqual([
      // The format is detected from the header by the daemon; qemu-img never probes.
      ['info', '--output=json', '-f', 'qcow2', join(images, 'linux', 'disk.qcow2')],
      ['convert', '-p', '-f', 'qcow2', '-O', 'raw', '-n', join(images, 'linux', 'disk.qcow2'), `/dev/${lvm.vg}/argv-check`],
    ]);
    // The LV was made for the write and removed after it failed.
    expect(spawned.filter((e) => e.backend === 'lvm').map((e) => e.args[0])).toEqual(expect.arrayContaining(['lvcreate', 'lvremove']));
    await expect(lvmBackend.getVolume(lvm.vg, 'argv-check')).rejects.toMatchObject({ kind: 'not_found' });
  });
});
