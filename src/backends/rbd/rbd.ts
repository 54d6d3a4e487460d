// The Ceph RBD backend: volumes, snapshots, templates (protected snapshots) and clones through
// the `rbd` CLI, run by the exec layer (argv only, absolute binary, allow-listed env, timeouts).
// Every pool, image and snapshot name is validated before anything is spawned. rbd runs with
// cluster timeouts (RbdBackendOptions.clusterTimeoutMs) so an unreachable cluster or a stuck OSD
// fails fast as `unavailable`.
//
// DebVisor's bookkeeping lives in the image's own metadata (`rbd image-meta`), so it moves and
// dies with the image and needs no second store:
//   debvisor.owner                  the principal that created the image
//   debvisor.tag.<key>              a user tag (debvisor.tag-empty.<key> = 1 when its value is "":
//                                   rbd refuses empty metadata values)
//   debvisor.snap.<snap>.label      a snapshot's label
//   debvisor.snap.<snap>.owner      the principal that created the snapshot
//   debvisor.snap.<snap>.time       optional ISO-8601 time that overrides rbd's snapshot timestamp
//                                   (imported or backdated snapshots; nothing here writes it)
// Snapshot keys are removed with the snapshot; `rbd clone` copies the parent's metadata, so a
// clone's inherited debvisor.* keys are replaced by its own owner.
import { Registry } from 'prom-client';
import { createExecutor, ExecError, type ClassifyRule, type ExecResult, type Executor, type RunOptions, type SpawnEvent } from '../exec.js';
import { progressParser } from '../progress.js';
import { validateImageName, validatePoolName, validateSnapshotName } from '../validate.js';
import { InvalidArgumentError } from '../../rpc/errors.js';
import type {
  CallOptions,
  CreateSnapshotSpec,
  CreateVolumeSpec,
  PoolOwnership,
  ProgressOptions,
  RbdTemplateBackend,
  SnapshotInfo,
  VolumeInfo,
} from '../storage-backend.js';
import { ALREADY_PROTECTED, ALREADY_UNPROTECTED, NOT_A_CLONE, RBD_IMAGE_RULES, RBD_SNAPSHOT_RULES } from './errors.js';
import { MISSING_LIBRBD, OWNERSHIP_SCRIPT } from './ownership.js';
import { parseChildren, parseDu, parseImageMeta, parseInfo, parseLs, parseOwnership, parseSnapLs, type RbdDiskUsage, type RbdImageInfo } from './parse.js';

export const DEFAULT_RBD = '/usr/bin/rbd';
/** Runs the librbd ownership listing (src/backends/rbd/ownership.ts). */
export const DEFAULT_PYTHON = '/usr/bin/python3';

/** rbd needs nothing from the daemon's environment: conf, id and keyring are always passed as options. */
const RBD_ENV_ALLOW_LIST = ['PATH'] as const;

/** Longest wait for `rbd du` (used bytes); past it a listing reports 0 used rather than hang. */
const USAGE_TIMEOUT_MS = 30_000;

export const META_PREFIX = 'debvisor.';
export const OWNER_KEY = 'debvisor.owner';
export const TAG_PREFIX = 'debvisor.tag.';
/** `rbd resize` to the image's current size: "rbd: new size is equal to original size", exit 22. */
const RBD_SAME_SIZE = /new size is equal to original size/;
/** rbd refuses an empty metadata value: a tag whose value is "" is kept as this prefix + key = "1". */
export const EMPTY_TAG_PREFIX = 'debvisor.tag-empty.';
export const SNAP_PREFIX = 'debvisor.snap.';
const SNAP_FIELDS = ['label', 'owner', 'time'] as const;
type SnapField = (typeof SNAP_FIELDS)[number];

/** The image-meta key of one of a snapshot's DebVisor fields. */
export function snapMetaKey(snapshot: string, field: SnapField): string {
  return `${SNAP_PREFIX}${snapshot}.${field}`;
}

