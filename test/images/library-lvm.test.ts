// Issue #24's LVM read-back: an image imported into the REAL image library over HTTP (a real server on
// loopback; the policy allow-lists 127.0.0.0/8 and plain http, as the other image tests do), then a
// REAL LVM volume provisioned from it by name through ProvisionVolume's own steps
// (libraryImageSource → inspectImage → refuseExisting → use → provision), read back byte for byte.
// This kernel has no device-mapper, so the storage side is the daemon's own createStorage() wired to
// the lvm and qemu-img of a QEMU guest that has it (scripts/lvm-vm-start; docs/lvm-test-vm.md).
// The guest is booted after the import with the library's directory copied in and shown at the same
// absolute path, so the paths the library and the storage manager compute work there unchanged.
// One to two minutes: the guest boots in ~15 s under TCG and each command takes 1–3 s there.
// DEBVISOR_SKIP_SLOW=1 skips it locally.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, realpath, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QemuImg } from '../../src/backends/qemu-img/qemu-img.js';
import { configSchema, type Config } from '../../src/config/schema.js';
import type { ImageLibrary } from '../../src/images/library.js';
import { createImageLibrary } from '../../src/images/setup.js';
import { libraryImageSource } from '../../src/images/source.js';
import { QuotaManager } from '../../src/quota/manager.js';
import type { Principal } from '../../src/rpc/principal.js';
import type { StorageManager } from '../../src/storage/manager.js';
import { IMAGE_DIGEST_TAG, type VolumeKey } from '../../src/storage/names.js';
import { createStorage } from '../../src/storage/setup.js';
import { LeaseHolder } from '../../src/store/lease-holder.js';
import { createRepositories } from '../../src/store/repositories.js';
import type { Store } from '../../src/store/store.js';
import { sha256Hex, startHttpImageServer, type ImageServer } from '../support/image-server.js';
import { identicalInGuest, lvmVmAvailable, startLvmVm, type LvmVm } from '../support/lvm-vm.js';
import { embeddedHarness, type StoreHarness } from '../support/store-harness.js';

const MiB = 1024n * 1024n;
const skip = process.env.DEBVISOR_SKIP_SLOW === '1' || !lvmVmAvailable();
const run = promisify(execFile);
const silent = pino({ level: 'silent' });
const alice: Principal = { id: 'user:alice', kind: 'user' };
const IMAGE_NAME = `debian-lvm-${Math.random().toString(36).slice(2, 8)}`;

let harness: StoreHarness | undefined;
let store: Store | undefined;
let lease: LeaseHolder | undefined;
let server: ImageServer | undefined;
let libraryDir: string | undefined;
let workDir: string | undefined;
let vm: LvmVm | undefined;
let library: ImageLibrary;
let quotas: QuotaManager;
let imageBytes: Buffer;
let imageSha256: string;

function configOf(overrides: Record<string, unknown>): Config {
  return configSchema.parse({
    node: { name: 'lvm-images' },
    images_dir: libraryDir,
    images: { allow_http: true, allowed_networks: ['127.0.0.0/8'] },
    quota: { recompute_min_interval_seconds: 0 },
    ...overrides,
  });
}

