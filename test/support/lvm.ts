// A metadata-only LVM volume group on a loop device for tests, made by scripts/lvm-test-start
// (one implementation for scripts, CI and tests): a private lvm.conf with activation = 0 and a
// filter accepting only that loop device, reached through LVM_SYSTEM_DIR. Every call gets its
// own directory and VG name, so parallel suites never see each other's volumes.
// This kernel has no device-mapper: LVs are never activated (no /dev/VG/LV) and snapshots fail.
// Needs root and Debian lvm2. stop() is idempotent and also runs if the test process exits early.
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const SCRIPTS = resolve(dirname(fileURLToPath(import.meta.url)), '../../scripts');
const START = join(SCRIPTS, 'lvm-test-start');
const STOP = join(SCRIPTS, 'lvm-test-stop');
const run = promisify(execFile);

export interface TestLvm {
  /** Pass as LVM_SYSTEM_DIR (the backend's `systemDir` option) to every lvm command. */
  readonly systemDir: string;
  /** The volume group, empty at start. */
  readonly vg: string;
  /** The loop device holding the single PV. */
  readonly loopDevice: string;
  /** Removes the VG, detaches the loop device and deletes the directory. Idempotent. */
  stop(): Promise<void>;
}

export interface StartLvmOptions {
  /** Default: a unique dvtest_* name. Must be a valid VG name. */
  vg?: string;
  /** PV size in MiB (sparse file); default 1024. The VG is 4 MiB smaller (metadata, extent rounding). */
  sizeMiB?: number;
}

/** True when this process can create a test VG (root, lvm2 and losetup installed). */
export function lvmAvailable(): boolean {
  return process.getuid?.() === 0 && existsSync('/sbin/lvcreate') && existsSync('/sbin/losetup');
}

/** The environment every lvm command in a test must run with. */
export function lvmEnv(lvm: Pick<TestLvm, 'systemDir'>): Record<string, string> {
  return { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C', LVM_SYSTEM_DIR: lvm.systemDir, LVM_SUPPRESS_FD_WARNINGS: '1' };
}

const live = new Set<string>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // A crashed suite must not leak loop devices: there are only so many.
  process.once('exit', () => {
    for (const dir of live) {
      try {
        execFileSync(STOP, [], { env: { ...process.env, LVM_DIR: dir }, stdio: 'ignore' });
      } catch {
        // Best effort at exit.
      }
    }
  });
}

export async function startLvm(options: StartLvmOptions = {}): Promise<TestLvm> {
  if (!lvmAvailable()) throw new Error('LVM tests need root and Debian lvm2: apt-get install -y --no-install-recommends lvm2');
  installExitHook();
  const dir = mkdtempSync(join(tmpdir(), 'debvisor-lvm-'));
  const env: NodeJS.ProcessEnv = { ...process.env, LVM_DIR: dir, SIZE: `${options.sizeMiB ?? 1024}M` };
  if (options.vg !== undefined) env.VG = options.vg;
  live.add(dir);
  try {
    await run(START, [], { env });
  } catch (err) {
    live.delete(dir);
    const stderr = (err as { stderr?: string }).stderr ?? '';
    throw new Error(`scripts/lvm-test-start failed: ${stderr}`, { cause: err });
  }
  const vg = (await readFile(join(dir, 'vg'), 'utf8')).trim();
  const loopDevice = (await readFile(join(dir, 'loopdev'), 'utf8')).trim();
  let stopped = false;
  return {
    systemDir: join(dir, 'etc'),
    vg,
    loopDevice,
    async stop() {
      if (stopped) return;
      stopped = true;
      live.delete(dir);
      await run(STOP, [], { env: { ...process.env, LVM_DIR: dir } });
    },
  };
}
