// A daemon that makes VMs for real QEMU (qemu:///session, TCG) with RBD disks of a test Ceph:
// machine type pc, and the cluster's monitor written into every RBD disk source, as an operator
// copies it from the cluster's mon_host (ceph-test-start writes "v2:127.0.0.1:PORT").
import { readFile } from 'node:fs/promises';
import { expect, vi } from 'vitest';
import { VmService } from '../../src/gen/debvisor/v1/vm_pb.js';
import type { TestCeph } from './ceph.js';
import { startDaemon, type RunningDaemon } from './daemon.js';
import { grpcHealth } from './health.js';
import type { TestLibvirt } from './libvirt.js';
import { NO_RATE_LIMITS } from './storage.js';

/** "127.0.0.1:PORT" from the test cluster's ceph.conf. */
export async function cephMonitorOf(ceph: TestCeph): Promise<string> {
  const monitor = /^mon host = v2:(127\.0\.0\.1:\d+)$/m.exec(await readFile(ceph.conf, 'utf8'))?.[1];
  if (monitor === undefined) throw new Error(`no "mon host" in ${ceph.conf}`);
  return monitor;
}

/** The daemon on `libvirt` (a QEMU session) with `pool` of `ceph` for VM disks, once VmService is SERVING. */
export async function startQemuRbdDaemon(libvirt: TestLibvirt, ceph: TestCeph, pool: string): Promise<{ daemon: RunningDaemon; monitor: string }> {
  const monitor = await cephMonitorOf(ceph);
  const daemon = await startDaemon({
    env: {
      DEBVISOR_RPCD_LIBVIRT_URI: libvirt.uri,
      DEBVISOR_RPCD_LIBVIRT_VM_DEFAULTS_DOMAIN_TYPE: 'qemu',
      DEBVISOR_RPCD_LIBVIRT_VM_DEFAULTS_MACHINE_TYPE: 'pc',
      DEBVISOR_RPCD_LIBVIRT_VM_DEFAULTS_RBD_MONITORS: monitor,
      DEBVISOR_RPCD_RBD_CEPH_CONF: ceph.conf,
      DEBVISOR_RPCD_RBD_POOLS: pool,
    },
    config: NO_RATE_LIMITS,
  });
  await vi.waitFor(async () => expect(await grpcHealth(daemon, VmService.typeName)).toBe('SERVING'), { timeout: 60_000, interval: 100 });
  return { daemon, monitor };
}
