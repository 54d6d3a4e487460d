// A QEMU guest with device-mapper for the LVM operations this host cannot do (snapshots):
// scripts/lvm-vm-start boots it (about 15 s under TCG; the kernel .deb is fetched once into .tools/),
// and scripts/lvm-vm-proxy is an `lvm` binary that runs its argv in the guest. Give the backend
// `lvmPath: vm.lvmPath, systemDir: vm.systemDir` and it drives the guest's real lvm on VG "vg0".
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const SCRIPTS = resolve(dirname(fileURLToPath(import.meta.url)), '../../scripts');
const run = promisify(execFile);
export const QEMU_SYSTEM = '/usr/bin/qemu-system-x86_64';

export interface LvmVm {
  /** The proxy to use as the backend's lvmPath. */
  readonly lvmPath: string;
  /** The VM directory, passed as LVM_SYSTEM_DIR (the proxy finds the guest's socket there). */
  readonly systemDir: string;
  /** A 256 MiB VG in guest RAM. */
  readonly vg: 'vg0';
  stop(): Promise<void>;
}

/** True when the guest can be booted here (qemu-system-x86, lvm2, apt for the kernel .deb, python3 for the proxy). */
export function lvmVmAvailable(): boolean {
  return existsSync(QEMU_SYSTEM) && existsSync('/sbin/lvm') && existsSync('/usr/bin/apt-get') && existsSync('/usr/bin/python3');
}

export async function startLvmVm(): Promise<LvmVm> {
  let vmDir: string;
  try {
    vmDir = (await run(join(SCRIPTS, 'lvm-vm-start'), [], { timeout: 300_000 })).stdout.trim();
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
    lvmPath: join(SCRIPTS, 'lvm-vm-proxy'),
    systemDir: vmDir,
    vg: 'vg0',
    async stop() {
      process.off('exit', killAtExit);
      await run(join(SCRIPTS, 'lvm-vm-stop'), [], { env: { ...process.env, VM_DIR: vmDir } });
    },
  };
}
