// CreateVm with real QEMU under TCG (qemu:///session, an unprivileged libvirtd as in the migration
// tests): the daemon-written domain XML, with its cloud-init seed CD-ROM, is accepted by libvirt
// and QEMU and the VM runs; the balloon change of UpdateVm is reported live; DeleteVm --force
// powers it off and removes it with its seed. Skipped locally with DEBVISOR_SKIP_QEMU=1 or
// DEBVISOR_SKIP_SLOW=1, never in CI.
import { execFile } from 'node:child_process';
import { chmod, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { OperationService, OperationState } from '../../src/gen/debvisor/v1/operation_pb.js';
import { CpuMode, VmService, VmState } from '../../src/gen/debvisor/v1/vm_pb.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { startLibvirt, VIRSH, type TestLibvirt } from '../support/libvirt.js';
import { grpcHealth } from '../support/health.js';
import { finished, MIB, NO_RATE_LIMITS, T, type Client } from '../support/storage.js';

const run = promisify(execFile);
const skipLocally = (process.env.DEBVISOR_SKIP_QEMU === '1' || process.env.DEBVISOR_SKIP_SLOW === '1') && process.env.CI !== 'true';

let libvirt: TestLibvirt;
let daemon: RunningDaemon;
let seedRoot: string;
let vms: Client<typeof VmService>;
let ops: Client<typeof OperationService>;

describe.skipIf(skipLocally)('CreateVm on qemu:///session with real QEMU (TCG)', () => {
  beforeAll(async () => {
    libvirt = await startLibvirt({ driver: 'qemu' });
    // libvirtd and QEMU run as `nobody`: the seed directory must be reachable and the ISO readable.
    seedRoot = await mkdtemp(join(tmpdir(), 'debvisor-qemu-seeds-'));
    await chmod(seedRoot, 0o755);
    daemon = await startDaemon({
      env: {
        DEBVISOR_RPCD_LIBVIRT_URI: libvirt.uri,
        DEBVISOR_RPCD_LIBVIRT_VM_DEFAULTS_DOMAIN_TYPE: 'qemu',
        DEBVISOR_RPCD_LIBVIRT_VM_DEFAULTS_MACHINE_TYPE: 'pc',
        DEBVISOR_RPCD_VMS_CLOUD_INIT_DIR: join(seedRoot, 'seeds'),
        DEBVISOR_RPCD_VMS_CLOUD_INIT_READABLE_BY_ALL: 'true',
      },
      config: NO_RATE_LIMITS,
    });
    await vi.waitFor(async () => expect(await grpcHealth(daemon, VmService.typeName)).toBe('SERVING'), { timeout: 60_000, interval: 100 });
    [vms, ops] = await Promise.all([clientFor(VmService, daemon), clientFor(OperationService, daemon)]);
  });

  afterAll(async () => {
    for (const c of [vms, ops] as ({ close(): void } | undefined)[]) c?.close();
    await (daemon as RunningDaemon | undefined)?.cleanup();
    await (libvirt as TestLibvirt | undefined)?.stop();
    if (seedRoot) await rm(seedRoot, { recursive: true, force: true });
  });

  it('creates and starts a VM with a cloud-init seed; the balloon change is live; delete --force removes it', async () => {
    const { operation } = await vms.createVm(
      {
        spec: {
          name: 'tcg-1',
          vcpus: 1,
          memoryBytes: 128n * MIB,
          // TCG has no host CPU to pass through: a named model.
          cpuMode: CpuMode.CUSTOM,
          cpuModel: 'qemu64',
          cloudInit: { userData: new TextEncoder().encode('#cloud-config\n{}\n') },
          startAfterCreate: true,
        },
      },
      T,
    );
    const done = await finished(ops, operation, 120_000);
    expect(done.state, done.error?.message).toBe(OperationState.SUCCEEDED);
    await vi.waitFor(async () => expect((await vms.getVm({ vmName: 'tcg-1' }, T)).vm?.state).toBe(VmState.RUNNING), { timeout: 60_000, interval: 200 });
    const seed = join(seedRoot, 'seeds', 'tcg-1.iso');
    expect((await stat(seed)).isFile()).toBe(true);
    const { stdout: blk } = await run(VIRSH, ['-q', '-c', libvirt.uri, 'domblklist', '--domain', 'tcg-1'], { env: { LC_ALL: 'C', PATH: '/usr/bin:/bin' } });
    expect(blk).toContain(seed);

    const { etag } = await vms.getVm({ vmName: 'tcg-1' }, T);
    const updated = await vms.updateVm({ vmName: 'tcg-1', memoryBytes: 96n * MIB, etag }, T);
    expect(updated.plan?.changes.map((c) => [c.description, c.live, c.reason])).toEqual([[`memory ${128n * MIB} -> ${96n * MIB} bytes`, true, '']]);

    const deletion = await finished(ops, (await vms.deleteVm({ vmName: 'tcg-1', force: true }, T)).operation, 120_000);
    expect(deletion.state, deletion.error?.message).toBe(OperationState.SUCCEEDED);
    expect(deletion.result.case === 'deletedVm' && deletion.result.value.destroyed).toBe(true);
    expect((await vms.listVms({}, T)).vms).toEqual([]);
    await expect(stat(seed)).rejects.toThrow();
  });
});
