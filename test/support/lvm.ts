// A metadata-only LVM volume group on a loop device for tests, made by scripts/lvm-test-start
// (one implementation for scripts, CI and tests): a private lvm.conf with activation = 0 and a
// filter accepting only that loop device, reached through LVM_SYSTEM_DIR. Every call gets its
// own directory and VG name, so parallel suites never see each other's volumes.
// This kernel has no device-mapper: LVs are never activated (no /dev/VG/LV) and snapshots fail.
// Needs root and Debian lvm2. stop() is idempotent and also runs if the test process exits early.
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
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

export interface SnapshotMetadataSpec {
  /** The origin LV (must exist, linear, one segment). */
  origin: string;
  /** The snapshot (COW) LV's name. */
  name: string;
  /** COW size in MiB; default 4. */
  cowMiB?: number;
  /** LVM tags to put on the snapshot, as `--addtag` takes them. */
  tags?: readonly string[];
  /** Backdates the snapshot's lv_time (whole seconds). */
  createTime?: Date;
}

const REPORT = ['--reportformat', 'json', '--units', 'b', '--nosuffix'];

/** One field of the first row of an lvm JSON report. */
function reportValue(stdout: string, section: 'vg' | 'lv', field: string): string {
  const doc = JSON.parse(stdout) as { report: Record<string, Record<string, string>[]>[] };
  const value = doc.report[0]?.[section]?.[0]?.[field];
  if (value === undefined) throw new Error(`no ${field} in lvm report`);
  return value;
}

async function lvmText(lvm: TestLvm, args: string[]): Promise<string> {
  return (await run('/sbin/lvm', args, { env: lvmEnv(lvm) })).stdout;
}

/**
 * Writes a thick snapshot of `origin` into the VG metadata without device-mapper: lvcreate makes
 * the COW LV for real (extents, tags), then vgcfgbackup → add the hidden `snapshotN` LV of segment
 * type "snapshot" (origin, cow_store) → vgcfgrestore. Afterwards the real lvs, lvremove and
 * lvcreate see a real snapshot (lv_attr "swi-…", origin set), exactly as after `lvcreate -s`
 * on a host with device-mapper, except that it was never active (no snap_percent).
 */
export async function writeSnapshotMetadata(lvm: TestLvm, spec: SnapshotMetadataSpec): Promise<void> {
  const { vg } = lvm;
  const addtags = (spec.tags ?? []).flatMap((t) => ['--addtag', t]);
  await lvmText(lvm, ['lvcreate', '--yes', '-n', spec.name, '-L', `${spec.cowMiB ?? 4}m`, ...addtags, vg]);
  const extentBytes = BigInt(reportValue(await lvmText(lvm, ['vgs', ...REPORT, '-o', 'vg_extent_size', vg]), 'vg', 'vg_extent_size'));
  const originBytes = BigInt(reportValue(await lvmText(lvm, ['lvs', ...REPORT, '-o', 'lv_size', `${vg}/${spec.origin}`]), 'lv', 'lv_size'));
  const backup = join(dirname(lvm.systemDir), `vg-${spec.name}.txt`);
  await lvmText(lvm, ['vgcfgbackup', '-f', backup, vg]);
  let text = await readFile(backup, 'utf8');
  const used = [...text.matchAll(/^\t\tsnapshot(\d+) \{/gm)].map((m) => Number(m[1]));
  const internal = `snapshot${used.length === 0 ? 0 : Math.max(...used) + 1}`;
  if (spec.createTime) {
    const seconds = Math.floor(spec.createTime.getTime() / 1000);
    text = text.replace(new RegExp(`(^\\t\\t${spec.name.replace(/[.+]/g, '\\$&')} \\{[\\s\\S]*?creation_time = )\\d+`, 'm'), `$1${seconds}`);
  }
  const block = [
    `\t\t${internal} {`,
    `\t\t\tid = "${randomLvmId()}"`,
    '\t\t\tstatus = ["READ", "WRITE"]',
    '\t\t\tflags = []',
    `\t\t\tcreation_time = ${Math.floor((spec.createTime ?? new Date()).getTime() / 1000)}`,
    '\t\t\tcreation_host = "test"',
    '\t\t\tsegment_count = 1',
    '',
    '\t\t\tsegment1 {',
    '\t\t\t\tstart_extent = 0',
    `\t\t\t\textent_count = ${originBytes / extentBytes}`,
    '',
    '\t\t\t\ttype = "snapshot"',
    '\t\t\t\tchunk_size = 8',
    `\t\t\t\torigin = "${spec.origin}"`,
    `\t\t\t\tcow_store = "${spec.name}"`,
    '\t\t\t}',
    '\t\t}',
    '',
  ].join('\n');
  // The file ends with the logical_volumes section's and the VG's closing braces.
  const end = text.lastIndexOf('\t}\n\n}');
  if (end < 0) throw new Error('unexpected vgcfgbackup layout');
  await writeFile(backup, `${text.slice(0, end)}${block}${text.slice(end)}`);
  await lvmText(lvm, ['vgcfgrestore', '-f', backup, vg]);
}

/** An LVM UUID-shaped id (6-4-4-4-4-4-6 characters). */
function randomLvmId(): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  return [6, 4, 4, 4, 4, 4, 6].map((n) => Array.from({ length: n }, () => alphabet.charAt(Math.floor(Math.random() * alphabet.length))).join('')).join('-');
}
