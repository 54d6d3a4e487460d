// Shared bits of the StorageService e2e suites: typed clients, quota reads, waiting for operations.
import type { GenService } from '@bufbuild/protobuf/codegenv2';
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import type { TypedClient } from '../../src/client/client.js';
import type { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { OperationState, type Operation, type OperationService } from '../../src/gen/debvisor/v1/operation_pb.js';
import { QuotaResource } from '../../src/gen/debvisor/v1/options_pb.js';

export type MethodsOf<T> = T extends GenService<infer S> ? S : never;
export type Client<T> = TypedClient<MethodsOf<T>>;

export const T = { timeoutMs: 20_000 };
/** Rate limits out of the way: the suites make hundreds of calls in seconds. */
export const NO_RATE_LIMITS = { rate_limit: { per_role_per_minute: { admin: 1_000_000, operator: 1_000_000, developer: 1_000_000 }, default_per_minute: 1_000_000, global_per_minute: 10_000_000 } };
export const GIB = 1024n ** 3n;
export const MIB = 1024n ** 2n;

export async function used(access: Client<typeof AccessService>, resource: QuotaResource, principal = ''): Promise<bigint> {
  const quota = await access.getQuota(principal ? { principal } : {}, T);
  return quota.quotas.find((q) => q.resource === resource)?.used ?? -1n;
}

export const storageGb = (access: Client<typeof AccessService>, principal = '') => used(access, QuotaResource.STORAGE_GB, principal);
export const snapshotsUsed = (access: Client<typeof AccessService>, principal = '') => used(access, QuotaResource.SNAPSHOTS, principal);

/** Waits for a terminal state and returns the final operation. */
export async function finished(ops: Client<typeof OperationService>, operation: Operation | undefined, timeoutMs = 30_000): Promise<Operation> {
  if (!operation) throw new Error('no operation in the reply');
  const deadline = Date.now() + timeoutMs;
  let current = operation;
  while (current.state === OperationState.PENDING || current.state === OperationState.RUNNING) {
    if (Date.now() > deadline) throw new Error(`operation ${operation.id} still ${OperationState[current.state]} after ${timeoutMs} ms`);
    current = (await ops.waitOperation({ operationId: operation.id, timeout: durationFromMs(10_000) }, { timeoutMs: 15_000 })).operation ?? current;
  }
  return current;
}

/** The daemon environment for all storage backends at once: Ceph pools, an LVM VG, an images directory and libvirt. */
export function storageBackendsEnv(b: { cephConf: string; pools: readonly string[]; lvm: { vg: string; systemDir: string }; imagesDir: string; libvirtUri: string }): Record<string, string> {
  return {
    DEBVISOR_RPCD_RBD_CEPH_CONF: b.cephConf,
    DEBVISOR_RPCD_RBD_POOLS: b.pools.join(','),
    DEBVISOR_RPCD_LVM_VGS: b.lvm.vg,
    DEBVISOR_RPCD_LVM_SYSTEM_DIR: b.lvm.systemDir,
    DEBVISOR_RPCD_IMAGES_DIR: b.imagesDir,
    DEBVISOR_RPCD_LIBVIRT_URI: b.libvirtUri,
  };
}
