// VmService end to end: the real daemon's RPCs against a REAL libvirtd (test driver,
// unprivileged, see test/support/libvirt.ts): listing, life cycle, snapshots and their
// quota, ShutdownVm as an Operation, error mapping, permissions, and an unreachable libvirtd.
import { execFile } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import type { GenService } from '@bufbuild/protobuf/codegenv2';
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { TypedClient } from '../../src/client/client.js';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { OperationKind, OperationService, OperationState } from '../../src/gen/debvisor/v1/operation_pb.js';
import { QuotaResource, ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { VmService, VmState } from '../../src/gen/debvisor/v1/vm_pb.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { defineTestDomain, startLibvirt, VIRSH, type TestLibvirt } from '../support/libvirt.js';
import { issueClientFor, metricSum, metricsText, rejection } from '../support/security.js';
import { grpcHealth } from '../support/health.js';

const run = promisify(execFile);
const T = { timeoutMs: 15_000 };
const VIEWER = 'spiffe://debvisor/vm-test/viewer';

let lv: TestLibvirt;
let daemon: RunningDaemon;
type MethodsOf<T> = T extends GenService<infer S> ? S : never;
let vms: TypedClient<MethodsOf<typeof VmService>>;
let access: TypedClient<MethodsOf<typeof AccessService>>;
let ops: TypedClient<MethodsOf<typeof OperationService>>;
const closers: { close(): void }[] = [];

async function snapshotsUsed(): Promise<bigint | undefined> {
  return (await access.getQuota({}, T)).quotas.find((q) => q.resource === QuotaResource.SNAPSHOTS)?.used;
}

beforeAll(async () => {
  lv = await startLibvirt();
  await defineTestDomain(lv, 'vm1', '555555555555');
  await defineTestDomain(lv, 'web-1', '000000000001');
  await defineTestDomain(lv, 'web-2', '000000000002');
  daemon = await startDaemon({
    env: { DEBVISOR_RPCD_LIBVIRT_URI: lv.uri },
    config: { rate_limit: { per_role_per_minute: { admin: 1_000_000, viewer: 1_000_000 }, default_per_minute: 1_000_000, global_per_minute: 10_000_000 } },
  });
  // VmService serves once its VM inventory has loaded (the rest of the daemon may be ready before).
  await vi.waitFor(async () => expect(await grpcHealth(daemon, VmService.typeName)).toBe('SERVING'), { timeout: 60_000, interval: 50 });
  vms = await clientFor(VmService, daemon);
  access = await clientFor(AccessService, daemon);
  ops = await clientFor(OperationService, daemon);
  closers.push(vms, access, ops);
});

afterAll(async () => {
  for (const c of closers) c.close();
  // Undefined when beforeAll failed half-way.
  await (daemon as RunningDaemon | undefined)?.cleanup();
  await (lv as TestLibvirt | undefined)?.stop();
});

describe('VmService against a real libvirtd', () => {
  it('lists VMs by name, with state filter, name glob and paging', async () => {
    await vms.startVm({ vmName: 'web-1' }, T);
    const all = await vms.listVms({}, T);
    expect(all.vms.map((v) => v.name)).toEqual(['vm1', 'web-1', 'web-2']);
    expect(all.nextPageToken).toBe('');
    expect(all.vms[0]).toMatchObject({ uuid: '11111111-2222-3333-4444-555555555555', state: VmState.SHUT_OFF, vcpus: 1, memoryBytes: 256n * 1024n * 1024n, persistent: true, autostart: false });

    expect((await vms.listVms({ state: VmState.RUNNING }, T)).vms.map((v) => v.name)).toEqual(['web-1']);
    expect((await vms.listVms({ state: VmState.SHUT_OFF }, T)).vms.map((v) => v.name)).toEqual(['vm1', 'web-2']);
    expect((await vms.listVms({ nameGlob: 'web-*' }, T)).vms.map((v) => v.name)).toEqual(['web-1', 'web-2']);
    expect((await vms.listVms({ nameGlob: 'web-*', state: VmState.SHUT_OFF }, T)).vms.map((v) => v.name)).toEqual(['web-2']);

    const first = await vms.listVms({ pageSize: 2 }, T);
    expect(first.vms.map((v) => v.name)).toEqual(['vm1', 'web-1']);
    expect(first.nextPageToken).not.toBe('');
    const second = await vms.listVms({ pageSize: 2, pageToken: first.nextPageToken }, T);
    expect(second.vms.map((v) => v.name)).toEqual(['web-2']);
    expect(second.nextPageToken).toBe('');

    const badToken = await rejection(vms.listVms({ pageToken: '!!' }, T));
    expect(badToken.code).toBe(Status.INVALID_ARGUMENT);
    expect(badToken.details).toContain('page_token');
    const badGlob = await rejection(vms.listVms({ nameGlob: 'a b' }, T));
    expect(badGlob.details).toContain('name_glob');
    await vms.destroyVm({ vmName: 'web-1' }, T);
  });

  it('gets a VM with disks, interfaces and the current snapshot', async () => {
    const { vm } = await vms.getVm({ vmName: 'vm1' }, T);
    expect(vm).toMatchObject({ name: 'vm1', state: VmState.SHUT_OFF, vcpus: 1, memoryBytes: 268435456n, currentSnapshot: '' });
    expect(vm?.node).not.toBe('');
    expect(vm?.disks.map((d) => ({ targetDev: d.targetDev, sourcePath: d.sourcePath, device: d.device }))).toEqual([
      { targetDev: 'vda', sourcePath: '/var/lib/libvirt/images/vm1.qcow2', device: 'disk' },
    ]);
    expect(vm?.interfaces[0]).toMatchObject({ type: 'network', source: 'default' });
  });

  it('runs the life cycle and refuses wrong-state calls with FAILED_PRECONDITION naming the state', async () => {
    expect((await vms.startVm({ vmName: 'vm1' }, T)).vm?.state).toBe(VmState.RUNNING);
    const again = await rejection(vms.startVm({ vmName: 'vm1' }, T));
    expect(again.code).toBe(Status.FAILED_PRECONDITION);
    expect(again.details).toContain('cannot start VM "vm1": it is running');

    expect((await vms.rebootVm({ vmName: 'vm1' }, T)).vm?.state).toBe(VmState.RUNNING);
    // The test driver's guests shut down at once.
    expect((await vms.shutdownVm({ vmName: 'vm1' }, T)).vm?.state).toBe(VmState.SHUT_OFF);
    const stopped = await rejection(vms.shutdownVm({ vmName: 'vm1' }, T));
    expect(stopped.code).toBe(Status.FAILED_PRECONDITION);
    expect(stopped.details).toContain('it is shut off');

    await vms.startVm({ vmName: 'vm1' }, T);
    expect((await vms.destroyVm({ vmName: 'vm1' }, T)).vm?.state).toBe(VmState.SHUT_OFF);
    const destroyStopped = await rejection(vms.destroyVm({ vmName: 'vm1' }, T));
    expect(destroyStopped.code).toBe(Status.FAILED_PRECONDITION);

    // StartVm on a paused VM resumes it.
    await vms.startVm({ vmName: 'vm1' }, T);
    await run(VIRSH, ['-q', '-c', lv.uri, 'suspend', 'vm1'], { env: { LC_ALL: 'C', PATH: '/usr/bin:/bin' } });
    // Behind the daemon's back: GetVm shows it once libvirt's event has reached the inventory.
    await vi.waitFor(async () => expect((await vms.getVm({ vmName: 'vm1' }, T)).vm?.state).toBe(VmState.PAUSED), { timeout: 15_000, interval: 25 });
    expect((await vms.startVm({ vmName: 'vm1' }, T)).vm?.state).toBe(VmState.RUNNING);
    await vms.destroyVm({ vmName: 'vm1' }, T);
  });

  it('maps an unknown VM to NOT_FOUND', async () => {
    for (const call of [() => vms.getVm({ vmName: 'nosuch' }, T), () => vms.startVm({ vmName: 'nosuch' }, T), () => vms.listVmSnapshots({ vmName: 'nosuch' }, T)]) {
      const err = await rejection(call());
      expect(err.code).toBe(Status.NOT_FOUND);
      expect(err.details).toContain('the VM does not exist');
    }
  });

  it('refuses injection names with INVALID_ARGUMENT naming vm_name, spawning nothing', async () => {
    const count = async () => metricSum(await metricsText(daemon), 'backend_command_duration_seconds_count', { backend_service: 'libvirt' });
    // Calls of earlier tests that lost a Promise.all race may still be finishing: wait for a stable count.
    let before = await count();
    for (;;) {
      await sleep(300);
      const now = await count();
      if (now === before) break;
      before = now;
    }
    expect(before).toBeGreaterThan(0);
    for (const bad of ['-rf', 'a;b', '--all', '$(id)', '../etc', 'a b', '']) {
      for (const call of [() => vms.startVm({ vmName: bad }, T), () => vms.getVm({ vmName: bad }, T), () => vms.destroyVm({ vmName: bad }, T)]) {
        const err = await rejection(call());
        expect(err.code, bad).toBe(Status.INVALID_ARGUMENT);
        expect(err.details).toContain('vm_name');
      }
    }
    const snap = await rejection(vms.createVmSnapshot({ vmName: 'vm1', snapshotName: '-x' }, T));
    expect(snap.code).toBe(Status.INVALID_ARGUMENT);
    expect(snap.details).toContain('snapshot_name');
    expect(await count()).toBe(before);
  });

  it('creates, lists, reverts and deletes snapshots, counting them in the snapshots quota', async () => {
    const used0 = (await snapshotsUsed()) ?? 0n;
    await vms.startVm({ vmName: 'vm1' }, T);
    const s1 = await vms.createVmSnapshot({ vmName: 'vm1', snapshotName: 'snap1', description: 'first one' }, T);
    expect(s1.snapshot).toMatchObject({ name: 'snap1', vmName: 'vm1', description: 'first one', vmState: VmState.RUNNING, parent: '', current: true });
    await vms.destroyVm({ vmName: 'vm1' }, T);
    await vms.createVmSnapshot({ vmName: 'vm1', snapshotName: 'snap2' }, T);
    expect(await snapshotsUsed()).toBe(used0 + 2n);

    // A failed create (duplicate) gives its unit back.
    const dup = await rejection(vms.createVmSnapshot({ vmName: 'vm1', snapshotName: 'snap2' }, T));
    expect(dup.code).toBe(Status.ALREADY_EXISTS);
    expect(await snapshotsUsed()).toBe(used0 + 2n);

    const list = await vms.listVmSnapshots({ vmName: 'vm1' }, T);
    expect(list.snapshots.map((s) => [s.name, s.parent, s.current])).toEqual([
      ['snap1', '', false],
      ['snap2', 'snap1', true],
    ]);
    const page = await vms.listVmSnapshots({ vmName: 'vm1', pageSize: 1 }, T);
    expect(page.snapshots.map((s) => s.name)).toEqual(['snap1']);
    expect((await vms.listVmSnapshots({ vmName: 'vm1', pageSize: 1, pageToken: page.nextPageToken }, T)).snapshots.map((s) => s.name)).toEqual(['snap2']);
    expect((await vms.getVm({ vmName: 'vm1' }, T)).vm?.currentSnapshot).toBe('snap2');

    const reverted = await vms.revertVmSnapshot({ vmName: 'vm1', snapshotName: 'snap1' }, T);
    expect(reverted.vm).toMatchObject({ state: VmState.RUNNING, currentSnapshot: 'snap1' });
    const missing = await rejection(vms.revertVmSnapshot({ vmName: 'vm1', snapshotName: 'nosnap' }, T));
    expect(missing.code).toBe(Status.NOT_FOUND);

    expect((await vms.deleteVmSnapshot({ vmName: 'vm1', snapshotName: 'snap1', deleteChildren: true }, T)).deleted).toEqual(['snap1', 'snap2']);
    expect(await snapshotsUsed()).toBe(used0);
    expect((await vms.listVmSnapshots({ vmName: 'vm1' }, T)).snapshots).toEqual([]);
    await vms.destroyVm({ vmName: 'vm1' }, T);
  });

  it('gives the unit of a deleted snapshot back to its creator, and RecomputeQuota counts VM snapshots', async () => {
    const OPERATOR = 'spiffe://debvisor/vm-test/operator';
    await access.bindRole({ principal: OPERATOR, roleName: 'operator' }, T);
    const operator = await clientFor(VmService, daemon, await issueClientFor(daemon.pki, OPERATOR));
    closers.push(operator);
    const usedBy = async (principal: string) => (await access.getQuota({ principal }, T)).quotas.find((q) => q.resource === QuotaResource.SNAPSHOTS)?.used ?? 0n;
    const adminUsed = await snapshotsUsed();

    await operator.createVmSnapshot({ vmName: 'web-1', snapshotName: 'ops-a' }, T);
    await operator.createVmSnapshot({ vmName: 'web-1', snapshotName: 'ops-b' }, T);
    expect(await usedBy(OPERATOR)).toBe(2n);
    // An admin cleans up one of them: the unit returns to the operator who made it.
    await vms.deleteVmSnapshot({ vmName: 'web-1', snapshotName: 'ops-a' }, T);
    expect(await usedBy(OPERATOR)).toBe(1n);
    expect(await snapshotsUsed()).toBe(adminUsed);

    // A snapshot removed behind the daemon's back is found by the recount.
    await run(VIRSH, ['-q', '-c', lv.uri, 'snapshot-delete', '--domain', 'web-1', '--snapshotname', 'ops-b'], { env: { LC_ALL: 'C', PATH: '/usr/bin:/bin' } });
    await operator.createVmSnapshot({ vmName: 'web-1', snapshotName: 'ops-c' }, T);
    expect(await usedBy(OPERATOR)).toBe(2n);
    await access.recomputeQuota({ principal: OPERATOR }, T);
    expect(await usedBy(OPERATOR)).toBe(1n);
    await operator.deleteVmSnapshot({ vmName: 'web-1', snapshotName: 'ops-c' }, T);
    expect(await usedBy(OPERATOR)).toBe(0n);
  });

  it('ShutdownVm with wait runs as an Operation of kind SHUTDOWN_VM', async () => {
    await vms.startVm({ vmName: 'web-2' }, T);
    const started = await vms.shutdownVm({ vmName: 'web-2', wait: true, timeout: durationFromMs(5000), forceAfterTimeout: true }, T);
    const op = started.operation;
    expect(op?.kind).toBe(OperationKind.SHUTDOWN_VM);
    const done = await ops.waitOperation({ operationId: op!.id, timeout: durationFromMs(10_000) }, T);
    expect(done.operation?.state).toBe(OperationState.SUCCEEDED);
    expect(done.operation?.result).toMatchObject({ case: 'shutdown', value: { vmName: 'web-2', forced: false } });
    expect((await vms.getVm({ vmName: 'web-2' }, T)).vm?.state).toBe(VmState.SHUT_OFF);
    // Waiting on a VM that is already off is refused up front.
    const off = await rejection(vms.shutdownVm({ vmName: 'web-2', wait: true }, T));
    expect(off.code).toBe(Status.FAILED_PRECONDITION);
    expect(off.details).toContain('it is shut off');
  });

  it('a viewer may list and get VMs but not start or destroy them', async () => {
    await access.bindRole({ principal: VIEWER, roleName: 'viewer' }, T);
    const viewer = await clientFor(VmService, daemon, await issueClientFor(daemon.pki, VIEWER));
    closers.push(viewer);
    expect((await viewer.listVms({}, T)).vms).toHaveLength(3);
    expect((await viewer.getVm({ vmName: 'vm1' }, T)).vm?.name).toBe('vm1');
    for (const [call, permission] of [
      [() => viewer.startVm({ vmName: 'vm1' }, T), 'vm:start'],
      [() => viewer.destroyVm({ vmName: 'vm1' }, T), 'vm:destroy'],
    ] as const) {
      const err = await rejection(call());
      expect(err.code).toBe(Status.PERMISSION_DENIED);
      expect(err.details).toContain(`requires ${permission}`);
    }
  });

  it('a key scoped to vm globs lists only the VMs it may address', async () => {
    const key = await access.createApiKey({ description: 'web only', permissions: ['vm:list'], resourceGlobs: [{ kind: ResourceKind.VM, glob: 'web-*' }] }, T);
    const anonymous = await clientFor(VmService, daemon, null);
    closers.push(anonymous);
    const listed = await anonymous.listVms({}, { ...T, metadata: { authorization: `Bearer ${key.secret}` } });
    expect(listed.vms.map((v) => v.name)).toEqual(['web-1', 'web-2']);
  });

  it('answers from the stale inventory while libvirtd is unreachable, and changes with UNAVAILABLE', async () => {
    await lv.stop();
    // Reads: the last known VMs, marked stale (UNAVAILABLE only past libvirt.inventory.max_staleness_seconds, see vm-inventory.test.ts).
    await vi.waitFor(async () => expect((await vms.listVms({}, T)).staleSince).toBeDefined(), { timeout: 15_000, interval: 50 });
    expect((await vms.listVms({}, T)).vms.map((v) => v.name)).toEqual(['vm1', 'web-1', 'web-2']);
    expect((await vms.getVm({ vmName: 'vm1' }, T)).staleSince).toBeDefined();
    const err = await rejection(vms.startVm({ vmName: 'vm1' }, T));
    expect(err.code).toBe(Status.UNAVAILABLE);
    expect(err.details).toContain('libvirt is unreachable');
    expect(metricSum(await metricsText(daemon), 'backend_connection_errors_total', { backend_service: 'libvirt' })).toBeGreaterThanOrEqual(1);
  });
});
