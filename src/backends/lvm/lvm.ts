// The LVM backend: VolumeBackend over the lvm2 tools (`lvm lvs|lvcreate|lvextend|…`), run through
// the exec layer (argv only, absolute binary, allow-listed env, timeouts, cancellation).
// - Reads use `lvs --reportformat json --units b --nosuffix` (src/backends/lvm/report.ts).
// - Owner, snapshot label and user tags are LVM tags (src/backends/lvm/tags.ts).
// - Volumes are linear (thick) LVs; snapshots are thick COW snapshots sized as a percentage of
//   the origin (option snapshotCowPercent; 100 = can never overflow and be invalidated), by explicit size.
// - LVM_SYSTEM_DIR comes from the options only (a private lvm.conf), never from the daemon's env.
// - An origin is never removed with its snapshots (lvremove -f would): deleteVolume refuses it.
import { Registry } from 'prom-client';
import { createExecutor, ExecError, ExecUsageError, type Executor, type SpawnEvent } from '../exec.js';
import { validateLvName, validateSnapshotName, validateVgName } from '../validate.js';
import { InvalidArgumentError } from '../../rpc/errors.js';
import type { CallOptions, CreateSnapshotSpec, CreateVolumeSpec, PoolOwnership, ProgressOptions, SnapshotInfo, VolumeBackend, VolumeInfo } from '../storage-backend.js';
import { LVM_RULES, SAME_SIZE } from './errors.js';
import { isSnapshot, isVolume, LV_FIELDS, parseLvsReport, toSnapshotInfo, toVolumeInfo, type LvRow } from './report.js';
import { encodeTags } from './tags.js';

export const DEFAULT_LVM = '/sbin/lvm';
/** lvm needs nothing of the daemon's environment but PATH (for helpers like blkid it execs). */
export const LVM_ENV_ALLOW_LIST = ['PATH'] as const;
/** lvm sizes are whole 512-byte sectors ("Size is not a multiple of 512"). */
const SECTOR = 512n;

export interface LvmBackendOptions {
  /** The volume groups this daemon may use; anything else is refused before a command runs. */
  readonly vgs: readonly string[];
  /** Absolute path of the lvm multi-call binary; default /sbin/lvm. */
  readonly lvmPath?: string;
  /** Passed to every lvm command as LVM_SYSTEM_DIR (the directory holding lvm.conf). */
  readonly systemDir?: string;
  /** lvm commands at once; default 2 (they serialise on the VG lock anyway). */
  readonly maxConcurrent?: number;
  readonly defaultTimeoutMs?: number;
  /** COW size of a new snapshot, as a percentage of its origin (1–100); default 100. */
  readonly snapshotCowPercent?: number;
  /** Metrics registry for backend_command_duration_seconds; default a private one. */
  readonly registry?: Registry;
  readonly onSpawn?: (event: SpawnEvent) => void;
}

function notFound(what: 'volume' | 'snapshot'): ExecError {
  const publicMessage = what === 'volume' ? 'the logical volume does not exist' : 'the snapshot does not exist';
  return new ExecError({ kind: 'not_found', backend: 'lvm', command: 'lvs', publicMessage });
}

export class LvmBackend implements VolumeBackend {
  readonly kind = 'lvm' as const;
  readonly pools: readonly string[];
  readonly executor: Executor;
  private readonly snapshotCowPercent: number;

  constructor(options: LvmBackendOptions) {
    this.pools = options.vgs.map((vg) => validateVgName(vg, 'lvm.vgs'));
    const cow = options.snapshotCowPercent ?? 100;
    if (!Number.isInteger(cow) || cow < 1 || cow > 100) throw new ExecUsageError('snapshotCowPercent must be an integer from 1 to 100');
    this.snapshotCowPercent = cow;
    const extraEnv: Record<string, string> = { LVM_SUPPRESS_FD_WARNINGS: '1' };
    if (options.systemDir !== undefined) extraEnv.LVM_SYSTEM_DIR = options.systemDir;
    this.executor = createExecutor({
      backend: 'lvm',
      binaries: { lvm: options.lvmPath ?? DEFAULT_LVM },
      envAllowList: LVM_ENV_ALLOW_LIST,
      extraEnv,
      maxConcurrent: options.maxConcurrent ?? 2,
      defaultTimeoutMs: options.defaultTimeoutMs ?? 60_000,
      maxOutputBytes: 16 * 1024 * 1024,
      killGraceMs: 5_000,
      registry: options.registry ?? new Registry(),
      onSpawn: options.onSpawn,
    });
  }