export interface RbdBackendOptions {
  /** Absolute path of rbd; default /usr/bin/rbd. */
  readonly rbdPath?: string;
  /** The cluster's ceph.conf (rbd --conf). */
  readonly cephConf: string;
  /** Absolute path of a python3 with python3-rbd (RecomputeQuota's one-process listing); default /usr/bin/python3. */
  readonly pythonPath?: string;
  /** Ceph client id (rbd --id); empty or absent: the conf's default (admin). */
  readonly id?: string;
  /** That client's keyring (rbd --keyring); empty or absent: the conf's default. */
  readonly keyring?: string;
  /** Pools this daemon may use; any other pool is refused before rbd runs. */
  readonly pools: readonly string[];
  /** rbd processes at once; more calls wait their turn. */
  readonly maxConcurrent: number;
  /** An rbd call running longer is killed (ExecError `timeout`). Flatten and delete of large images take long. */
  readonly defaultTimeoutMs: number;
  /**
   * How long rbd waits for the cluster: a monitor to connect to, and a monitor or OSD to answer any one
   * request. Past it rbd fails with ETIMEDOUT (ExecError `unavailable`): an unreachable cluster or a
   * stuck OSD is reported as such rather than as a command timeout an hour later. Default
   * min(30 s, defaultTimeoutMs / 2); a healthy cluster answers a single request in milliseconds.
   */
  readonly clusterTimeoutMs?: number;
  readonly registry?: Registry;
  readonly maxOutputBytes?: number;
  readonly killGraceMs?: number;
  /** Called before every spawn: tests use it to assert that nothing ran. */
  readonly onSpawn?: (event: SpawnEvent) => void;
}

/** qemu's rbd: filename syntax separates options with ':' and takes '\' as an escape. */
function qemuRbdEscape(value: string): string {
  return value.replace(/[\\:]/g, (c) => `\\${c}`);
}

export class RbdBackend implements RbdTemplateBackend {
  readonly kind = 'rbd';
  readonly pools: readonly string[];
  private readonly executor: Executor;
  private readonly globalArgs: readonly string[];
  private readonly cephConf: string;
  private readonly id: string;
  private readonly keyring: string;
  /** A listing does not wait the full command timeout (an hour, for flatten) for used bytes. */
  private readonly usageTimeoutMs: number;
  private readonly clusterSeconds: number;

  constructor(options: RbdBackendOptions) {
    if (options.cephConf === '') throw new InvalidArgumentError('rbd.ceph_conf', 'must not be empty');
    this.pools = options.pools.map((pool, i) => validatePoolName(pool, `rbd.pools[${i}]`));
    this.cephConf = options.cephConf;
    this.id = options.id ?? '';
    this.keyring = options.keyring ?? '';
    this.usageTimeoutMs = Math.min(options.defaultTimeoutMs, USAGE_TIMEOUT_MS);
    this.executor = createExecutor({
      backend: 'rbd',
      binaries: { rbd: options.rbdPath ?? DEFAULT_RBD, python3: options.pythonPath ?? DEFAULT_PYTHON },
      envAllowList: RBD_ENV_ALLOW_LIST,
      // rbd prints times in local time without a zone (ctime): make that UTC.
      extraEnv: { TZ: 'UTC' },
      maxConcurrent: options.maxConcurrent,
      defaultTimeoutMs: options.defaultTimeoutMs,
      maxOutputBytes: options.maxOutputBytes ?? 4 * 1024 * 1024,
      killGraceMs: options.killGraceMs ?? 2_000,
      registry: options.registry ?? new Registry(),
      onSpawn: options.onSpawn,
    });
    const clusterSeconds = Math.max(1, Math.ceil((options.clusterTimeoutMs ?? Math.min(30_000, options.defaultTimeoutMs / 2)) / 1000));
    this.clusterSeconds = clusterSeconds;
    // "--opt=value": a value that starts with "-" stays a value.
    this.globalArgs = [
      `--conf=${options.cephConf}`,
      ...(this.id ? [`--id=${this.id}`] : []),
      ...(this.keyring ? [`--keyring=${this.keyring}`] : []),
      `--client-mount-timeout=${clusterSeconds}`,
      `--rados-mon-op-timeout=${clusterSeconds}`,
      `--rados-osd-op-timeout=${clusterSeconds}`,
    ];
  }

  // ---- volumes ----

