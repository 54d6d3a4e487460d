// A VM made by CreateVm migrates with MigrateVM, and its ownership (in the domain's <metadata>)
// travels with it, and RecomputeQuota counts it once on either node: two QEMU session libvirtds under TCG and two daemons on one etcd, as in
// test/e2e/migration.test.ts. Skipped locally with DEBVISOR_SKIP_QEMU=1 or DEBVISOR_SKIP_SLOW=1,
// never in CI.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ensureDevPki } from '../../src/pki/index.js';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { QuotaResource } from '../../src/gen/debvisor/v1/options_pb.js';
import { MigrationService } from '../../src/gen/debvisor/v1/migration_pb.js';
import { NodeService } from '../../src/gen/debvisor/v1/node_pb.js';
import { OperationService, OperationState } from '../../src/gen/debvisor/v1/operation_pb.js';
import { CpuMode, VmService, VmState } from '../../src/gen/debvisor/v1/vm_pb.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';
import { startQemuSessions } from '../support/libvirt.js';
import { grpcHealth } from '../support/health.js';
import { finished, MIB, T } from '../support/storage.js';

const skipLocally = (process.env.DEBVISOR_SKIP_QEMU === '1' || process.env.DEBVISOR_SKIP_SLOW === '1') && process.env.CI !== 'true';
const ADMIN = 'spiffe://debvisor/admin/admin';
type Sessions = Awaited<ReturnType<typeof startQemuSessions<'node-a' | 'node-b'>>>;

let sessions: Sessions;
let etcd: EtcdCluster;
let daemonA: RunningDaemon;
let daemonB: RunningDaemon;
let pkiDir: string;

function env(node: 'node-a' | 'node-b'): Record<string, string> {
  return {
    DEBVISOR_RPCD_STORE_BACKEND: 'etcd',
    DEBVISOR_RPCD_STORE_ETCD_ENDPOINTS: etcd.endpoints.join(','),
    DEBVISOR_RPCD_NODE_NAME: node,
    DEBVISOR_RPCD_NODES_HEARTBEAT_INTERVAL_SECONDS: '1',
    DEBVISOR_RPCD_NODES_SELF_REGISTER: 'true',
    DEBVISOR_RPCD_LIBVIRT_URI: sessions.nodes[node].uri,
    DEBVISOR_RPCD_MIGRATION_TARGET_URI_TEMPLATE: sessions.uriTemplate,
    DEBVISOR_RPCD_MIGRATION_PROGRESS_POLL_MS: '100',
    DEBVISOR_RPCD_LIBVIRT_VM_DEFAULTS_DOMAIN_TYPE: 'qemu',
    DEBVISOR_RPCD_LIBVIRT_VM_DEFAULTS_MACHINE_TYPE: 'pc',
    DEBVISOR_RPCD_QUOTA_RECOMPUTE_MIN_INTERVAL_SECONDS: '0',
  };
}

describe.skipIf(skipLocally)('a VM made by CreateVm migrates with MigrateVM, owner and all', () => {
  beforeAll(async () => {
    [sessions, etcd, pkiDir] = await Promise.all([startQemuSessions(['node-a', 'node-b'] as const), startEtcd(), mkdtemp(join(tmpdir(), 'debvisor-vmc-pki-'))]);
    await ensureDevPki(pkiDir);
    [daemonA, daemonB] = await Promise.all([startDaemon({ env: env('node-a'), pkiDir }), startDaemon({ env: env('node-b'), pkiDir })]);
    const nodes = await clientFor(NodeService, daemonA);
    try {
      await vi.waitFor(async () => expect((await nodes.listNodes({}, T)).nodes.filter((n) => n.online).map((n) => n.hostname).sort()).toEqual(['node-a', 'node-b']), { timeout: 30_000, interval: 200 });
    } finally {
      nodes.close();
    }
    for (const d of [daemonA, daemonB]) await vi.waitFor(async () => expect(await grpcHealth(d, VmService.typeName)).toBe('SERVING'), { timeout: 60_000, interval: 100 });
  });

  afterAll(async () => {
    await Promise.all([(daemonA as RunningDaemon | undefined)?.cleanup(), (daemonB as RunningDaemon | undefined)?.cleanup()]);
    await (sessions as Sessions | undefined)?.stop();
    await (etcd as EtcdCluster | undefined)?.stop();
    if (pkiDir) await rm(pkiDir, { recursive: true, force: true });
  });

  it('creates, starts, migrates to node-b, and node-b shows the owner', async () => {
    const [vmsA, vmsB, opsA, migration, accessA, accessB] = await Promise.all([
      clientFor(VmService, daemonA),
      clientFor(VmService, daemonB),
      clientFor(OperationService, daemonA),
      clientFor(MigrationService, daemonA),
      clientFor(AccessService, daemonA),
      clientFor(AccessService, daemonB),
    ]);
    const vmsCounted = async (access: typeof accessA) => {
      const { after } = await access.recomputeQuota({ principal: ADMIN }, T);
      return { vms: after.find((q) => q.resource === QuotaResource.VMS)?.used, vcpus: after.find((q) => q.resource === QuotaResource.VCPUS)?.used };
    };
    try {
      const made = await finished(opsA, (await vmsA.createVm({ spec: { name: 'made-1', vcpus: 1, memoryBytes: 64n * MIB, cpuMode: CpuMode.CUSTOM, cpuModel: 'qemu64', startAfterCreate: true } }, T)).operation, 120_000);
      expect(made.state, made.error?.message).toBe(OperationState.SUCCEEDED);
      await vi.waitFor(async () => expect((await vmsA.getVm({ vmName: 'made-1' }, T)).vm?.state).toBe(VmState.RUNNING), { timeout: 60_000, interval: 200 });
      // RecomputeQuota counts the principal's VMs on every node: node-b counts made-1 from node-a's published inventory.
      await vi.waitFor(async () => expect(await vmsCounted(accessB)).toEqual({ vms: 1n, vcpus: 1n }), { timeout: 30_000, interval: 200 });
      expect(await vmsCounted(accessA)).toEqual({ vms: 1n, vcpus: 1n });
      const { operation } = await migration.migrateVM({ vmName: 'made-1', sourceNode: 'node-a', targetNode: 'node-b' }, T);
      const moved = await finished(opsA, operation, 180_000);
      expect(moved.state, moved.error?.message).toBe(OperationState.SUCCEEDED);
      await vi.waitFor(async () => expect((await vmsB.getVm({ vmName: 'made-1' }, T)).vm).toMatchObject({ state: VmState.RUNNING, owner: ADMIN }), { timeout: 60_000, interval: 200 });
      // Counted once (by UUID), though node-a's last publication may still list it.
      expect(await vmsCounted(accessB)).toEqual({ vms: 1n, vcpus: 1n });
      await vi.waitFor(async () => expect(await vmsCounted(accessA)).toEqual({ vms: 1n, vcpus: 1n }), { timeout: 30_000, interval: 200 });
      // Deleted where it now runs.
      const opsB = await clientFor(OperationService, daemonB);
      try {
        const gone = await finished(opsB, (await vmsB.deleteVm({ vmName: 'made-1', force: true }, T)).operation, 120_000);
        expect(gone.state, gone.error?.message).toBe(OperationState.SUCCEEDED);
      } finally {
        opsB.close();
      }
    } finally {
      for (const c of [vmsA, vmsB, opsA, migration, accessA, accessB]) c.close();
    }
  });
});
