// CreateVm with disks on a REAL Ceph RBD (test/support/ceph.ts: one mon, auth none) and REAL QEMU
// under TCG (qemu:///session, an unprivileged libvirtd): QEMU opens the images itself with librbd
// (qemu-block-extra), finding the cluster through the monitors the daemon writes as <host> into
// each RBD disk source (libvirt.vm_defaults.rbd_monitors; QEMU's environment is cleaned by
// libvirt and it runs as `nobody`, so no ceph.conf reaches it). The VM runs; UpdateVm hotplugs two
// new RBD volumes (virtio and SCSI) into the running VM and reports both live, and QEMU has them;
// the SCSI one is detached live again; the virtio one only requested (a virtio-blk unplug needs the
// guest's consent, and this guest has no OS), which UpdateVm reports as not live; DeleteVm --force
// with delete_volumes removes the VM's images, DeleteVolume the detached ones. Skipped locally with
// DEBVISOR_SKIP_QEMU=1 or DEBVISOR_SKIP_SLOW=1, never in CI.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { OperationService, OperationState } from '../../src/gen/debvisor/v1/operation_pb.js';
import { StorageService } from '../../src/gen/debvisor/v1/storage_pb.js';
import { StorageBackend } from '../../src/gen/debvisor/v1/storage_types_pb.js';
import { CpuMode, DiskBus, VmService, VmState } from '../../src/gen/debvisor/v1/vm_pb.js';
import { parseDomainXml } from '../../src/backends/libvirt/xml.js';
import { RBD, startCeph, type TestCeph } from '../support/ceph.js';
import { clientFor, type RunningDaemon } from '../support/daemon.js';
import { libvirtLog, startLibvirt, VIRSH, type TestLibvirt } from '../support/libvirt.js';
import { startQemuRbdDaemon } from '../support/qemu-rbd.js';
import { finished, MIB, T, type Client } from '../support/storage.js';

const run = promisify(execFile);
const skipLocally = (process.env.DEBVISOR_SKIP_QEMU === '1' || process.env.DEBVISOR_SKIP_SLOW === '1') && process.env.CI !== 'true';
const POOL = `vms-${Math.random().toString(36).slice(2, 8)}`;
const RBD_ = StorageBackend.RBD;
const VM = 'rbd-1';

let ceph: TestCeph;
let libvirt: TestLibvirt;
let daemon: RunningDaemon;
let monitor: string;
let vms: Client<typeof VmService>;
let ops: Client<typeof OperationService>;
let storage: Client<typeof StorageService>;

const env = { LC_ALL: 'C', PATH: '/usr/bin:/bin' };
const virsh = async (...args: string[]) => (await run(VIRSH, ['-q', '-c', libvirt.uri, ...args], { env })).stdout;
const rbdImages = async () => (await run(RBD, ['--conf', ceph.conf, 'ls', POOL], { env })).stdout.split('\n').filter(Boolean).sort();

/** The running VM's disks as libvirt reports them live: target -> source. */
async function liveDisks(): Promise<Record<string, string>> {
  const lines = (await virsh('domblklist', '--domain', VM)).split('\n').map((l) => l.trim().split(/\s+/));
  return Object.fromEntries(lines.filter((cols) => cols.length === 2).map(([target = '', source = '']) => [target, source]));
}

/** The size QEMU reports for a disk of the running VM: read by QEMU through librbd, so QEMU has the image open. */
async function qemuCapacity(target: string): Promise<bigint> {
  const capacity = /^Capacity:\s+(\d+)$/m.exec(await virsh('domblkinfo', '--domain', VM, '--device', target))?.[1];
  if (capacity === undefined) throw new Error(`no capacity for ${target}`);
  return BigInt(capacity);
}