  async listVolumes(pool: string, options: CallOptions = {}): Promise<VolumeInfo[]> {
    this.checkPool(pool, 'pool');
    const [names, usage] = await Promise.all([this.rbdJson(['ls', pool], RBD_IMAGE_RULES, options).then(parseLs), this.diskUsage(['-p', pool], options)]);
    // An image created outside DebVisor with a name it refuses cannot be acted on through it: not listed either.
    const addressable = names.filter(isValidImageName);
    const volumes = await Promise.all(
      addressable.map((name) =>
        this.readVolume(pool, name, usage, options).catch((err: unknown) => {
          // Removed between `ls` and `info`: it is simply no longer there.
          if (err instanceof ExecError && err.kind === 'not_found') return undefined;
          throw err;
        }),
      ),
    );
    return volumes.filter((v): v is VolumeInfo => v !== undefined).sort((a, b) => a.name.localeCompare(b.name));
  }

  async getVolume(pool: string, name: string, options: CallOptions = {}): Promise<VolumeInfo> {
    const spec = this.imageSpec(pool, name);
    return this.readVolume(pool, name, this.diskUsage([spec], options), options);
  }

  async createVolume(spec: CreateVolumeSpec, options: CallOptions = {}): Promise<VolumeInfo> {
    const image = this.imageSpec(spec.pool, spec.name);
    // rbd takes exact bytes with a B suffix; a bare number would be MiB. Size 0 makes `rbd du` abort (16.2).
    if (spec.sizeBytes <= 0n) throw new InvalidArgumentError('size_bytes', 'must be positive');
    const meta = { ...(spec.owner ? { [OWNER_KEY]: spec.owner } : {}), ...tagMeta(spec.tags) };
    await this.rbd(['create', image, '--size', `${spec.sizeBytes}B`], RBD_IMAGE_RULES, options);
    await this.undoOnFailure(() => this.setMeta(image, meta, options), image);
    return this.getVolume(spec.pool, spec.name, options);
  }

  async resizeVolume(pool: string, name: string, sizeBytes: bigint, options: CallOptions & { shrink: boolean } = { shrink: false }): Promise<VolumeInfo> {
    const image = this.imageSpec(pool, name);
    if (sizeBytes <= 0n) throw new InvalidArgumentError('size_bytes', 'must be positive');
    const result = await this.run(['resize', image, '--size', `${sizeBytes}B`, ...(options.shrink ? ['--allow-shrink'] : [])], options);
    // Already that size: a no-op, not an error (a retried request), as for LVM. rbd exits 22 for it.
    if (!(result.code !== 0 && RBD_SAME_SIZE.test(result.stderr))) this.executor.check(result, RBD_IMAGE_RULES);
    return this.getVolume(pool, name, options);
  }

  async deleteVolume(pool: string, name: string, options: ProgressOptions = {}): Promise<void> {
    const image = this.imageSpec(pool, name);
    await this.rbd(['rm', image], RBD_IMAGE_RULES, options, progressRun(options));
  }

  // ---- snapshots ----

  async listSnapshots(pool: string, volume: string, options: CallOptions = {}): Promise<SnapshotInfo[]> {
    return this.readSnapshots(pool, volume, undefined, options);
  }

  async createSnapshot(spec: CreateSnapshotSpec, options: CallOptions = {}): Promise<SnapshotInfo> {
    const snap = this.snapSpec(spec.pool, spec.volume, spec.name);
    const image = this.imageSpec(spec.pool, spec.volume);
    await this.rbd(['snap', 'create', snap], RBD_SNAPSHOT_RULES, options);
    const wanted: Record<SnapField, string> = { label: spec.label, owner: spec.owner, time: '' };
    try {
      const existing = await this.readMeta(image, options);
      for (const field of SNAP_FIELDS) {
        const key = snapMetaKey(spec.name, field);
        if (wanted[field]) await this.setMeta(image, { [key]: wanted[field] }, options);
        // rbd refuses empty values, so "no label" is no key: drop one an earlier snapshot of this name left behind.
        else if (key in existing) await this.rbd(['image-meta', 'remove', image, key], RBD_IMAGE_RULES, options);
      }
    } catch (err) {
      // A snapshot without its owner would escape quotas and scoping: take it back.
      await this.rbd(['snap', 'rm', snap], RBD_SNAPSHOT_RULES, {}).catch(() => undefined);
      throw err;
    }
    const [created] = await this.readSnapshots(spec.pool, spec.volume, spec.name, options);
    if (!created) throw new ExecError({ kind: 'not_found', backend: 'rbd', command: 'rbd', publicMessage: 'the RBD snapshot vanished right after creation' });
    return created;
  }

