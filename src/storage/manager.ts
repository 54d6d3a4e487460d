// What StorageService does, independent of protobuf: picks the backend of a VolumeRef,
// refuses pools the config does not list, records the creating principal as owner, keeps
// the snapshots and storage_gb quotas in step with what exists (released to the owner on
// delete), and runs the long work of prune, clone and provisioning.
import { ExecError } from '../backends/exec.js';
import { validateSnapshotName, validateText } from '../backends/validate.js';
import { InvalidArgumentError, RpcError } from '../rpc/errors.js';
import type { QuotaManager } from '../quota/manager.js';
import type { AttachmentFinder } from './attachments.js';
import type { BackendKind, CallOptions, ProgressFn, RbdTemplateBackend, SnapshotInfo, VolumeBackend, VolumeInfo } from '../backends/storage-backend.js';
import { resolveImagePath } from './images.js';
import { gibOf } from '../quota/units.js';
import { IMAGE_DIGEST_TAG, timeFromName, withMadeBy, validatePool, validateSize, validateTags, validateVolumeName, volumeLabel, type VolumeKey } from './names.js';
import { isEmptyPolicy, planRetention, type RetentionRules } from './retention.js';
import { EventKind } from '../gen/debvisor/v1/event_pb.js';
import { ResourceKind } from '../gen/debvisor/v1/options_pb.js';
import { NO_CAUSE, type EventCause } from '../events/cause.js';
import type { EventSink, NewEvent } from '../events/types.js';

export interface ImageInfo {
  /** qemu-img's format name: raw, qcow2, vmdk, ... */
  readonly format: string;
  readonly virtualSizeBytes: bigint;
}

/** qemu-img, as provisioning needs it (src/backends/qemu-img implements it). */
export interface ImageTool {
  info(path: string, options?: CallOptions): Promise<ImageInfo>;
  /** Writes `source` as raw into `target` (a device path or an `rbd:` spec). */
  convert(source: string, sourceFormat: string, target: string, options?: CallOptions & { onProgress?: ProgressFn }): Promise<void>;
}

export interface StorageBackends {
  readonly rbd?: RbdTemplateBackend | undefined;
  readonly lvm?: VolumeBackend | undefined;
}

export interface StorageManagerOptions {
  readonly backends: StorageBackends;
  readonly quotas: QuotaManager;
  readonly images?: ImageTool | undefined;
  readonly imagesDir: () => string;
  /** The VMs using a volume as a disk; without it (tests of the manager alone) nothing is checked. */
  readonly attachments?: AttachmentFinder | undefined;
  /** Where volume and snapshot changes are published, once made; `node` is this daemon's node name. */
  readonly events?: { readonly sink: EventSink; readonly node: string } | undefined;
}

/** CallOptions of a change: `cause` is the call (or the operation) its events name. */
export type ChangeOptions = CallOptions & { readonly cause?: EventCause | undefined };

type NewEventPayload = NewEvent['payload'];
type VolumeEventKind = EventKind.VOLUME_CREATED | EventKind.VOLUME_DELETED | EventKind.VOLUME_RESIZED;
type SnapshotEventKind = EventKind.SNAPSHOT_CREATED | EventKind.SNAPSHOT_DELETED;

const LABEL: Record<BackendKind, string> = { rbd: 'RBD', lvm: 'LVM' };
const POOL_SETTING: Record<BackendKind, string> = { rbd: 'rbd.pools', lvm: 'lvm.vgs' };

export interface DeleteResult {
  readonly name: string;
  /** Undefined when deleted; mapped to a status by src/rpc/errors.ts. */
  readonly error?: unknown;
}

export interface PruneResult {
  readonly kept: string[];
  readonly deleted: string[];
  readonly removed: number;
}

function isNotFound(err: unknown): boolean {
  return (err instanceof ExecError && err.kind === 'not_found') || (err instanceof RpcError && err.code === 'NOT_FOUND');
}

