// StorageService: thin protobuf mapping over src/storage/manager.ts (RBD and LVM behind
// one VolumeBackend shape). Quotas declared in the proto are taken before these handlers
// run (withDeclaredPolicies); the manager keeps them in step and releases them to owners.
import type { MessageInitShape } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { globMatches, isValidResourceGlob, keyScopeShows } from '../authz/decide.js';
import type { StorageService, SnapshotSchema, VolumeSchema } from '../gen/debvisor/v1/storage_pb.js';
import { StorageBackend, type VolumeRefSchema } from '../gen/debvisor/v1/storage_types_pb.js';
import { OperationKind } from '../gen/debvisor/v1/operation_pb.js';
import { z } from 'zod';
import type { OperationManager } from '../operations/manager.js';
import { defineOperationKind } from '../operations/kinds.js';
import type { HandlersOf } from '../rpc/adapter.js';
import type { CallContext } from '../rpc/context.js';
import { InvalidArgumentError, itemStatus, UnauthenticatedError } from '../rpc/errors.js';
import type { ImageLibrary } from '../images/library.js';
import { validateSha256 } from '../images/names.js';
import { libraryImageSource } from '../images/source.js';
import { IMAGE_DIGEST_TAG } from '../storage/names.js';
import { pageByKey, pageByOffset } from '../rpc/paging.js';
import type { BackendKind, SnapshotInfo, VolumeInfo } from '../backends/storage-backend.js';
import { snapshotTime, StorageManager } from '../storage/manager.js';
import { volumeLabel, type VolumeKey } from '../storage/names.js';
import type { RetentionRules } from '../storage/retention.js';
import { validateImageName, validateSnapshotName } from '../backends/validate.js';
import { operationMessage } from './operations.js';
import { causeOf } from '../events/cause.js';


const KIND_OF: Partial<Record<StorageBackend, BackendKind>> = { [StorageBackend.RBD]: 'rbd', [StorageBackend.LVM]: 'lvm' };
const ENUM_OF: Record<BackendKind, StorageBackend> = { rbd: StorageBackend.RBD, lvm: StorageBackend.LVM };

const volumeKey = z.object({ backend: z.enum(['rbd', 'lvm']), pool: z.string(), name: z.string() }) satisfies z.ZodType<VolumeKey>;
const retentionRules = z.object({ keepLast: z.number(), keepDailyDays: z.number(), keepWeeklyWeeks: z.number() }) satisfies z.ZodType<RetentionRules>;

/** PruneSnapshots: the PrunePlan it carried out (or, dry, would have). */
export const PRUNE_SNAPSHOTS = defineOperationKind(OperationKind.PRUNE_SNAPSHOTS, z.object({ volume: volumeKey, rules: retentionRules, dryRun: z.boolean() }), 'prunePlan');

/** CloneRbdFromTemplate: the new RBD image. */
export const CLONE_RBD_FROM_TEMPLATE = defineOperationKind(
  OperationKind.CLONE_RBD_FROM_TEMPLATE,
  z.object({
    from: z.object({ pool: z.string(), image: z.string(), snapshot: z.string() }),
    to: z.object({ pool: z.string(), image: z.string(), owner: z.string() }),
    flatten: z.boolean(),
  }),
  'clonedVolume',
);

/** ProvisionVolume: the provisioned volume. */
export const PROVISION_VOLUME = defineOperationKind(
  OperationKind.PROVISION_VOLUME,
  z.object({
    volume: volumeKey,
    /** Decimal string: operation params are JSON. */
    sizeBytes: z.string().regex(/^\d+$/),
    tags: z.record(z.string(), z.string()),
    owner: z.string(),
    imagePath: z.string(),
    /** Set when provisioned from a library image (ImageService): its digest, the volume's lineage. */
    imageSha256: z.string().regex(/^[0-9a-f]{64}$/).optional(),
  }),
  'provisionedVolume',
);

function principalOf(ctx: CallContext) {
  if (!ctx.principal) throw new UnauthenticatedError('no principal on call');
  return ctx.principal;
}