describe.skipIf(skipLocally)('CreateVm with RBD disks on qemu:///session with real QEMU (TCG)', () => {
  beforeAll(async () => {
    [ceph, libvirt] = await Promise.all([startCeph({ pools: [POOL] }), startLibvirt({ driver: 'qemu' })]);
    ({ daemon, monitor } = await startQemuRbdDaemon(libvirt, ceph, POOL));
    [vms, ops, storage] = await Promise.all([clientFor(VmService, daemon), clientFor(OperationService, daemon), clientFor(StorageService, daemon)]);
  });

  afterAll(async () => {
    for (const c of [vms, ops, storage] as ({ close(): void } | undefined)[]) c?.close();
    await (daemon as RunningDaemon | undefined)?.cleanup();
    await Promise.all([(libvirt as TestLibvirt | undefined)?.stop(), (ceph as TestCeph | undefined)?.stop()]);
  });

  it('runs a VM from new RBD volumes, hotplugs and unplugs RBD disks live, and delete --force removes the images', async () => {
    const newRbd = (sizeBytes: bigint, bus: DiskBus) => ({ source: { case: 'newVolume' as const, value: { backend: RBD_, pool: POOL, sizeBytes } }, bus });
    const { operation, plan } = await vms.createVm(
      {
        spec: {
          name: VM,
          vcpus: 1,
          memoryBytes: 128n * MIB,
          // TCG has no host CPU to pass through: a named model.
          cpuMode: CpuMode.CUSTOM,
          cpuModel: 'qemu64',
          // A SCSI disk brings the virtio-scsi controller, whose disks unplug without the guest.
          disks: [{ ...newRbd(64n * MIB, DiskBus.VIRTIO), bootOrder: 1 }, newRbd(32n * MIB, DiskBus.SCSI)],
          startAfterCreate: true,
        },
      },
      T,
    );
    expect(plan?.domainXml).toContain(`<host name="127.0.0.1" port="${monitor.split(':')[1]}"/>`);
    const done = await finished(ops, operation, 120_000);
    expect(done.state, `${done.error?.message}\n${libvirtLog(libvirt)}`).toBe(OperationState.SUCCEEDED);
    await vi.waitFor(async () => expect((await vms.getVm({ vmName: VM }, T)).vm?.state).toBe(VmState.RUNNING), { timeout: 60_000, interval: 200 });
    expect((await virsh('domstate', '--domain', VM)).trim()).toBe('running');
    expect(await rbdImages()).toEqual([`${VM}-disk0`, `${VM}-disk1`]);
    expect(await liveDisks()).toEqual({ vda: `${POOL}/${VM}-disk0`, sda: `${POOL}/${VM}-disk1` });
    expect(await qemuCapacity('vda')).toBe(64n * MIB);
    expect(await qemuCapacity('sda')).toBe(32n * MIB);

    // Hotplug: two new RBD volumes into the running VM, both reported live.
    const { etag } = await vms.getVm({ vmName: VM }, T);
    const attached = await vms.updateVm({ vmName: VM, attachDisks: [newRbd(16n * MIB, DiskBus.VIRTIO), newRbd(24n * MIB, DiskBus.SCSI)], etag }, T);
    expect(attached.plan?.changes.map((c) => [c.description, c.live, c.reason])).toEqual([
      [`attach disk vdb (${POOL}/${VM}-disk2)`, true, ''],
      [`attach disk sdb (${POOL}/${VM}-disk3)`, true, ''],
    ]);
    expect(await rbdImages()).toEqual([0, 1, 2, 3].map((i) => `${VM}-disk${i}`));
    expect(await liveDisks()).toEqual({ vda: `${POOL}/${VM}-disk0`, sda: `${POOL}/${VM}-disk1`, vdb: `${POOL}/${VM}-disk2`, sdb: `${POOL}/${VM}-disk3` });
    expect(await qemuCapacity('vdb')).toBe(16n * MIB);
    expect(await qemuCapacity('sdb')).toBe(24n * MIB);
    // The persistent definition has them too, with the monitors.
    const inactive = await virsh('dumpxml', '--inactive', '--domain', VM);
    expect(parseDomainXml(inactive).disks.map((d) => d.targetDev).sort()).toEqual(['sda', 'sdb', 'vda', 'vdb']);
    expect(inactive.match(/<host name='127\.0\.0\.1' port='\d+'\/>/g)).toHaveLength(4);

    // Live unplug of the SCSI disk: QEMU lets go of it at once.
    const detached = await vms.updateVm({ vmName: VM, detachDisks: ['sdb'], etag: attached.etag }, T);
    expect(detached.plan?.changes.map((c) => [c.description, c.live, c.reason])).toEqual([['detach disk sdb', true, '']]);
    expect(Object.keys(await liveDisks()).sort()).toEqual(['sda', 'vda', 'vdb']);
    expect((await virsh('domstate', '--domain', VM)).trim()).toBe('running');

    // A virtio-blk unplug is a request to the guest (ACPI), and this one has no OS to grant it: virsh
    // succeeds after 5 s all the same, but QEMU keeps the disk, so it is not reported live.
    const requested = await vms.updateVm({ vmName: VM, detachDisks: ['vdb'], etag: detached.etag }, T);
    expect(requested.plan?.changes.map((c) => [c.description, c.live, c.reason])).toEqual([
      ['detach disk vdb', false, 'requested: the guest has not released it yet (gone when it does, at the next boot at the latest)'],
    ]);
    expect(Object.keys(await liveDisks()).sort()).toEqual(['sda', 'vda', 'vdb']);
    expect(parseDomainXml(await virsh('dumpxml', '--inactive', '--domain', VM)).disks.map((d) => d.targetDev).sort()).toEqual(['sda', 'vda']);

    const deletion = await finished(ops, (await vms.deleteVm({ vmName: VM, force: true, deleteVolumes: true }, T)).operation, 120_000);
    expect(deletion.state, deletion.error?.message).toBe(OperationState.SUCCEEDED);
    expect(deletion.result.case === 'deletedVm' && deletion.result.value.destroyed).toBe(true);
    expect((await vms.listVms({}, T)).vms).toEqual([]);
    // Detached volumes are no longer the VM's: they stay, and go with DeleteVolume (QEMU has let go of them).
    expect(await rbdImages()).toEqual([`${VM}-disk2`, `${VM}-disk3`]);
    for (const name of [`${VM}-disk2`, `${VM}-disk3`]) await storage.deleteVolume({ volume: { backend: RBD_, pool: POOL, name } }, T);
    expect(await rbdImages()).toEqual([]);
  });
});
