// Builds the storage side of the daemon from its config: the RBD backend when a ceph.conf
// is set, the LVM backend when volume groups are listed, qemu-img for provisioning, and
// the usage sources RecomputeQuota recounts from.
import type { Registry } from 'prom-client';
import type { AttachmentFinder } from './attachments.js';
import type { Config } from '../config/schema.js';
import { LvmBackend } from '../backends/lvm/lvm.js';
import { QemuImg } from '../backends/qemu-img/qemu-img.js';
import { RbdBackend } from '../backends/rbd/rbd.js';
import type { QuotaManager } from '../quota/manager.js';
import { StorageManager, type ImageTool } from './manager.js';
import { NO_EVENTS, type EventSink } from '../events/types.js';

/** qemu-img as provisioning uses it: the target volume exists already (createVolume made it), so `-n`. */
function imageTool(config: Config, registry: Registry): ImageTool {
  const qemuImg = new QemuImg({
    qemuImgPath: config.qemu_img.path,
    defaultTimeoutMs: config.qemu_img.info_timeout_seconds * 1000,
    convertTimeoutMs: config.qemu_img.convert_timeout_seconds * 1000,
    allowedFormats: config.images.allowed_formats,
    registry,
  });
  return {
    info: (path, options) => qemuImg.info(path, options),
    convert: (source, sourceFormat, target, options = {}) =>
      qemuImg.convert({
        source,
        sourceFormat,
        target,
        targetFormat: 'raw',
        targetExists: true,
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.onProgress ? { onProgress: options.onProgress } : {}),
      }),
  };
}

export function createStorage(config: Config, settings: () => Config, quotas: QuotaManager, registry: Registry, attachments: AttachmentFinder, events: EventSink = NO_EVENTS): StorageManager {
  const images = imageTool(config, registry);
  const rbd =
    config.rbd.ceph_conf === ''
      ? undefined
      : new RbdBackend({
          cephConf: config.rbd.ceph_conf,
          pools: config.rbd.pools,
          id: config.rbd.id,
          keyring: config.rbd.keyring,
          rbdPath: config.rbd.rbd_path,
          pythonPath: config.rbd.python_path,
          maxConcurrent: config.rbd.max_concurrent,
          defaultTimeoutMs: config.rbd.command_timeout_seconds * 1000,
          clusterTimeoutMs: config.rbd.cluster_timeout_seconds * 1000,
          registry,
        });
  const lvm =
    config.lvm.vgs.length === 0
      ? undefined
      : new LvmBackend({
          vgs: config.lvm.vgs,
          lvmPath: config.lvm.lvm_path,
          ...(config.lvm.system_dir ? { systemDir: config.lvm.system_dir } : {}),
          maxConcurrent: config.lvm.max_concurrent,
          defaultTimeoutMs: config.lvm.command_timeout_seconds * 1000,
          snapshotCowPercent: config.lvm.snapshot_cow_percent,
          registry,
        });
  const storage = new StorageManager({ backends: { rbd, lvm }, quotas, images, imagesDir: () => settings().images_dir, attachments, events: { sink: events, node: config.node.name } });
  // Only a node with storage can recount it; VM snapshots carry no owner and are not recounted.
  if (storage.enabled().length > 0) {
    quotas.registerUsageSource(['storage_gb', 'snapshots'], (principal, options) => storage.usageOwnedBy(principal, options));
  }
  return storage;
}
