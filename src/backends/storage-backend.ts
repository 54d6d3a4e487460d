// The one shape StorageService drives, implemented by src/backends/rbd (rbd CLI) and
// src/backends/lvm (lvm tools). Names reaching a backend are already validated
// (src/backends/validate.ts); backends still pass them only as argv, never through a shell.
// Failures are ExecError (src/backends/exec.ts, classified per tool) or RpcError; both are
// mapped to gRPC codes in src/rpc/errors.ts only.

export type BackendKind = 'rbd' | 'lvm';

/**
 * Most user tags per volume: what the API accepts (src/storage/names.ts) and what the LVM backend
 * stores (every LVM tag lives in the VG's shared metadata area, see src/backends/lvm/tags.ts).
 */
export const MAX_USER_TAGS = 32;

/** Progress of a long host command, 0–100, from the tool's own output. */
export type ProgressFn = (percent: number) => void;

export interface CallOptions {
  signal?: AbortSignal;
}

export interface ProgressOptions extends CallOptions {
  onProgress?: ProgressFn;
}

export interface VolumeInfo {
  backend: BackendKind;
  /** RBD pool or LVM volume group. */
  pool: string;
  name: string;
  sizeBytes: bigint;
  /** Allocated bytes where the backend reports them (rbd du, thin LVs); 0n if unknown. */
  usedBytes: bigint;
  /** User tags only (ownership and bookkeeping keys are stripped). */
  tags: Record<string, string>;
  /** Principal id recorded at creation (RBD image-meta / LVM tag); '' if created outside DebVisor. */
  owner: string;
  createTime?: Date;
  /** RBD clone parent "pool/image@snap", when this image is an unflattened clone. */
  parent?: string;
}

export interface SnapshotInfo {
  pool: string;
  volume: string;
  name: string;
  label: string;
  createTime?: Date;
  /** Bytes used by the snapshot where known; 0n otherwise. */
  sizeBytes: bigint;
  protected: boolean;
  /** Images cloned from this snapshot ("pool/image"); a snapshot with clones is never deleted. */
  clones: string[];
  owner: string;
}

export interface CreateVolumeSpec {
  pool: string;
  name: string;
  sizeBytes: bigint;
  tags: Record<string, string>;
  owner: string;
}

export interface CreateSnapshotSpec {
  pool: string;
  volume: string;
  name: string;
  label: string;
  owner: string;
}

/** The owners of a pool's volumes (with their sizes) and of its snapshots. */
export interface PoolOwnership {
  volumes: { owner: string; sizeBytes: bigint }[];
  snapshotOwners: string[];
}

export interface VolumeBackend {
  readonly kind: BackendKind;
  /** The pools / VGs this daemon may use (from config); anything else is refused before a command runs. */
  readonly pools: readonly string[];

  listVolumes(pool: string, options?: CallOptions): Promise<VolumeInfo[]>;
  /** Throws a not_found ExecError when the volume does not exist. */
  getVolume(pool: string, name: string, options?: CallOptions): Promise<VolumeInfo>;
  createVolume(spec: CreateVolumeSpec, options?: CallOptions): Promise<VolumeInfo>;
  /** Sets the size exactly; the caller has already decided grow vs shrink. */
  resizeVolume(pool: string, name: string, sizeBytes: bigint, options?: CallOptions & { shrink: boolean }): Promise<VolumeInfo>;
  deleteVolume(pool: string, name: string, options?: ProgressOptions): Promise<void>;

  listSnapshots(pool: string, volume: string, options?: CallOptions): Promise<SnapshotInfo[]>;
  createSnapshot(spec: CreateSnapshotSpec, options?: CallOptions): Promise<SnapshotInfo>;
  deleteSnapshot(pool: string, volume: string, name: string, options?: CallOptions): Promise<void>;

  /**
   * Who owns what in one pool (RecomputeQuota): a single listing, so its cost in host commands does
   * not grow with the number of volumes or snapshots.
   */
  ownership(pool: string, options?: CallOptions): Promise<PoolOwnership>;

  /**
   * Where qemu-img writes a raw image for this volume: an LVM device path (`/dev/VG/LV`) or
   * an `rbd:pool/image[:conf=…]` target. ProvisionVolume converts into it.
   */
  imageTarget(pool: string, name: string): string;
}

/** RBD-only operations: templates are protected snapshots, clones depend on them. */
export interface RbdTemplateBackend extends VolumeBackend {
  readonly kind: 'rbd';
  protectSnapshot(pool: string, image: string, snapshot: string, options?: CallOptions): Promise<void>;
  unprotectSnapshot(pool: string, image: string, snapshot: string, options?: CallOptions): Promise<void>;
  /** `to.tags`: the clone's own tags (the parent's are not copied). */
  clone(
    from: { pool: string; image: string; snapshot: string },
    to: { pool: string; image: string; owner: string; tags?: Record<string, string> },
    options?: CallOptions,
  ): Promise<VolumeInfo>;
  /** Copies the parent's data into the clone; progress from rbd's stderr. */
  flatten(pool: string, image: string, options?: ProgressOptions): Promise<void>;
}