  async deleteSnapshot(pool: string, volume: string, name: string, options: CallOptions = {}): Promise<void> {
    const snap = this.snapSpec(pool, volume, name);
    const image = this.imageSpec(pool, volume);
    await this.rbd(['snap', 'rm', snap], RBD_SNAPSHOT_RULES, options);
    // The snapshot is gone; its keys are bookkeeping, removed even if the call is cancelled now. A key left
    // behind (rbd failed just now) is overwritten by the next snapshot of that name, so this is best effort.
    const meta = await this.readMeta(image, {}).catch(() => ({}));
    for (const field of SNAP_FIELDS) {
      const key = snapMetaKey(name, field);
      if (key in meta) await this.rbd(['image-meta', 'remove', image, key], RBD_IMAGE_RULES, {}).catch(() => undefined);
    }
  }

  /** Idempotent: protecting a protected snapshot succeeds. */
  async protectSnapshot(pool: string, image: string, snapshot: string, options: CallOptions = {}): Promise<void> {
    const snap = this.snapSpec(pool, image, snapshot);
    const result = await this.run(['snap', 'protect', snap], options);
    if (result.code !== 0 && ALREADY_PROTECTED.test(result.stderr)) return;
    this.executor.check(result, RBD_SNAPSHOT_RULES);
  }

  /** Idempotent: unprotecting an unprotected snapshot succeeds; one with clones is refused (busy). */
  async unprotectSnapshot(pool: string, image: string, snapshot: string, options: CallOptions = {}): Promise<void> {
    const snap = this.snapSpec(pool, image, snapshot);
    const result = await this.run(['snap', 'unprotect', snap], options);
    if (result.code !== 0 && ALREADY_UNPROTECTED.test(result.stderr)) return;
    this.executor.check(result, RBD_SNAPSHOT_RULES);
  }

  // ---- templates and clones ----

  async clone(
    from: { pool: string; image: string; snapshot: string },
    to: { pool: string; image: string; owner: string; tags?: Record<string, string> },
    options: CallOptions = {},
  ): Promise<VolumeInfo> {
    const parent = this.snapSpec(from.pool, from.image, from.snapshot);
    const child = this.imageSpec(to.pool, to.image, 'to.pool', 'to.image');
    await this.rbd(['clone', parent, child], RBD_IMAGE_RULES, options);
    await this.undoOnFailure(async () => {
      // rbd clone copies the parent's image-meta: the template's owner, tags and snapshot keys are not the clone's.
      const inherited = Object.keys(await this.readMeta(child, options)).filter((key) => key.startsWith(META_PREFIX));
      for (const key of inherited) await this.rbd(['image-meta', 'remove', child, key], RBD_IMAGE_RULES, options);
      await this.setMeta(child, { ...(to.owner ? { [OWNER_KEY]: to.owner } : {}), ...tagMeta(to.tags ?? {}) }, options);
    }, child);
    return this.getVolume(to.pool, to.image, options);
  }

  /** Idempotent: flattening an image that is not a clone succeeds. */
  async flatten(pool: string, image: string, options: ProgressOptions = {}): Promise<void> {
    const spec = this.imageSpec(pool, image);
    const result = await this.run(['flatten', spec], options, progressRun(options));
    if (result.code !== 0 && NOT_A_CLONE.test(result.stderr)) return;
    this.executor.check(result, RBD_IMAGE_RULES);
  }

  /**
   * Owners and sizes of the pool's images and owners of their snapshots, read through librbd in one
   * process (the rbd CLI would take one per image). Images DebVisor cannot address are left out, as in listVolumes.
   */
  async ownership(pool: string, options: CallOptions = {}): Promise<PoolOwnership> {
    this.checkPool(pool, 'pool');
    const args = ['-I', '-', this.cephConf, this.id, this.keyring, String(this.clusterSeconds), pool, OWNER_KEY, SNAP_PREFIX];
    const result = await this.executor.run('python3', args, { signal: options.signal, stdin: new TextEncoder().encode(OWNERSHIP_SCRIPT) });
    const images = parseOwnership(this.executor.check(result, [MISSING_LIBRBD, ...RBD_IMAGE_RULES]).stdout).filter((image) => isValidImageName(image.name));
    return {
      volumes: images.map((image) => ({ owner: image.owner, sizeBytes: image.sizeBytes })),
      snapshotOwners: images.flatMap((image) => image.snapshotOwners),
    };
  }