function kindOf(backend: StorageBackend, field: string): BackendKind {
  const kind = KIND_OF[backend];
  if (!kind) throw new InvalidArgumentError(field, 'required: STORAGE_BACKEND_RBD or STORAGE_BACKEND_LVM');
  return kind;
}

function refOf(key: VolumeKey): MessageInitShape<typeof VolumeRefSchema> {
  return { backend: ENUM_OF[key.backend], pool: key.pool, name: key.name };
}

function volumeMessage(v: VolumeInfo): MessageInitShape<typeof VolumeSchema> {
  return {
    ref: { backend: ENUM_OF[v.backend], pool: v.pool, name: v.name },
    sizeBytes: v.sizeBytes,
    usedBytes: v.usedBytes,
    tags: v.tags,
    owner: v.owner,
    ...(v.createTime ? { createTime: timestampFromDate(v.createTime) } : {}),
  };
}

function snapshotMessage(backend: BackendKind, s: SnapshotInfo): MessageInitShape<typeof SnapshotSchema> {
  return {
    dataset: { backend: ENUM_OF[backend], pool: s.pool, name: s.volume },
    name: s.name,
    label: s.label,
    createTime: timestampFromDate(snapshotTime(s)),
    sizeBytes: s.sizeBytes,
    protected: s.protected,
  };
}


/** Registers the runners of PruneSnapshots, CloneRbdFromTemplate and ProvisionVolume (with the image library, if the node has one). */
export function registerStorageOperationKinds(operations: OperationManager, storage: StorageManager, images?: ImageLibrary): void {
  operations.register(PRUNE_SNAPSHOTS, {
    run: async (op) => {
      const params = op.params;
      op.progress(0, params.dryRun ? 'planning (dry run)' : 'planning');
      const result = await storage.prune(params.volume, params.rules, params.dryRun, {
        signal: op.signal,
        cause: op.cause,
        onProgress: (done, total) => op.progress((done / Math.max(1, total)) * 99, `deleted ${done} of ${total}`),
      });
      return {
        case: 'prunePlan',
        value: { dataset: refOf(params.volume), kept: result.kept, deleted: result.deleted, removedCount: result.removed, dryRun: params.dryRun },
      };
    },
  });
  operations.register(CLONE_RBD_FROM_TEMPLATE, {
    run: async (op) => {
      const params = op.params;
      await storage.clone(params.from, params.to, params.flatten, { signal: op.signal, cause: op.cause, onProgress: (pct, stage) => op.progress(pct, stage) });
      return { case: 'clonedVolume', value: refOf({ backend: 'rbd', pool: params.to.pool, name: params.to.image }) };
    },
  });
  operations.register(PROVISION_VOLUME, {
    run: async (op) => {
      const params = op.params;
      // A library image is in use while it is read: DeleteImage is refused until then.
      const release = params.imageSha256 && images ? images.use(params.imageSha256) : undefined;
      try {
        await storage.provision(
          params.volume,
          { sizeBytes: BigInt(params.sizeBytes), tags: params.tags, owner: params.owner, imagePath: params.imagePath, imageSha256: params.imageSha256 },
          { signal: op.signal, cause: op.cause, onProgress: (pct, stage) => op.progress(pct, stage) },
        );
      } finally {
        release?.();
      }
      return { case: 'provisionedVolume', value: refOf(params.volume) };
    },
  });
}

export interface StorageHandlerDeps {
  readonly storage: StorageManager;
  readonly operations: OperationManager;
  /** This node's image library: ProvisionVolume's `image`. */
  readonly images?: ImageLibrary | undefined;
}

