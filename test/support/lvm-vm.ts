// A QEMU guest with device-mapper for the LVM operations this host cannot do (snapshots):
// scripts/lvm-vm-start boots it (about 15 s under TCG; the kernel .deb is fetched once into .tools/),
// and VM_DIR/lvm, VM_DIR/qemu-img (scripts/lvm-vm-proxy) run their argv in the guest. Give the
// backends `lvmPath: vm.lvmPath` / `qemuImgPath: vm.qemuImgPath` and they drive the guest's real
// lvm (VG "vg0", active LVs with /dev/vg0/* nodes) and qemu-img; images from `imagesDir` are in /images.
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const SCRIPTS = resolve(dirname(fileURLToPath(import.meta.url)), '../../scripts');
const run = promisify(execFile);
export const QEMU_SYSTEM = '/usr/bin/qemu-system-x86_64';

export interface LvmVm {
  /** The stand-in to use as LvmBackend's lvmPath. */
  readonly lvmPath: string;
  /** The stand-in to use as QemuImg's qemuImgPath. */
  readonly qemuImgPath: string;
  readonly dir: string;
  /** A 256 MiB VG in guest RAM. */
  readonly vg: 'vg0';
  stop(): Promise<void>;
}

/** True when the guest can be booted here (qemu-system-x86, lvm2, apt for the kernel .deb, python3 for the proxy). */
export function lvmVmAvailable(): boolean {
  return existsSync(QEMU_SYSTEM) && existsSync('/sbin/lvm') && existsSync('/usr/bin/apt-get') && existsSync('/usr/bin/python3');
}

/**
 * `imagesDir`: files to copy into the guest's /images. `imagesAtHostPath`: the guest also shows them
 * at imagesDir's own (real) path, so a path the host's code computes under imagesDir is the same file
 * in the guest, and needs no mapping.
 */
export async function startLvmVm(options: { imagesDir?: string; imagesAtHostPath?: boolean } = {}): Promise<LvmVm> {
  let vmDir: string;
  const { imagesDir } = options;
  const env =
    imagesDir === undefined
      ? process.env
      : { ...process.env, IMAGES_DIR: imagesDir, ...(options.imagesAtHostPath === true ? { IMAGES_GUEST_PATH: realpathSync(imagesDir) } : {}) };
  try {
    vmDir = (await run(join(SCRIPTS, 'lvm-vm-start'), [], { timeout: 300_000, env })).stdout.trim();
  } catch (err) {
    throw new Error(`scripts/lvm-vm-start failed: ${(err as { stderr?: string }).stderr ?? ''}`, { cause: err });
  }
  const pid = Number(readFileSync(join(vmDir, 'qemu.pid'), 'utf8').trim());
  // A crashed suite must not leave QEMU running.
  const killAtExit = () => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  };
  process.once('exit', killAtExit);
  return {
    lvmPath: join(vmDir, 'lvm'),
    qemuImgPath: join(vmDir, 'qemu-img'),
    dir: vmDir,
    vg: 'vg0',
    async stop() {
      process.off('exit', killAtExit);
      await run(join(SCRIPTS, 'lvm-vm-stop'), [], { env: { ...process.env, VM_DIR: vmDir } });
    },
  };
}

/** `qemu-img compare` in the guest: true when `image` (read as `format`) and the raw `device` are identical byte for byte. */
export async function identicalInGuest(vm: LvmVm, image: string, format: string, device: string): Promise<boolean> {
  try {
    await run(vm.qemuImgPath, ['compare', '-f', format, '-F', 'raw', image, device]);
    return true;
  } catch (err) {
    if ((err as { code?: unknown }).code === 1) return false;
    throw err;
  }
}