  /** `rbd:pool/image:conf=…[:id=…][:keyring=…]` for qemu-img (built with rbd support). */
  imageTarget(pool: string, name: string): string {
    // Validated names cannot hold ':', '@', '/' or '\', so only the option values need qemu's escaping.
    const image = this.imageSpec(pool, name);
    let target = `rbd:${image}:conf=${qemuRbdEscape(this.cephConf)}`;
    if (this.id) target += `:id=${qemuRbdEscape(this.id)}`;
    if (this.keyring) target += `:keyring=${qemuRbdEscape(this.keyring)}`;
    return target;
  }

  // ---- internals ----

  private checkPool(pool: string, field: string): void {
    validatePoolName(pool, field);
    if (!this.pools.includes(pool)) throw new InvalidArgumentError(field, `pool "${pool}" is not one this node uses (rbd.pools: ${this.pools.join(', ')})`);
  }

  private imageSpec(pool: string, name: string, poolField = 'pool', nameField = 'name'): string {
    this.checkPool(pool, poolField);
    validateImageName(name, nameField);
    return `${pool}/${name}`;
  }

  private snapSpec(pool: string, image: string, snapshot: string): string {
    const spec = this.imageSpec(pool, image, 'pool', 'volume');
    validateSnapshotName(snapshot, 'snapshot');
    return `${spec}@${snapshot}`;
  }

  private run(args: readonly string[], options: CallOptions, extra: RunOptions = {}): Promise<ExecResult> {
    return this.executor.run('rbd', [...this.globalArgs, ...args], { ...extra, signal: options.signal });
  }

  private async rbd(args: readonly string[], rules: readonly ClassifyRule[], options: CallOptions, extra: RunOptions = {}): Promise<string> {
    return this.executor.check(await this.run(args, options, extra), rules).stdout;
  }

  /** Only commands that support it take --format (rbd refuses the option elsewhere). */
  private rbdJson(args: readonly string[], rules: readonly ClassifyRule[], options: CallOptions, extra: RunOptions = {}): Promise<string> {
    return this.rbd([...args, '--format', 'json'], rules, options, extra);
  }

  private async readMeta(image: string, options: CallOptions): Promise<Record<string, string>> {
    return parseImageMeta(await this.rbdJson(['image-meta', 'list', image], RBD_IMAGE_RULES, options));
  }

  private async setMeta(image: string, meta: Record<string, string>, options: CallOptions): Promise<void> {
    // One key per call (rbd has no batch form); "--" keeps a value like "-x" from becoming an option.
    for (const [key, value] of Object.entries(meta)) await this.rbd(['image-meta', 'set', image, key, '--', value], RBD_IMAGE_RULES, options);
  }

  /** Runs the bookkeeping step after an image was created; on failure removes the image, so nothing half-made stays. */
  private async undoOnFailure(step: () => Promise<void>, image: string): Promise<void> {
    try {
      await step();
    } catch (err) {
      await this.rbd(['rm', image], RBD_IMAGE_RULES, {}).catch(() => undefined);
      throw err;
    }
  }

  /**
   * `rbd du` rows, or [] when du fails or takes longer than USAGE_TIMEOUT_MS: used bytes are informative,
   * and du is the one command that can be slow (images without fast-diff) or abort (16.2 asserts on some images).
   */
  private async diskUsage(target: readonly string[], options: CallOptions): Promise<RbdDiskUsage[]> {
    try {
      return parseDu(await this.rbdJson(['du', ...target], RBD_IMAGE_RULES, options, { timeoutMs: this.usageTimeoutMs }));
    } catch (err) {
      if (err instanceof ExecError && (err.kind === 'cancelled' || err.kind === 'unavailable')) throw err;
      return [];
    }
  }

