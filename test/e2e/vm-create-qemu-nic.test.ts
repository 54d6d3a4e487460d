// CreateVm with a disk on a REAL Ceph RBD and a NIC on a REAL host bridge, run by REAL QEMU under
// TCG (qemu:///session, an unprivileged libvirtd as `nobody`): the daemon sees the bridge in
// NodeService.ListNetworks, the VM runs, QEMU has the RBD image open (as vm-create-qemu-rbd.test.ts,
// which covers disk hotplug) and has the NIC: libvirt reports it with the daemon's MAC on a tap
// device, and the kernel has that tap as a port of the bridge. UpdateVm adds a second NIC to the
// running VM, reported live, with its own tap on the bridge; DeleteVm --force with delete_volumes
// takes the VM, its image and its taps away.
// The session libvirtd connects bridge NICs through qemu-bridge-helper: test/support/bridge.ts makes
// the bridge (unique name) and a private copy of the helper with file capabilities, and points the
// session's qemu.conf `bridge_helper` at it. The helper only joins bridges its ACL allows, and reads the
// ACL from /etc/qemu/bridge.conf, a path compiled into it (no option or variable for another): so that
// file is written ("allow <bridge>") only when it does not exist, and removed after with /etc/qemu if
// that was made too. All this needs root: skipped locally without it, failing in CI.
// Skipped locally with DEBVISOR_SKIP_QEMU=1 or DEBVISOR_SKIP_SLOW=1, never in CI.
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { NetworkKind, NodeService } from '../../src/gen/debvisor/v1/node_pb.js';
import { OperationService, OperationState } from '../../src/gen/debvisor/v1/operation_pb.js';
import { CpuMode, DiskBus, NicModel, VmService, VmState } from '../../src/gen/debvisor/v1/vm_pb.js';
import { StorageBackend } from '../../src/gen/debvisor/v1/storage_types_pb.js';
import { bridgeSupported, startBridge, type TestBridge } from '../support/bridge.js';
import { RBD, startCeph, type TestCeph } from '../support/ceph.js';
import { clientFor, type RunningDaemon } from '../support/daemon.js';
import { libvirtLog, startLibvirt, VIRSH, type TestLibvirt } from '../support/libvirt.js';
import { startQemuRbdDaemon } from '../support/qemu-rbd.js';
import { finished, MIB, T, type Client } from '../support/storage.js';

const run = promisify(execFile);
const CI = process.env.CI === 'true';
const skipLocally = (process.env.DEBVISOR_SKIP_QEMU === '1' || process.env.DEBVISOR_SKIP_SLOW === '1' || bridgeSupported() !== undefined) && !CI;
const VM = 'nic-1';
const POOL = `vms-${Math.random().toString(36).slice(2, 8)}`;
const SECOND_MAC = '52:54:00:d3:b1:02';

let ceph: TestCeph;
let bridge: TestBridge;
let libvirt: TestLibvirt;
let daemon: RunningDaemon;
let vms: Client<typeof VmService>;
let ops: Client<typeof OperationService>;
let nodes: Client<typeof NodeService>;

const env = { LC_ALL: 'C', PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };
const virsh = async (...args: string[]) => (await run(VIRSH, ['-q', '-c', libvirt.uri, ...args], { env })).stdout;

interface LiveNic {
  readonly device: string;
  readonly type: string;
  readonly source: string;
  readonly model: string;
  readonly mac: string;
}

/** The running VM's NICs as libvirt reports them from QEMU: `virsh domiflist`. */
async function liveNics(): Promise<LiveNic[]> {
  return (await virsh('domiflist', '--domain', VM))
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((cols) => cols.length === 5)
    .map(([device = '', type = '', source = '', model = '', mac = '']) => ({ device, type, source, model, mac }));
}

/** The end of the session's QEMU log of the VM (for failure messages). */
function qemuLog(): string {
  const file = join(libvirt.dir, 'cache', 'libvirt', 'qemu', 'log', `${VM}.log`);
  return existsSync(file) ? readFileSync(file, 'utf8').slice(-4096) : '';
}