  // ------------------------------------------------------------------ plumbing

  private async lvm(args: readonly string[], options: CallOptions = {}): Promise<string> {
    const result = await this.executor.run('lvm', args, { signal: options.signal });
    return this.executor.check(result, LVM_RULES).stdout;
  }

  private vg(pool: string): string {
    const vg = validateVgName(pool, 'pool');
    if (!this.pools.includes(vg)) throw new InvalidArgumentError('pool', 'is not a volume group this daemon may use');
    return vg;
  }

  /** `lvs` rows for a whole VG or one LV ("vg/lv"); a missing LV is a not_found ExecError. */
  private async lvs(target: string, options: CallOptions): Promise<LvRow[]> {
    const stdout = await this.lvm(['lvs', '--reportformat', 'json', '--units', 'b', '--nosuffix', '-o', LV_FIELDS.join(','), target], options);
    return parseLvsReport(stdout);
  }

  private async row(vg: string, lv: string, options: CallOptions): Promise<LvRow> {
    const [row] = await this.lvs(`${vg}/${lv}`, options);
    if (!row) throw notFound('volume');
    return row;
  }

  private async volumeRow(vg: string, lv: string, options: CallOptions): Promise<LvRow> {
    const row = await this.row(vg, lv, options);
    // A snapshot (or pool) is an LV too, but not a volume: never resize or delete one through volume calls.
    if (!isVolume(row)) throw notFound('volume');
    return row;
  }

  // ------------------------------------------------------------------ volumes

