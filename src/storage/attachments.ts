// Which VMs on this host use a volume as a disk: DeleteVolume refuses to pull a disk out
// from under a defined or running VM unless the caller says force.
import type { Libvirt } from '../backends/libvirt/virsh.js';
import type { DomainDisk } from '../backends/libvirt/xml.js';
import { RpcError } from '../rpc/errors.js';
import type { CallOptions } from '../backends/storage-backend.js';
import { volumeLabel, type VolumeKey } from './names.js';

/** The names of the VMs on this host with a disk on the volume. */
export type AttachmentFinder = (key: VolumeKey, options?: CallOptions) => Promise<string[]>;

/** Device-mapper's name for an LV: each `-` in either name doubled, the two joined by `-`. */
function mapperName(vg: string, lv: string): string {
  return `${vg.replaceAll('-', '--')}-${lv.replaceAll('-', '--')}`;
}

/** Whether a libvirt disk is the volume: an RBD network disk `pool/image` (at any snapshot), or the LV's block device. */
export function diskUsesVolume(disk: DomainDisk, key: VolumeKey): boolean {
  if (key.backend === 'rbd') {
    const image = `${key.pool}/${key.name}`;
    return disk.sourceType === 'network' && disk.protocol === 'rbd' && (disk.sourcePath === image || disk.sourcePath.startsWith(`${image}@`));
  }
  return disk.sourceType === 'block' && (disk.sourcePath === `/dev/${key.pool}/${key.name}` || disk.sourcePath === `/dev/mapper/${mapperName(key.pool, key.name)}`);
}

/**
 * Asks this host's libvirt, not the VM inventory: a delete must see a disk attached a moment
 * ago, which the inventory may not hold yet (the exception to reads served from it). If
 * libvirt cannot be asked, the answer is unknown, so the delete is refused (UNAVAILABLE)
 * rather than assumed safe.
 */
export function libvirtAttachments(libvirt: Libvirt): AttachmentFinder {
  return async (key, options) => {
    let domains: Awaited<ReturnType<Libvirt['domainDisks']>>;
    try {
      domains = await libvirt.domainDisks(options);
    } catch (err) {
      throw new RpcError(
        'UNAVAILABLE',
        `cannot tell whether a VM on this host uses ${volumeLabel(key)}: libvirt did not answer (${err instanceof Error ? err.message : String(err)}); retry, or set force to delete it anyway`,
        { cause: err },
      );
    }
    return domains.filter((domain) => domain.disks.some((disk) => diskUsesVolume(disk, key))).map((domain) => domain.name);
  };
}
