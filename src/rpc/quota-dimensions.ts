// The quota dimensions, named once: the proto's QuotaResource values and the names the store,
// the config and the CLI use for them.
import { QuotaResource } from '../gen/debvisor/v1/options_pb.js';

/** Dimensions whose usage is a count kept in the store (all but the concurrent-operation slots). */
export const countedQuotaResources = ['snapshots', 'storage_gb', 'vms', 'vcpus', 'memory_gb', 'images_gb'] as const;
export const quotaResources = [...countedQuotaResources, 'concurrent_operations'] as const;

export type CountedResource = (typeof countedQuotaResources)[number];
export type QuotaResourceName = (typeof quotaResources)[number];

export const QUOTA_NAMES: ReadonlyMap<QuotaResource, QuotaResourceName> = new Map([
  [QuotaResource.SNAPSHOTS, 'snapshots'],
  [QuotaResource.STORAGE_GB, 'storage_gb'],
  [QuotaResource.CONCURRENT_OPERATIONS, 'concurrent_operations'],
  [QuotaResource.VMS, 'vms'],
  [QuotaResource.VCPUS, 'vcpus'],
  [QuotaResource.MEMORY_GB, 'memory_gb'],
  [QuotaResource.IMAGES_GB, 'images_gb'],
]);

/** Keyed by any string, so a name typed by a user can be looked up as is. */
export const QUOTA_ENUMS: ReadonlyMap<string, QuotaResource> = new Map([...QUOTA_NAMES].map(([value, name]) => [name, value]));

export function isCountedResource(name: QuotaResourceName): name is CountedResource {
  return (countedQuotaResources as readonly string[]).includes(name);
}