export function storageHandlers({ storage, operations, images }: StorageHandlerDeps): HandlersOf<typeof StorageService> {
  /** A VolumeRef of a request, validated: backend configured, pool allowed, names valid. */
  const keyOf = (ref: { backend: StorageBackend; pool: string; name: string } | undefined, field: string): VolumeKey => {
    if (!ref) throw new InvalidArgumentError(field, 'required');
    return storage.volumeKey(kindOf(ref.backend, `${field}.backend`), ref.pool, ref.name, field);
  };
  const requestIdOf = (requestId: string) => (requestId ? { requestId } : {});
  /** ProvisionVolume's source: a file of the images directory, or a library image by name or digest. */
  const imageSourceOf = async (request: { imagePath: string; image: string }, ctx: CallContext): Promise<{ imagePath: string; imageSha256?: string }> => {
    if (request.image === '') return { imagePath: request.imagePath };
    if (request.imagePath !== '') throw new InvalidArgumentError('image', 'give either image or image_path, not both');
    return libraryImageSource(images, request.image, principalOf(ctx), 'image');
  };

  return {
    createVolume: async (request, ctx) => {
      const key = keyOf(request.volume, 'volume');
      const volume = await storage.createVolume(key, request.sizeBytes, request.tags, principalOf(ctx).id, { signal: ctx.signal, cause: causeOf(ctx) });
      return { volume: volumeMessage(volume) };
    },

    listVolumes: async (request, ctx) => {
      const principal = principalOf(ctx);
      if (request.nameGlob && !isValidResourceGlob(request.nameGlob)) {
        throw new InvalidArgumentError('name_glob', 'may contain only name characters plus * and ?, at most 256');
      }
      if (!(request.backend in StorageBackend)) throw new InvalidArgumentError('backend', 'unknown storage backend');
      const imageDigest = request.imageDigest === '' ? '' : validateSha256(request.imageDigest, 'image_digest');
      const kinds: BackendKind[] = request.backend === StorageBackend.UNSPECIFIED ? storage.enabled().map((b) => b.kind) : [kindOf(request.backend, 'backend')];
      // A scoped API key sees only the pools its globs allow (RBAC checked `pool` only when it was given).
      const visible = (pool: string) => keyScopeShows(principal.apiKey?.resourceGlobs, 'pool', pool);
      if (request.pool) {
        if (request.backend !== StorageBackend.UNSPECIFIED) storage.pool(kindOf(request.backend, 'backend'), request.pool, 'pool');
        else if (!kinds.some((kind) => storage.backend(kind).pools.includes(request.pool))) {
          throw new InvalidArgumentError('pool', `"${request.pool}" is not a pool or volume group this node uses`);
        }
      }
      const all: VolumeInfo[] = [];
      for (const kind of kinds) {
        const backend = storage.backend(kind);
        for (const pool of backend.pools.filter((p) => (!request.pool || p === request.pool) && visible(p))) {
          all.push(...(await backend.listVolumes(pool, { signal: ctx.signal })));
        }
      }
      const sortKey = (v: VolumeInfo) => `${v.backend} ${v.pool} ${v.name}`;
      const matching = all.filter((v) => (!request.nameGlob || globMatches(request.nameGlob, v.name)) && (!imageDigest || v.tags[IMAGE_DIGEST_TAG] === imageDigest)).sort((a, b) => (sortKey(a) < sortKey(b) ? -1 : sortKey(a) > sortKey(b) ? 1 : 0));
      const page = pageByKey(matching, sortKey, request);
      return { volumes: page.items.map(volumeMessage), nextPageToken: page.nextPageToken };
    },

    resizeVolume: async (request, ctx) => {
      const key = keyOf(request.volume, 'volume');
      const volume = await storage.resizeVolume(key, request.newSizeBytes, request.allowShrink, principalOf(ctx).id, { signal: ctx.signal, cause: causeOf(ctx) });
      return { volume: volumeMessage(volume) };
    },

    deleteVolume: async (request, ctx) => {
      const key = keyOf(request.volume, 'volume');
      return { deletedSnapshots: await storage.deleteVolume(key, request.deleteSnapshots, { signal: ctx.signal, force: request.force, cause: causeOf(ctx) }) };
    },

    provisionVolume: async (request, ctx) => {
      const key = keyOf(request.volume, 'volume');
      const owner = principalOf(ctx).id;
      const { imagePath, imageSha256 } = await imageSourceOf(request, ctx);
      // Path, format and size problems are answered now, not as a failed operation.
      await storage.inspectImage(imagePath, request.sizeBytes, { signal: ctx.signal });
      await storage.refuseExisting(key, 'volume.name', { signal: ctx.signal });
      const record = await operations.launch(ctx, PROVISION_VOLUME, {
        target: volumeLabel(key),
        params: { volume: key, sizeBytes: request.sizeBytes.toString(), tags: request.tags, owner, imagePath, ...(imageSha256 ? { imageSha256 } : {}) },
        // The operation owns the storage_gb the proto option took: a failed provisioning gives it back.
        ...(ctx.quota ? { quota: ctx.quota } : {}),
        ...requestIdOf(request.requestId),
      });
      return { operation: operationMessage(record) };
    },

    createSnapshot: async (request, ctx) => {
      const key = keyOf(request.dataset, 'dataset');
      const name = validateSnapshotName(request.snapshotName, 'snapshot_name');
      const snapshot = await storage.createSnapshot(key, name, request.label, principalOf(ctx).id, { signal: ctx.signal, cause: causeOf(ctx) });
      return { snapshot: snapshotMessage(key.backend, snapshot) };
    },

    listSnapshots: async (request, ctx) => {
      const key = keyOf(request.dataset, 'dataset');
      const page = pageByOffset(await storage.listSnapshots(key, { signal: ctx.signal }), request);
      return { snapshots: page.items.map((s) => snapshotMessage(key.backend, s)), nextPageToken: page.nextPageToken };
    },

    deleteSnapshot: async (request, ctx) => {
      const key = keyOf(request.dataset, 'dataset');
      const results = await storage.deleteSnapshots(key, request.snapshotNames, { signal: ctx.signal, cause: causeOf(ctx) });
      return {
        results: results.map((r) => ({ snapshotName: r.name, status: r.error === undefined ? { code: 0, message: '' } : itemStatus(r.error) })),
      };
    },

    pruneSnapshots: async (request, ctx) => {
      const key = keyOf(request.dataset, 'dataset');
      const rules = StorageManager.retentionRules(request.retention);
      // An unknown volume is answered now, not as a failed operation.
      await storage.getVolume(key, { signal: ctx.signal });
      const record = await operations.launch(ctx, PRUNE_SNAPSHOTS, { target: volumeLabel(key), params: { volume: key, rules, dryRun: request.dryRun }, ...requestIdOf(request.requestId) });
      return { operation: operationMessage(record) };
    },

    createRbdTemplateSnapshot: async (request, ctx) => {
      const pool = storage.pool('rbd', request.pool, 'pool');
      const image = validateImageName(request.image, 'image');
      const name = validateSnapshotName(request.snapshot, 'snapshot');
      const snapshot = await storage.createTemplateSnapshot(pool, image, name, principalOf(ctx).id, { signal: ctx.signal, cause: causeOf(ctx) });
      return { snapshot: snapshotMessage('rbd', snapshot) };
    },

    cloneRbdFromTemplate: async (request, ctx) => {
      const from = {
        pool: storage.pool('rbd', request.templatePool, 'template_pool'),
        image: validateImageName(request.templateImage, 'template_image'),
        snapshot: validateSnapshotName(request.templateSnapshot, 'template_snapshot'),
      };
      const to = { pool: storage.pool('rbd', request.targetPool, 'target_pool'), image: validateImageName(request.targetImage, 'target_image'), owner: principalOf(ctx).id };
      const template = await storage.templateForClone(from, { signal: ctx.signal });
      await storage.refuseExisting({ backend: 'rbd', pool: to.pool, name: to.image }, 'target_image', { signal: ctx.signal });
      // The clone is a volume its creator owns: it counts against storage_gb like CreateVolume (the proto only declares the operation slot).
      const quota = await storage.chargeStorage(to.owner, template.sizeBytes, causeOf(ctx));
      try {
        const record = await operations.launch(ctx, CLONE_RBD_FROM_TEMPLATE, {
          target: volumeLabel({ backend: 'rbd', pool: to.pool, name: to.image }),
          params: { from, to, flatten: request.flatten },
          ...(quota ? { quota } : {}),
          ...requestIdOf(request.requestId),
        });
        return { operation: operationMessage(record) };
      } catch (err) {
        if (quota) await storage.releaseStorage(to.owner, quota.amount);
        throw err;
      }
    },
  };
}