/** The kernel's ports of the test bridge (interface names). */
async function bridgePorts(): Promise<string[]> {
  const links = JSON.parse((await run('/usr/sbin/ip', ['-j', 'link', 'show', 'master', bridge.name], { env })).stdout || '[]') as { ifname: string }[];
  return links.map((l) => l.ifname).sort();
}

/** A tap device: /sys/class/net/<dev>/tun_flags exists only for tun/tap devices. */
function isTap(device: string): boolean {
  return existsSync(`/sys/class/net/${device}/tun_flags`);
}

describe.skipIf(skipLocally)('CreateVm with an RBD disk and a NIC on a host bridge on qemu:///session with real QEMU (TCG)', () => {
  beforeAll(async () => {
    const unsupported = bridgeSupported();
    if (unsupported !== undefined) throw new Error(`this suite ${unsupported}`);
    // Both settled before anything throws, so afterAll stops whichever started.
    const [cephStarted, bridgeMade] = await Promise.allSettled([startCeph({ pools: [POOL] }), startBridge()]);
    if (cephStarted.status === 'fulfilled') ceph = cephStarted.value;
    if (bridgeMade.status === 'fulfilled') bridge = bridgeMade.value;
    for (const result of [cephStarted, bridgeMade]) if (result.status === 'rejected') throw result.reason;
    libvirt = await startLibvirt({ driver: 'qemu', qemuConf: bridge.qemuConf });
    // QEMU finds the cluster through the monitors the daemon writes into the disk (see vm-create-qemu-rbd.test.ts).
    ({ daemon } = await startQemuRbdDaemon(libvirt, ceph, POOL));
    [vms, ops, nodes] = await Promise.all([clientFor(VmService, daemon), clientFor(OperationService, daemon), clientFor(NodeService, daemon)]);
  });

  afterAll(async () => {
    for (const c of [vms, ops, nodes] as ({ close(): void } | undefined)[]) c?.close();
    await (daemon as RunningDaemon | undefined)?.cleanup();
    await (libvirt as TestLibvirt | undefined)?.stop();
    await Promise.all([(bridge as TestBridge | undefined)?.stop(), (ceph as TestCeph | undefined)?.stop()]);
  });

  it('runs a VM with an RBD disk and a NIC on the bridge, hotplugs a second NIC live, and delete --force takes them away', async () => {
    const listed = (await nodes.listNetworks({ kind: NetworkKind.BRIDGE }, T)).networks.find((n) => n.name === bridge.name);
    expect(listed).toMatchObject({ name: bridge.name, kind: NetworkKind.BRIDGE, bridge: bridge.name, active: true });

    const { operation, plan } = await vms.createVm(
      {
        spec: {
          name: VM,
          vcpus: 1,
          memoryBytes: 128n * MIB,
          // TCG has no host CPU to pass through: a named model.
          cpuMode: CpuMode.CUSTOM,
          cpuModel: 'qemu64',
          disks: [{ source: { case: 'newVolume', value: { backend: StorageBackend.RBD, pool: POOL, sizeBytes: 32n * MIB } }, bus: DiskBus.VIRTIO, bootOrder: 1 }],
          // No MAC: the daemon picks one.
          interfaces: [{ bridge: bridge.name, model: NicModel.VIRTIO }],
          startAfterCreate: true,
        },
      },
      T,
    );
    const mac = /<mac address="([0-9a-f:]{17})"\/>/.exec(plan?.domainXml ?? '')?.[1];
    expect(mac, plan?.domainXml).toBeDefined();
    expect(plan?.domainXml).toContain(`<source bridge="${bridge.name}"/>`);
    const done = await finished(ops, operation, 120_000);
    expect(done.state, `${done.error?.message}\n${libvirtLog(libvirt)}\n${qemuLog()}`).toBe(OperationState.SUCCEEDED);
    await vi.waitFor(async () => expect((await vms.getVm({ vmName: VM }, T)).vm?.state).toBe(VmState.RUNNING), { timeout: 60_000, interval: 200 });
    expect((await virsh('domstate', '--domain', VM)).trim()).toBe('running');
    // QEMU has the image open through librbd: it reads its size.
    expect((await virsh('domblklist', '--domain', VM)).trim().split(/\s+/)).toEqual(['vda', `${POOL}/${VM}-disk0`]);
    expect(/^Capacity:\s+(\d+)$/m.exec(await virsh('domblkinfo', '--domain', VM, '--device', 'vda'))?.[1]).toBe(String(32n * MIB));
    const vm = (await vms.getVm({ vmName: VM }, T)).vm;
    expect(vm?.interfaces.map((n) => [n.type, n.source, n.mac, n.model])).toEqual([['bridge', bridge.name, mac, 'virtio']]);

    // QEMU has it: libvirt names the tap the helper made for it, and the kernel has the tap on the bridge.
    const [first] = await liveNics();
    expect(first).toMatchObject({ type: 'bridge', source: bridge.name, model: 'virtio', mac });
    expect(first?.device).toMatch(/^[A-Za-z0-9._-]{1,15}$/);
    const firstTap = first?.device ?? '';
    expect(isTap(firstTap)).toBe(true);
    expect(await bridgePorts()).toEqual([firstTap]);

    // Hotplug a second NIC on the same bridge: reported live, and QEMU has it on a tap of its own.
    const { etag } = await vms.getVm({ vmName: VM }, T);
    const added = await vms.updateVm({ vmName: VM, addInterfaces: [{ bridge: bridge.name, mac: SECOND_MAC, model: NicModel.E1000 }], etag }, T);
    expect(added.plan?.changes.map((c) => [c.description, c.live, c.reason]), `${libvirtLog(libvirt)}\n${qemuLog()}`).toEqual([[`add interface ${SECOND_MAC} on bridge ${bridge.name}`, true, '']]);
    const nics = await liveNics();
    expect(nics.map((n) => [n.type, n.source, n.model, n.mac])).toEqual([
      ['bridge', bridge.name, 'virtio', mac],
      ['bridge', bridge.name, 'e1000', SECOND_MAC],
    ]);
    const secondTap = nics[1]?.device ?? '';
    expect(secondTap).not.toBe(firstTap);
    expect(isTap(secondTap)).toBe(true);
    expect(await bridgePorts()).toEqual([firstTap, secondTap].sort());
    // QEMU's own view: two NICs with these MACs, each with a tap backend.
    const qemuNetwork = await virsh('qemu-monitor-command', '--domain', VM, '--hmp', 'info network');
    for (const address of [mac, SECOND_MAC]) expect(qemuNetwork, qemuNetwork).toMatch(new RegExp(`type=nic,model=[\\w-]+,macaddr=${address}\\s*\\n\\s*\\\\ [\\w-]+: index=\\d+,type=tap,`));
    // The persistent definition has it too.
    expect(await virsh('dumpxml', '--inactive', '--domain', VM)).toContain(`<mac address='${SECOND_MAC}'/>`);

    const deletion = await finished(ops, (await vms.deleteVm({ vmName: VM, force: true, deleteVolumes: true }, T)).operation, 120_000);
    expect(deletion.state, deletion.error?.message).toBe(OperationState.SUCCEEDED);
    expect(deletion.result.case === 'deletedVm' && deletion.result.value.destroyed).toBe(true);
    expect((await vms.listVms({}, T)).vms).toEqual([]);
    expect((await run(RBD, ['--conf', ceph.conf, 'ls', POOL], { env })).stdout.trim()).toBe('');
    // QEMU is gone, and with it its taps (they are not persistent: they go when their fd closes).
    await vi.waitFor(async () => expect(await bridgePorts()).toEqual([]), { timeout: 30_000, interval: 200 });
    for (const tap of [firstTap, secondTap]) expect(isTap(tap)).toBe(false);
  });
});