/** When a snapshot counts as taken: a time in its name wins (backdated and imported snapshots). */
export function snapshotTime(snapshot: Pick<SnapshotInfo, 'name' | 'createTime'>): Date {
  return timeFromName(snapshot.name) ?? snapshot.createTime ?? new Date(0);
}

export class StorageManager {
  constructor(private readonly options: StorageManagerOptions) {}

  private publishVolume(kind: VolumeEventKind, volume: Pick<VolumeInfo, 'backend' | 'pool' | 'name' | 'sizeBytes'>, cause: EventCause | undefined): void {
    this.publish(kind, volume, cause, { case: 'volume', value: { backend: volume.backend, sizeBytes: volume.sizeBytes } });
  }

  private publishSnapshot(kind: SnapshotEventKind, key: VolumeKey, snapshot: string, cause: EventCause | undefined): void {
    this.publish(kind, { backend: key.backend, pool: key.pool, name: key.name }, cause, { case: 'volumeSnapshot', value: { volume: key.name, snapshot } });
  }

  /** Storage events name the volume as "pool/volume", with its pool: ListVolumes and ListSnapshots scope keys by pool. */
  private publish(kind: VolumeEventKind | SnapshotEventKind, volume: { backend: BackendKind; pool: string; name: string }, cause: EventCause | undefined, payload: NewEventPayload): void {
    const events = this.options.events;
    if (!events) return;
    const { actor, traceId } = cause ?? NO_CAUSE;
    events.sink.publish({ kind, resource: { kind: ResourceKind.VOLUME, node: events.node, name: `${volume.pool}/${volume.name}`, pool: volume.pool }, actor, traceId, payload });
  }

  /** Backends configured on this node, for listing and recounting. */
  enabled(): VolumeBackend[] {
    return [this.options.backends.lvm, this.options.backends.rbd].filter((b): b is VolumeBackend => b !== undefined && b.pools.length > 0);
  }

  backend(kind: BackendKind): VolumeBackend {
    return this.configured(kind, this.options.backends[kind]);
  }

  rbd(): RbdTemplateBackend {
    return this.configured('rbd', this.options.backends.rbd);
  }

  private configured<B extends VolumeBackend>(kind: BackendKind, backend: B | undefined): B {
    if (!backend || backend.pools.length === 0) {
      throw new RpcError('FAILED_PRECONDITION', `${LABEL[kind]} is not configured on this node (${kind === 'rbd' ? 'rbd.ceph_conf and rbd.pools' : 'lvm.vgs'})`);
    }
    return backend;
  }

  /** Validates a pool name and that this node may use it. */
  pool(kind: BackendKind, value: string, field: string): string {
    const backend = this.backend(kind);
    const pool = validatePool(kind, value, field);
    if (!backend.pools.includes(pool)) {
      throw new InvalidArgumentError(field, `${kind === 'rbd' ? 'pool' : 'volume group'} "${pool}" is not one this node uses (${POOL_SETTING[kind]}: ${backend.pools.join(', ')})`);
    }
    return pool;
  }

  /** Validates a whole volume reference; `field` is the request field holding it ("volume", "dataset"). */
  volumeKey(kind: BackendKind, pool: string, name: string, field: string): VolumeKey {
    return { backend: kind, pool: this.pool(kind, pool, `${field}.pool`), name: validateVolumeName(kind, name, `${field}.name`) };
  }

  /** Runs backend work on one volume; the backend's "does not exist" becomes NOT_FOUND naming the volume. */
  private async onVolume<T>(key: VolumeKey, work: (backend: VolumeBackend) => Promise<T>): Promise<T> {
    try {
      return await work(this.backend(key.backend));
    } catch (err) {
      if (isNotFound(err)) throw new RpcError('NOT_FOUND', `volume ${volumeLabel(key)} not found`, { cause: err });
      throw err;
    }
  }

  getVolume(key: VolumeKey, options?: CallOptions): Promise<VolumeInfo> {
    return this.onVolume(key, (backend) => backend.getVolume(key.pool, key.name, options));
  }