  private async readVolume(pool: string, name: string, usage: RbdDiskUsage[] | Promise<RbdDiskUsage[]>, options: CallOptions): Promise<VolumeInfo> {
    const image = `${pool}/${name}`;
    const [info, meta, rows] = await Promise.all([
      this.rbdJson(['info', image], RBD_IMAGE_RULES, options).then(parseInfo),
      this.readMeta(image, options),
      usage,
    ]);
    return toVolumeInfo(pool, info, meta, rows.find((r) => r.image === name && r.snapshot === undefined)?.usedBytes ?? 0n);
  }

  /** All snapshots of an image, or only the one named `only` (then [] if it does not exist). */
  private async readSnapshots(pool: string, volume: string, only: string | undefined, options: CallOptions): Promise<SnapshotInfo[]> {
    const image = this.imageSpec(pool, volume, 'pool', 'volume');
    const [all, meta, usage, anyClones] = await Promise.all([
      this.rbdJson(['snap', 'ls', image], RBD_IMAGE_RULES, options).then(parseSnapLs),
      this.readMeta(image, options),
      this.diskUsage([image], options),
      // Without @snap, rbd lists the clones of all the image's snapshots (not saying of which): one call
      // answers the usual case, no clones at all, instead of one call per snapshot.
      this.rbdJson(['children', image], RBD_IMAGE_RULES, options).then((text) => parseChildren(text).length > 0),
    ]);
    const snapshots = only === undefined ? all : all.filter((s) => s.name === only);
    return Promise.all(
      snapshots.map(async (s) => {
        // Every snapshot, not only protected ones: clone format 2 allows clones of unprotected snapshots.
        const clones = anyClones ? parseChildren(await this.rbdJson(['children', `${image}@${s.name}`], RBD_SNAPSHOT_RULES, options)) : [];
        const override = meta[snapMetaKey(s.name, 'time')];
        const overrideTime = override === undefined ? undefined : new Date(override);
        const createTime = overrideTime && !Number.isNaN(overrideTime.getTime()) ? overrideTime : s.createTime;
        return {
          pool,
          volume,
          name: s.name,
          label: meta[snapMetaKey(s.name, 'label')] ?? '',
          ...(createTime ? { createTime } : {}),
          sizeBytes: usage.find((r) => r.image === volume && r.snapshot === s.name)?.usedBytes ?? 0n,
          protected: s.protected,
          clones,
          owner: meta[snapMetaKey(s.name, 'owner')] ?? '',
        };
      }),
    );
  }
}

function isValidImageName(name: string): boolean {
  try {
    validateImageName(name, 'name');
    return true;
  } catch {
    return false;
  }
}

function tagMeta(tags: Record<string, string>): Record<string, string> {
  const meta: Record<string, string> = {};
  for (const [key, value] of Object.entries(tags)) {
    if (key === '') throw new InvalidArgumentError('tags', 'keys must not be empty');
    if (value === '') meta[`${EMPTY_TAG_PREFIX}${key}`] = '1';
    else meta[`${TAG_PREFIX}${key}`] = value;
  }
  return meta;
}

/** User tags only: the owner and snapshot bookkeeping keys are not tags. */
export function tagsFromMeta(meta: Record<string, string>): Record<string, string> {
  const tags: Record<string, string> = {};
  for (const [key, value] of Object.entries(meta)) {
    if (key.startsWith(TAG_PREFIX)) tags[key.slice(TAG_PREFIX.length)] = value;
    else if (key.startsWith(EMPTY_TAG_PREFIX)) tags[key.slice(EMPTY_TAG_PREFIX.length)] = '';
  }
  return tags;
}

function toVolumeInfo(pool: string, info: RbdImageInfo, meta: Record<string, string>, usedBytes: bigint): VolumeInfo {
  return {
    backend: 'rbd',
    pool,
    name: info.name,
    sizeBytes: info.sizeBytes,
    usedBytes,
    tags: tagsFromMeta(meta),
    owner: meta[OWNER_KEY] ?? '',
    ...(info.createTime ? { createTime: info.createTime } : {}),
    ...(info.parent ? { parent: info.parent } : {}),
  };
}

/** rbd reports progress on stderr ("\rRemoving image: 3% complete..."). */
function progressRun(options: ProgressOptions): RunOptions {
  const { onProgress } = options;
  return onProgress ? { onStderrChunk: progressParser(onProgress) } : {};
}