describe.skipIf(skip)('a library image provisioned into a real LVM volume (device-mapper guest)', () => {
  beforeAll(async () => {
    harness = await embeddedHarness();
    store = await harness.open();
    const repos = createRepositories(store);
    lease = new LeaseHolder(store, 15, silent);
    const openedStore = store;
    const openedLease = lease;
    libraryDir = await realpath(await mkdtemp(join(tmpdir(), 'debvisor-library-')));
    workDir = await mkdtemp(join(tmpdir(), 'debvisor-library-src-'));
    const config = configOf({});
    quotas = new QuotaManager(openedStore, repos, () => config, () => openedLease.lease());
    // Import runs before the guest boots (the guest gets its files at boot), so the library inspects with
    // this host's qemu-img, the same binary the guest runs.
    library = createImageLibrary({ config, settings: () => config, repos, quotas, inspector: new QemuImg({ allowedFormats: config.images.allowed_formats }), registry: new Registry(), log: silent });

    // 4 MiB of random data then 4 MiB of zeros, as qcow2 made by qemu-img: served over HTTP.
    const raw = join(workDir, 'disk.raw');
    await writeFile(raw, Buffer.concat([randomBytes(4 * 1024 * 1024), Buffer.alloc(4 * 1024 * 1024)]));
    await run('/usr/bin/qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, join(workDir, 'disk.qcow2')]);
    imageBytes = await readFile(join(workDir, 'disk.qcow2'));
    imageSha256 = sha256Hex(imageBytes);
    server = await startHttpImageServer();
    server.files.set('/disk.qcow2', { body: imageBytes });
  }, 300_000);

  afterAll(async () => {
    await vm?.stop();
    await server?.close();
    await lease?.release();
    await store?.close();
    await harness?.cleanup();
    for (const dir of [libraryDir, workDir]) if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  /** The physical extents an LV occupies, as lvm reports them ("/dev/loop0:0-1"). */
  async function extentsOf(lv: string): Promise<string> {
    return (await run(vm!.lvmPath, ['lvs', '--noheadings', '-o', 'seg_pe_ranges', `vg0/${lv}`])).stdout.trim();
  }

  it('imports over HTTP, then provisions an LV from the image by name and reads it back byte for byte with its lineage', async () => {
    const stages: string[] = [];
    const imported = await library.import(
      { url: `${server!.origin}/disk.qcow2`, sha256: imageSha256, name: IMAGE_NAME, format: 'qcow2', replaceAlias: false, owner: alice.id },
      { signal: new AbortController().signal, onProgress: (_pct, stage) => stages.push(stage) },
    );
    expect(imported.outcome).toBe('downloaded');
    expect(imported.record).toMatchObject({ sha256: imageSha256, format: 'qcow2', size_bytes: imageBytes.length });
    expect(server!.log.map((r) => r.path)).toEqual(['/disk.qcow2']);
    const published = library.pathOf(imageSha256);
    expect(published).toBe(join(libraryDir!, 'sha256', imageSha256));
    expect(sha256Hex(await readFile(published))).toBe(imageSha256);

    // A stale image outside sha256/ (the library never looks there), standing for a volume's previous content.
    const stale = join(libraryDir!, 'stale.raw');
    await writeFile(stale, Buffer.alloc(8 * 1024 * 1024, 0xaa));
    vm = await startLvmVm({ imagesDir: libraryDir!, imagesAtHostPath: true });
    // The daemon's own storage wiring (src/storage/setup.ts), pointed at the guest's lvm and qemu-img.
    // qemu-img's header read and file-version check see the host's file, which the guest's is a copy of.
    const storageConfig = configOf({ lvm: { vgs: [vm.vg], lvm_path: vm.lvmPath, max_concurrent: 1 }, qemu_img: { path: vm.qemuImgPath } });
    const storage: StorageManager = createStorage(storageConfig, () => storageConfig, quotas, new Registry(), () => Promise.resolve([]));
    const lvm = storage.backend('lvm');

    // The LV's previous life: 0xAA over the extents the provisioned volume will get next.
    await lvm.createVolume({ pool: 'vg0', name: 'prev', sizeBytes: 8n * MiB, tags: {}, owner: alice.id });
    await run(vm.qemuImgPath, ['convert', '-n', '-f', 'raw', '-O', 'raw', stale, '/dev/vg0/prev']);
    expect(await identicalInGuest(vm, stale, 'raw', '/dev/vg0/prev')).toBe(true);
    const staleExtents = await extentsOf('prev');
    await lvm.deleteVolume('vg0', 'prev');

    // ProvisionVolume with `image: <name>`: resolve, inspect and refuse an existing name at call time, then
    // the operation's work with the image held in use.
    const key: VolumeKey = { backend: 'lvm', pool: 'vg0', name: 'from-library' };
    const source = await libraryImageSource(library, IMAGE_NAME, alice, 'image');
    expect(source).toEqual({ imagePath: `sha256/${imageSha256}`, imageSha256 });
    const { path, info } = await storage.inspectImage(source.imagePath, 8n * MiB);
    expect(path).toBe(published);
    expect(info).toMatchObject({ format: 'qcow2', virtualSizeBytes: 8n * MiB });
    await storage.refuseExisting(key, 'volume.name');
    const release = library.use(source.imageSha256);
    const progress: number[] = [];
    let volume;
    try {
      volume = await storage.provision(
        key,
        { sizeBytes: 8n * MiB, tags: { env: 'ci' }, owner: alice.id, imagePath: source.imagePath, imageSha256: source.imageSha256 },
        { onProgress: (pct) => progress.push(pct) },
      );
    } finally {
      release();
    }
    expect(volume).toMatchObject({ backend: 'lvm', pool: 'vg0', name: 'from-library', sizeBytes: 8n * MiB });
    expect(progress.at(-1)).toBeGreaterThan(98);
    expect(await extentsOf('from-library')).toBe(staleExtents);

    // Byte for byte against the library's file, including the image's zero half over the old 0xAA.
    const device = lvm.imageTarget('vg0', 'from-library');
    expect(device).toBe('/dev/vg0/from-library');
    expect(await identicalInGuest(vm, published, 'qcow2', device)).toBe(true);
    expect(await identicalInGuest(vm, stale, 'raw', device)).toBe(false);
    // Lineage: the digest in the reserved tag, beside the user's own, as the real lvs reads it back.
    const listed = await lvm.getVolume('vg0', 'from-library');
    expect(listed.tags).toMatchObject({ env: 'ci', [IMAGE_DIGEST_TAG]: imageSha256 });
    expect(listed.owner).toBe(alice.id);

    await storage.deleteVolume(key, false);
  }, 420_000);
});