  /** Oldest first. Backends fail listing the snapshots of a missing volume, so no separate existence check (each rbd call costs). */
  async listSnapshots(key: VolumeKey, options?: CallOptions): Promise<SnapshotInfo[]> {
    const snapshots = await this.onVolume(key, (backend) => backend.listSnapshots(key.pool, key.name, options));
    return snapshots.sort((a, b) => snapshotTime(a).getTime() - snapshotTime(b).getTime() || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  // ---- volumes ---------------------------------------------------------------------

  /**
   * The storage_gb units for the requested size were taken by the proto option; the owner is the caller.
   * `madeBy`: the operation making it, recorded in a reserved tag (OPERATION_TAG) with the volume.
   */
  async createVolume(key: VolumeKey, sizeBytes: bigint, tags: Record<string, string>, owner: string, options?: ChangeOptions & { madeBy?: string }): Promise<VolumeInfo> {
    validateSize(sizeBytes, 'size_bytes');
    const volume = await this.backend(key.backend).createVolume({ pool: key.pool, name: key.name, sizeBytes, tags: withMadeBy(validateTags(tags), options?.madeBy), owner }, options);
    this.publishVolume(EventKind.VOLUME_CREATED, volume, options?.cause);
    await this.settleRounding(owner, sizeBytes, volume.sizeBytes);
    return volume;
  }

  /** Backends round sizes up (extents, objects): charge what was really allocated. No cause: a refused rounding charge refuses no call. */
  private async settleRounding(owner: string, requested: bigint, actual: bigint): Promise<void> {
    const extra = gibOf(actual) - gibOf(requested);
    // The volume exists already: rounding is charged when it fits and never turns a made volume into a refusal.
    if (extra > 0) await this.options.quotas.consume(owner, 'storage_gb', extra).catch(() => undefined);
    else if (extra < 0) await this.options.quotas.release(owner, 'storage_gb', -extra);
  }

  /**
   * Only the change in size is counted, and on the volume's owner (who gets it back on delete):
   * growth is taken before the backend runs, a shrink is given back after it. Not declared in the
   * proto, because the option would take the whole new size and refuse growth that fits.
   */
  async resizeVolume(key: VolumeKey, newSizeBytes: bigint, allowShrink: boolean, caller: string, options?: ChangeOptions): Promise<VolumeInfo> {
    validateSize(newSizeBytes, 'new_size_bytes');
    const current = await this.getVolume(key, options);
    if (newSizeBytes < current.sizeBytes && !allowShrink) {
      throw new RpcError('FAILED_PRECONDITION', `new_size_bytes ${newSizeBytes} is smaller than the volume's ${current.sizeBytes} bytes; set allow_shrink to shrink it (data beyond the new size is lost)`);
    }
    const owner = current.owner || caller;
    const delta = gibOf(newSizeBytes) - gibOf(current.sizeBytes);
    const quotas = this.options.quotas;
    if (delta > 0) await quotas.consume(owner, 'storage_gb', delta, options?.cause);
    let resized: VolumeInfo;
    try {
      resized = await this.backend(key.backend).resizeVolume(key.pool, key.name, newSizeBytes, { ...options, shrink: newSizeBytes < current.sizeBytes });
    } catch (err) {
      if (delta > 0) await quotas.release(owner, 'storage_gb', delta);
      throw err;
    }
    this.publishVolume(EventKind.VOLUME_RESIZED, resized, options?.cause);
    if (delta < 0) await quotas.release(owner, 'storage_gb', -delta);
    return resized;
  }

  /**
   * Deletes a volume; with `deleteSnapshots` its snapshots first. Snapshots with clones
   * always refuse it; a VM on this host using it as a disk refuses it unless `force`.
   * Every check runs before anything is deleted.
   */
  async deleteVolume(key: VolumeKey, deleteSnapshots: boolean, options?: ChangeOptions & { force?: boolean }): Promise<string[]> {
    const volume = await this.getVolume(key, options);
    if (options?.force !== true && this.options.attachments) {
      const vms = await this.options.attachments(key, options);
      if (vms.length > 0) {
        throw new RpcError(
          'FAILED_PRECONDITION',
          `volume ${volumeLabel(key)} is a disk of VM ${vms.map((vm) => JSON.stringify(vm)).join(', ')} on this host; remove it from the VM first, or set force`,
        );
      }
    }
    const backend = this.backend(key.backend);
    const snapshots = await backend.listSnapshots(key.pool, key.name, options);
    const cloned = snapshots.filter((s) => s.clones.length > 0);
    if (cloned.length > 0) {
      throw new RpcError(
        'FAILED_PRECONDITION',
        `volume ${volumeLabel(key)} has clones depending on it: ${cloned.map((s) => `${s.name} → ${s.clones.join(', ')}`).join('; ')}; flatten or delete the clones first`,
      );
    }
    if (snapshots.length > 0 && !deleteSnapshots) {
      throw new RpcError('FAILED_PRECONDITION', `volume ${volumeLabel(key)} has snapshots: ${snapshots.map((s) => s.name).join(', ')}; delete them first or set delete_snapshots`);
    }
    const deleted: string[] = [];
    for (const snapshot of snapshots) {
      // Deleting the volume with its snapshots also retires its templates (they have no clones, checked above).
      if (snapshot.protected && backend.kind === 'rbd') await this.rbd().unprotectSnapshot(key.pool, key.name, snapshot.name, options);
      await backend.deleteSnapshot(key.pool, key.name, snapshot.name, options);
      this.publishSnapshot(EventKind.SNAPSHOT_DELETED, key, snapshot.name, options?.cause);
      await this.releaseSnapshot(snapshot);
      deleted.push(snapshot.name);
    }
    await backend.deleteVolume(key.pool, key.name, options);
    this.publishVolume(EventKind.VOLUME_DELETED, volume, options?.cause);
    if (volume.owner) await this.options.quotas.release(volume.owner, 'storage_gb', gibOf(volume.sizeBytes));
    return deleted;
  }

  /** Gives the unit back to whoever created the snapshot (snapshots made outside DebVisor were never counted). */
  private async releaseSnapshot(snapshot: SnapshotInfo): Promise<void> {
    if (snapshot.owner) await this.options.quotas.release(snapshot.owner, 'snapshots', 1);
  }

  // ---- snapshots -------------------------------------------------------------------

  /** The snapshots unit was taken by the proto option (or by the caller, for templates). */
  async createSnapshot(key: VolumeKey, name: string, label: string, owner: string, options?: ChangeOptions): Promise<SnapshotInfo> {
    validateText(label, 'label', 256);
    const snapshot = await this.onVolume(key, (backend) => backend.createSnapshot({ pool: key.pool, volume: key.name, name, label, owner }, options));
    this.publishSnapshot(EventKind.SNAPSHOT_CREATED, key, snapshot.name, options?.cause);
    return snapshot;
  }

  /** Deletes each named snapshot on its own: one failure never hides the others. */
  async deleteSnapshots(key: VolumeKey, names: readonly string[], options?: ChangeOptions): Promise<DeleteResult[]> {
    if (names.length === 0) throw new InvalidArgumentError('snapshot_names', 'name at least one snapshot');
    if (names.length > 1000) throw new InvalidArgumentError('snapshot_names', 'at most 1000 per call');
    const backend = this.backend(key.backend);
    const existing = new Map((await this.onVolume(key, (b) => b.listSnapshots(key.pool, key.name, options))).map((s) => [s.name, s]));
    const seen = new Set<string>();
    const results: DeleteResult[] = [];
    for (const [index, raw] of names.entries()) {
      const field = `snapshot_names[${index}]`;
      try {
        const name = validateSnapshotName(raw, field);
        if (seen.has(name)) throw new InvalidArgumentError(field, `"${name}" is listed twice`);
        seen.add(name);
        const snapshot = existing.get(name);
        if (!snapshot) throw new RpcError('NOT_FOUND', `snapshot ${volumeLabel(key)}@${name} not found`);
        this.refuseUndeletable(key, snapshot);
        await backend.deleteSnapshot(key.pool, key.name, name, options);
        this.publishSnapshot(EventKind.SNAPSHOT_DELETED, key, name, options?.cause);
        await this.releaseSnapshot(snapshot);
        results.push({ name: raw });
      } catch (err) {
        results.push({ name: raw, error: err });
      }
    }
    return results;
  }

  private refuseUndeletable(key: VolumeKey, snapshot: SnapshotInfo): void {
    if (snapshot.clones.length > 0) {
      throw new RpcError('FAILED_PRECONDITION', `snapshot ${volumeLabel(key)}@${snapshot.name} has clones: ${snapshot.clones.join(', ')}; flatten or delete them first`);
    }
    if (snapshot.protected) {
      throw new RpcError('FAILED_PRECONDITION', `snapshot ${volumeLabel(key)}@${snapshot.name} is a protected template; delete the volume with delete_snapshots to retire it`);
    }
  }

  // ---- prune -----------------------------------------------------------------------

  static retentionRules(policy: { keepLast: number; keepDailyDays: number; keepWeeklyWeeks: number } | undefined): RetentionRules {
    if (!policy) throw new InvalidArgumentError('retention', 'required');
    const rules = { keepLast: policy.keepLast, keepDailyDays: policy.keepDailyDays, keepWeeklyWeeks: policy.keepWeeklyWeeks };
    if (isEmptyPolicy(rules)) throw new InvalidArgumentError('retention', 'keeps nothing; set keep_last, keep_daily_days or keep_weekly_weeks');
    if (rules.keepLast > 100_000 || rules.keepDailyDays > 36_500 || rules.keepWeeklyWeeks > 5_200) throw new InvalidArgumentError('retention', 'values are out of range');
    return rules;
  }

  /** Plans with the retention policy and (unless a dry run) deletes what it does not keep. */
  async prune(key: VolumeKey, rules: RetentionRules, dryRun: boolean, options: ChangeOptions & { onProgress?: (done: number, total: number) => void; now?: Date } = {}): Promise<PruneResult> {
    const backend = this.backend(key.backend);
    const snapshots = await this.onVolume(key, (b) => b.listSnapshots(key.pool, key.name, options));
    const plan = planRetention(
      snapshots.map((s) => ({ name: s.name, createTime: snapshotTime(s), protected: s.protected, hasClones: s.clones.length > 0 })),
      rules,
      options.now ?? new Date(),
    );
    if (dryRun) return { kept: plan.kept, deleted: plan.deleted, removed: 0 };
    const byName = new Map(snapshots.map((s) => [s.name, s]));
    const failed: string[] = [];
    let removed = 0;
    for (const name of plan.deleted) {
      options.signal?.throwIfAborted();
      const snapshot = byName.get(name);
      // planRetention never selects these; checked again because deleting them is irreversible.
      if (!snapshot || snapshot.protected || snapshot.clones.length > 0) continue;
      try {
        await backend.deleteSnapshot(key.pool, key.name, name, options);
        this.publishSnapshot(EventKind.SNAPSHOT_DELETED, key, name, options.cause);
        await this.releaseSnapshot(snapshot);
        removed++;
      } catch (err) {
        if (options.signal?.aborted) throw err;
        failed.push(name);
      }
      options.onProgress?.(removed + failed.length, plan.deleted.length);
    }
    if (failed.length > 0) {
      throw new RpcError('ABORTED', `pruned ${removed} of ${plan.deleted.length} snapshots of ${volumeLabel(key)}; could not delete ${failed.join(', ')}`);
    }
    return { kept: plan.kept, deleted: plan.deleted, removed };
  }

  // ---- RBD templates ---------------------------------------------------------------

  /** Snapshot, then protect; the snapshot is removed again if protecting fails. */
  async createTemplateSnapshot(pool: string, image: string, name: string, owner: string, options?: ChangeOptions): Promise<SnapshotInfo> {
    const rbd = this.rbd();
    const key: VolumeKey = { backend: 'rbd', pool, name: image };
    // The proto declares no quota for templates, but a template is a snapshot and DeleteVolume gives its unit back.
    await this.options.quotas.consume(owner, 'snapshots', 1, options?.cause);
    let created: SnapshotInfo;
    try {
      created = await this.onVolume(key, () => rbd.createSnapshot({ pool, volume: image, name, label: 'template', owner }, options));
    } catch (err) {
      await this.options.quotas.release(owner, 'snapshots', 1);
      throw err;
    }
    try {
      await rbd.protectSnapshot(pool, image, name, options);
    } catch (err) {
      await rbd.deleteSnapshot(pool, image, name).catch(() => undefined);
      await this.options.quotas.release(owner, 'snapshots', 1);
      throw err;
    }
    this.publishSnapshot(EventKind.SNAPSHOT_CREATED, key, name, options?.cause);
    return { ...created, protected: true };
  }

  /** Checks a clone can start (template exists and is protected), and what it will cost. */
  async templateForClone(from: { pool: string; image: string; snapshot: string }, options?: CallOptions): Promise<VolumeInfo> {
    const template = await this.getVolume({ backend: 'rbd', pool: from.pool, name: from.image }, options);
    const snapshot = (await this.rbd().listSnapshots(from.pool, from.image, options)).find((s) => s.name === from.snapshot);
    if (!snapshot) throw new RpcError('NOT_FOUND', `template snapshot rbd:${from.pool}/${from.image}@${from.snapshot} not found`);
    if (!snapshot.protected) {
      throw new RpcError('FAILED_PRECONDITION', `snapshot rbd:${from.pool}/${from.image}@${from.snapshot} is not a protected template; create it with CreateRbdTemplateSnapshot`);
    }
    return template;
  }

  /** Clones (and optionally flattens); on failure the half-made clone is removed. The caller holds its storage_gb. */
  async clone(
    from: { pool: string; image: string; snapshot: string },
    to: { pool: string; image: string; owner: string; madeBy?: string },
    flatten: boolean,
    options: ChangeOptions & { onProgress?: (percent: number, stage: string) => void } = {},
  ): Promise<VolumeInfo> {
    const rbd = this.rbd();
    options.onProgress?.(5, 'cloning');
    let volume = await rbd.clone(from, { pool: to.pool, image: to.image, owner: to.owner, tags: withMadeBy({}, to.madeBy) }, options);
    try {
      if (flatten) {
        options.onProgress?.(10, 'flattening');
        await rbd.flatten(to.pool, to.image, { ...options, onProgress: (pct) => options.onProgress?.(10 + pct * 0.89, 'flattening') });
        volume = await rbd.getVolume(to.pool, to.image, options);
      }
    } catch (err) {
      await rbd.deleteVolume(to.pool, to.image).catch(() => undefined);
      throw err;
    }
    this.publishVolume(EventKind.VOLUME_CREATED, volume, options.cause);
    return volume;
  }

  /** ALREADY_EXISTS naming `field` when the volume exists (checked before an operation starts). */
  async refuseExisting(key: VolumeKey, field: string, options?: CallOptions): Promise<void> {
    try {
      await this.backend(key.backend).getVolume(key.pool, key.name, options);
    } catch (err) {
      if (isNotFound(err)) return;
      throw err;
    }
    throw new RpcError('ALREADY_EXISTS', `${field}: volume ${volumeLabel(key)} already exists`);
  }

  /** Takes storage_gb for a volume about to be made; the returned quota goes on its operation (released if it fails). */
  async chargeStorage(owner: string, sizeBytes: bigint, cause?: EventCause): Promise<{ resource: 'storage_gb'; amount: number } | undefined> {
    const amount = gibOf(sizeBytes);
    if (amount <= 0) return undefined;
    await this.options.quotas.consume(owner, 'storage_gb', amount, cause);
    return { resource: 'storage_gb', amount };
  }

  async releaseStorage(owner: string, amount: number): Promise<void> {
    await this.options.quotas.release(owner, 'storage_gb', amount);
  }

  // ---- provisioning ----------------------------------------------------------------

  imageTool(): ImageTool {
    if (!this.options.images) throw new RpcError('FAILED_PRECONDITION', 'qemu-img is not available on this node');
    return this.options.images;
  }

  /** Resolves and inspects the image before an operation starts: path and size errors come back at once. */
  async inspectImage(imagePath: string, sizeBytes: bigint, options?: CallOptions): Promise<{ path: string; info: ImageInfo }> {
    validateSize(sizeBytes, 'size_bytes');
    const path = await resolveImagePath(this.options.imagesDir(), imagePath);
    const info = await this.imageTool().info(path, options);
    if (sizeBytes < info.virtualSizeBytes) {
      throw new InvalidArgumentError('size_bytes', `${sizeBytes} is smaller than the image's virtual size of ${info.virtualSizeBytes} bytes`);
    }
    return { path, info };
  }

  /** Creates the volume and writes the image into it; on failure removes only the volume it created. */
  async provision(
    key: VolumeKey,
    spec: { sizeBytes: bigint; tags: Record<string, string>; owner: string; imagePath: string; imageSha256?: string | undefined; madeBy?: string },
    options: ChangeOptions & { onProgress?: (percent: number, stage: string) => void } = {},
  ): Promise<VolumeInfo> {
    const { path, info } = await this.inspectImage(spec.imagePath, spec.sizeBytes, options);
    const backend = this.backend(key.backend);
    options.onProgress?.(2, 'creating volume');
    // Lineage: a volume from a library image names its digest in a reserved tag users cannot set.
    const tags = withMadeBy({ ...validateTags(spec.tags), ...(spec.imageSha256 ? { [IMAGE_DIGEST_TAG]: spec.imageSha256 } : {}) }, spec.madeBy);
    // An existing volume fails here (ALREADY_EXISTS) and is never touched by the cleanup below.
    const volume = await backend.createVolume({ pool: key.pool, name: key.name, sizeBytes: spec.sizeBytes, tags, owner: spec.owner }, options);
    try {
      options.onProgress?.(5, `writing ${info.format} image`);
      await this.imageTool().convert(path, info.format, backend.imageTarget(key.pool, key.name), {
        ...options,
        onProgress: (pct) => options.onProgress?.(5 + pct * 0.94, `writing ${info.format} image`),
      });
    } catch (err) {
      await backend.deleteVolume(key.pool, key.name).catch(() => undefined);
      throw err;
    }
    // Published once the image is in: until then a failure removes the volume again.
    this.publishVolume(EventKind.VOLUME_CREATED, volume, options.cause);
    await this.settleRounding(spec.owner, spec.sizeBytes, volume.sizeBytes);
    return volume;
  }

  // ---- quota recount ---------------------------------------------------------------

  /**
   * What `principal` owns on every configured pool (RecomputeQuota): GiB of its volumes and the number of
   * snapshots it created. One listing per pool, so the host commands do not grow with volumes or snapshots.
   */
  async usageOwnedBy(principal: string, options: CallOptions = {}): Promise<{ storage_gb: number; snapshots: number }> {
    const listings = await Promise.all(this.enabled().flatMap((backend) => backend.pools.map((pool) => backend.ownership(pool, options))));
    let storageGb = 0;
    let snapshots = 0;
    for (const { volumes, snapshotOwners } of listings) {
      for (const volume of volumes) if (volume.owner === principal) storageGb += gibOf(volume.sizeBytes);
      snapshots += snapshotOwners.filter((owner) => owner === principal).length;
    }
    return { storage_gb: storageGb, snapshots };
  }
}