  async listVolumes(pool: string, options: CallOptions = {}): Promise<VolumeInfo[]> {
    const rows = await this.lvs(this.vg(pool), options);
    return rows.filter(isVolume).map(toVolumeInfo).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  async getVolume(pool: string, name: string, options: CallOptions = {}): Promise<VolumeInfo> {
    const vg = this.vg(pool);
    return toVolumeInfo(await this.volumeRow(vg, validateLvName(name, 'name'), options));
  }

  /** A linear LV of at least sizeBytes (lvm rounds up to whole extents), tagged with owner and user tags. */
  async createVolume(spec: CreateVolumeSpec, options: CallOptions = {}): Promise<VolumeInfo> {
    const vg = this.vg(spec.pool);
    const lv = validateLvName(spec.name, 'name');
    const size = sizeArg(spec.sizeBytes);
    const tags = encodeTags({ owner: spec.owner, tags: spec.tags });
    // --yes: on a real host lvcreate asks before wiping an old signature found in the new extents.
    await this.lvm(['lvcreate', '--yes', '-n', lv, '-L', size, ...tags.flatMap((t) => ['--addtag', t]), vg], options);
    return this.getVolume(vg, lv, options);
  }

  /** Sets the size exactly (rounded up to whole extents); shrinking only when `shrink` is true. */
  async resizeVolume(pool: string, name: string, sizeBytes: bigint, options: CallOptions & { shrink: boolean }): Promise<VolumeInfo> {
    const vg = this.vg(pool);
    const lv = validateLvName(name, 'name');
    const size = sizeArg(sizeBytes);
    await this.volumeRow(vg, lv, options);
    // lvreduce needs -f to skip its "data will be lost" prompt; lvextend refuses a smaller size, so a grow never shrinks.
    const args = options.shrink ? ['lvreduce', '-f', '-L', size, `${vg}/${lv}`] : ['lvextend', '-L', size, `${vg}/${lv}`];
    const result = await this.executor.run('lvm', args, { signal: options.signal });
    // Already that size: a no-op, not an error (a retried request).
    if (!(result.code !== 0 && SAME_SIZE.test(result.stderr))) this.executor.check(result, LVM_RULES);
    return this.getVolume(vg, lv, options);
  }

  /**
   * Removes the LV. Refused (`busy`, as rbd refuses an image with snapshots) while it has snapshots:
   * `lvremove -f` would silently take them along, and with them their owners' quota units.
   */
  async deleteVolume(pool: string, name: string, options: ProgressOptions = {}): Promise<void> {
    const vg = this.vg(pool);
    const lv = validateLvName(name, 'name');
    const row = await this.volumeRow(vg, lv, options);
    if (row.lv_role.split(',').includes('origin')) {
      throw new ExecError({ kind: 'busy', backend: 'lvm', command: 'lvs', publicMessage: 'the volume has snapshots; delete them first' });
    }
    await this.lvm(['lvremove', '-f', `${vg}/${lv}`], options);
  }

  // ------------------------------------------------------------------ snapshots

  /** Snapshots of `volume`, oldest first. */
  async listSnapshots(pool: string, volume: string, options: CallOptions = {}): Promise<SnapshotInfo[]> {
    const vg = this.vg(pool);
    const origin = validateLvName(volume, 'volume');
    const rows = await this.lvs(vg, options);
    if (!rows.some((r) => r.lv_name === origin && isVolume(r))) throw notFound('volume');
    return rows
      .filter((r) => isSnapshot(r) && r.origin === origin)
      .map(toSnapshotInfo)
      .sort((a, b) => (a.createTime?.getTime() ?? 0) - (b.createTime?.getTime() ?? 0) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /**
   * A thick COW snapshot of snapshotCowPercent of the origin's size. Its name is an LV name, so it
   * shares the VG's namespace with volumes. Needs device-mapper: on a kernel without it, an
   * `unsupported` ExecError; without the free space, `no_space`.
   */
  async createSnapshot(spec: CreateSnapshotSpec, options: CallOptions = {}): Promise<SnapshotInfo> {
    const vg = this.vg(spec.pool);
    const origin = validateLvName(spec.volume, 'volume');
    const name = validateLvName(validateSnapshotName(spec.name, 'name'), 'name');
    const tags = encodeTags({ owner: spec.owner, label: spec.label });
    // Only a volume can be an origin (not a snapshot); its size sets the COW size.
    const originBytes = BigInt((await this.volumeRow(vg, origin, options)).lv_size);
    await this.lvm(snapshotArgs(vg, origin, name, cowBytes(originBytes, this.snapshotCowPercent), tags), options);
    const row = await this.row(vg, name, options);
    return toSnapshotInfo(row);
  }

  async deleteSnapshot(pool: string, volume: string, name: string, options: CallOptions = {}): Promise<void> {
    const vg = this.vg(pool);
    const origin = validateLvName(volume, 'volume');
    const snap = validateLvName(validateSnapshotName(name, 'name'), 'name');
    let row: LvRow;
    try {
      row = await this.row(vg, snap, options);
    } catch (err) {
      throw err instanceof ExecError && err.kind === 'not_found' ? notFound('snapshot') : err;
    }
    // Only a snapshot of this very volume: never a volume, never another volume's snapshot.
    if (!isSnapshot(row) || row.origin !== origin) throw notFound('snapshot');
    await this.lvm(['lvremove', '-f', `${vg}/${snap}`], options);
  }

  /** One `lvs` of the VG: owners and sizes are LV tags and columns. */
  async ownership(pool: string, options: CallOptions = {}): Promise<PoolOwnership> {
    const rows = await this.lvs(this.vg(pool), options);
    return {
      volumes: rows.filter(isVolume).map(toVolumeInfo),
      snapshotOwners: rows.filter(isSnapshot).map((row) => toSnapshotInfo(row).owner),
    };
  }

  imageTarget(pool: string, name: string): string {
    return `/dev/${this.vg(pool)}/${validateLvName(name, 'name')}`;
  }
}

/** `-L` argument: bytes rounded up to whole sectors, with lvm's "b" unit. */
export function sizeArg(sizeBytes: bigint): string {
  if (typeof sizeBytes !== 'bigint' || sizeBytes <= 0n) throw new InvalidArgumentError('size_bytes', 'must be positive');
  return `${((sizeBytes + SECTOR - 1n) / SECTOR) * SECTOR}b`;
}

/**
 * COW bytes for a snapshot of `percent` of the origin. Not `-l P%ORIGIN`: lvm silently shrinks a
 * percentage to the VG's free space (seen for real: 92 MiB of COW for a 160 MiB origin), and such a
 * snapshot is invalidated once it fills. An explicit size fails with "insufficient free space" instead.
 * The 1/64 margin covers the exception table (16 bytes per 4 KiB chunk) so that 100% never overflows;
 * lvm trims a COW larger than it can ever use.
 */
export function cowBytes(originBytes: bigint, percent: number): bigint {
  return (originBytes * BigInt(percent)) / 100n + originBytes / 64n;
}

/** The lvcreate argv for a thick snapshot (exported: tested on its own, since this kernel cannot run it). */
export function snapshotArgs(vg: string, origin: string, name: string, cowSizeBytes: bigint, tags: readonly string[]): string[] {
  return ['lvcreate', '--yes', '-s', '-n', name, '-L', sizeArg(cowSizeBytes), ...tags.flatMap((t) => ['--addtag', t]), `${vg}/${origin}`];
}
