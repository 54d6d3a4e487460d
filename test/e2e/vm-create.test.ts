// CreateVm, DeleteVm (and UpdateVm's etag) end to end: the REAL daemon against a REAL libvirtd
// (test driver, domain type "test") and a REAL LVM VG on a loop device: the plan, its XML equal to
// what is defined, ownership, quotas (vms, vcpus, memory_gb, storage_gb) taken and given back,
// undo after a failure once volumes exist, scoped keys, bad input by field path.
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { anyUnpack } from '@bufbuild/protobuf/wkt';
import { fromBinary, type MessageInitShape } from '@bufbuild/protobuf';
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { OperationService, OperationState } from '../../src/gen/debvisor/v1/operation_pb.js';
import { QuotaResource, ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { StorageService } from '../../src/gen/debvisor/v1/storage_pb.js';
import { StorageBackend } from '../../src/gen/debvisor/v1/storage_types_pb.js';
import { VmService, VmState, type VmSpec, type VmSpecSchema } from '../../src/gen/debvisor/v1/vm_pb.js';
import { QuotaFailureSchema } from '../../src/gen/google/rpc/error_details_pb.js';
import { StatusSchema } from '../../src/gen/google/rpc/status_pb.js';
import { parseDomainXml } from '../../src/backends/libvirt/xml.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { startLibvirt, VIRSH, type TestLibvirt } from '../support/libvirt.js';
import { lvmEnv, startLvm, type TestLvm } from '../support/lvm.js';
import { grpcHealth } from '../support/health.js';
import { issueClientFor, rejection } from '../support/security.js';
import { ctlOn } from '../support/ctl.js';
import { finished, MIB, NO_RATE_LIMITS, T, used, type Client } from '../support/storage.js';

const run = promisify(execFile);
const ADMIN = 'spiffe://debvisor/admin/admin';
const LVM = StorageBackend.LVM;
const suffix = Math.random().toString(36).slice(2, 8);

let lvm: TestLvm;
let libvirt: TestLibvirt;
let daemon: RunningDaemon;
let vms: Client<typeof VmService>;
let access: Client<typeof AccessService>;
let ops: Client<typeof OperationService>;
let storage: Client<typeof StorageService>;
let seedDir: string;
const SSH_KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINrtnJzjguuDxynxs1GYnw2hrHlfdvepPaf4s9VTaNy5 alice@host';

const virsh = async (...args: string[]) => (await run(VIRSH, ['-q', '-c', libvirt.uri, ...args], { env: { LC_ALL: 'C', PATH: '/usr/bin:/bin' } })).stdout;

async function lvNames(): Promise<string[]> {
  const { stdout } = await run('/sbin/lvm', ['lvs', '--reportformat', 'json', '-o', 'lv_name', lvm.vg], { env: lvmEnv(lvm) });
  return ((JSON.parse(stdout) as { report: { lv: { lv_name: string }[] }[] }).report[0]?.lv ?? []).map((lv) => lv.lv_name).sort();
}

async function domains(): Promise<string[]> {
  return (await virsh('list', '--all', '--name')).split('\n').map((l) => l.trim()).filter(Boolean).sort();
}

const q = (resource: QuotaResource) => used(access, resource);
async function usage(): Promise<{ vms: bigint; vcpus: bigint; memory_gb: bigint; storage_gb: bigint }> {
  return { vms: await q(QuotaResource.VMS), vcpus: await q(QuotaResource.VCPUS), memory_gb: await q(QuotaResource.MEMORY_GB), storage_gb: await q(QuotaResource.STORAGE_GB) };
}

type SpecInit = Exclude<MessageInitShape<typeof VmSpecSchema>, VmSpec>;

function spec(name: string, over: Partial<SpecInit> = {}): SpecInit {
  return {
    name,
    vcpus: 2,
    memoryBytes: 512n * MIB,
    description: 'made by <test> & "co"',
    tags: { team: 'ci' },
    disks: [{ source: { case: 'newVolume', value: { backend: LVM, pool: lvm.vg, sizeBytes: 20n * MIB } }, bootOrder: 1 }],
    interfaces: [{ network: 'default' }],
    ...over,
  };
}

beforeAll(async () => {
  [lvm, libvirt] = await Promise.all([startLvm({ vg: `ci-vg${suffix}`, sizeMiB: 512 }), startLibvirt()]);
  // A second network for the scoped key.
  const dir = await mkdtemp(join(tmpdir(), 'debvisor-net-'));
  await writeFile(join(dir, 'net.xml'), '<network><name>ci-net</name><bridge name="virbr9"/></network>');
  await virsh('net-define', '--file', join(dir, 'net.xml'));
  await rm(dir, { recursive: true, force: true });
  seedDir = await mkdtemp(join(tmpdir(), 'debvisor-seeds-'));
  daemon = await startDaemon({
    env: {
      DEBVISOR_RPCD_LVM_VGS: lvm.vg,
      DEBVISOR_RPCD_LVM_SYSTEM_DIR: lvm.systemDir,
      DEBVISOR_RPCD_LIBVIRT_URI: libvirt.uri,
      DEBVISOR_RPCD_LIBVIRT_VM_DEFAULTS_DOMAIN_TYPE: 'test',
      DEBVISOR_RPCD_VMS_CLOUD_INIT_DIR: seedDir,
    },
    config: { ...NO_RATE_LIMITS, auth: { impersonation: { enabled: true } } },
  });
  await vi.waitFor(async () => expect(await grpcHealth(daemon, VmService.typeName)).toBe('SERVING'), { timeout: 60_000, interval: 50 });
  [vms, access, ops, storage] = await Promise.all([clientFor(VmService, daemon), clientFor(AccessService, daemon), clientFor(OperationService, daemon), clientFor(StorageService, daemon)]);
});

afterAll(async () => {
  for (const c of [vms, access, ops, storage] as ({ close(): void } | undefined)[]) c?.close();
  await (daemon as RunningDaemon | undefined)?.cleanup();
  await Promise.all([(lvm as TestLvm | undefined)?.stop(), (libvirt as TestLibvirt | undefined)?.stop()]);
  if (seedDir) await rm(seedDir, { recursive: true, force: true });
});

describe('CreateVm', () => {
  it('validate_only returns the plan and changes nothing', async () => {
    const before = await usage();
    const { plan, operation } = await vms.createVm({ spec: spec('plan-1'), validateOnly: true }, T);
    expect(operation).toBeUndefined();
    expect(plan?.allowed).toBe(true);
    expect(plan?.volumes.map((v) => [v.volume?.name, v.sizeBytes, v.source, v.targetDev])).toEqual([['plan-1-disk0', 20n * MIB, 'empty', 'vda']]);
    expect(plan?.quotas.map((v) => [v.dimension, v.needed])).toEqual([['vms', 1n], ['vcpus', 2n], ['memory_gb', 1n], ['storage_gb', 1n]]);
    expect(plan?.permissions.map((p) => [p.permission, p.resource, p.allowed])).toEqual([
      ['storage:volume:create', lvm.vg, true],
      ['network:use', 'default', true],
    ]);
    const xml = parseDomainXml(plan?.domainXml ?? '');
    expect(xml).toMatchObject({ name: 'plan-1', vcpus: 2, memoryBytes: 512 * 1024 * 1024, description: 'made by <test> & "co"', metadata: { owner: ADMIN, tags: { team: 'ci' }, createdVolumes: [{ backend: 'lvm', pool: lvm.vg, name: 'plan-1-disk0' }] } });
    // Caller text is escaped, never markup.
    expect(plan?.domainXml).toContain('made by &lt;test&gt; &amp; &quot;co&quot;');
    expect(xml.interfaces[0]?.mac).toMatch(/^52:54:00(:[0-9a-f]{2}){3}$/);
    expect(await domains()).toEqual([]);
    expect(await lvNames()).toEqual([]);
    expect(await usage()).toEqual(before);
  });

  it('creates the VM: volumes, definition equal to the plan, owner, quotas; DeleteVm gives everything back', async () => {
    const before = await usage();
    const { volume } = await storage.createVolume({ volume: { backend: LVM, pool: lvm.vg, name: 'data-keep' }, sizeBytes: 8n * MIB }, T);
    expect(volume).toBeDefined();
    const withData = spec('web-1', {
      disks: [...(spec('web-1').disks ?? []), { source: { case: 'volume', value: { backend: LVM, pool: lvm.vg, name: 'data-keep' } } }],
      interfaces: [{ network: 'default', mac: '52:54:00:aa:bb:cc', vlan: 42 }],
    });
    const { plan, operation } = await vms.createVm({ spec: withData, requestId: `create-web-1-${suffix}` }, T);
    const done = await finished(ops, operation);
    expect(done.state, done.error?.message).toBe(OperationState.SUCCEEDED);
    expect(done.result.case).toBe('createdVm');
    expect(done.result.value).toMatchObject({ vmName: 'web-1', domainXml: plan?.domainXml });
    // A retry with the same request_id is the same call: the same operation, nothing made twice.
    const again = await vms.createVm({ spec: withData, requestId: `create-web-1-${suffix}` }, T);
    expect(again.operation?.id).toBe(operation?.id);

    // What libvirt defined is the plan's XML.
    const defined = parseDomainXml(await virsh('dumpxml', '--inactive', 'web-1'));
    const planned = parseDomainXml(plan?.domainXml ?? '');
    for (const field of ['name', 'vcpus', 'memoryBytes', 'maxMemoryBytes', 'disks', 'interfaces', 'description', 'metadata'] as const) expect(defined[field]).toEqual(planned[field]);
    expect(defined.disks.map((d) => [d.targetDev, d.sourcePath])).toEqual([
      ['vda', `/dev/${lvm.vg}/web-1-disk0`],
      ['vdb', `/dev/${lvm.vg}/data-keep`],
    ]);

    const { vm, etag } = await vms.getVm({ vmName: 'web-1' }, T);
    expect(vm).toMatchObject({ name: 'web-1', owner: ADMIN, vcpus: 2, memoryBytes: 512n * MIB, state: VmState.SHUT_OFF });
    expect(etag).toMatch(/^[0-9a-f]{32}$/);
    expect((await vms.listVms({ owner: ADMIN }, T)).vms.map((v) => v.name)).toEqual(['web-1']);
    expect((await vms.listVms({ owner: 'someone-else' }, T)).vms).toEqual([]);
    expect(await lvNames()).toEqual(['data-keep', 'web-1-disk0']);
    const after = await usage();
    expect(after).toEqual({ vms: before.vms + 1n, vcpus: before.vcpus + 2n, memory_gb: before.memory_gb + 1n, storage_gb: before.storage_gb + 2n });

    // RecomputeQuota counts the VM from the inventory.
    const recount = await access.recomputeQuota({ principal: ADMIN }, T);
    expect(recount.after.find((x) => x.resource === QuotaResource.VMS)?.used).toBe(after.vms);
    expect(recount.after.find((x) => x.resource === QuotaResource.VCPUS)?.used).toBe(after.vcpus);

    // Running: refused without force; with force destroyed first. Only the volume made for it goes.
    await vms.startVm({ vmName: 'web-1' }, T);
    expect((await rejection(vms.deleteVm({ vmName: 'web-1', deleteVolumes: true }, T))).code).toBe(Status.FAILED_PRECONDITION);
    const deletion = await finished(ops, (await vms.deleteVm({ vmName: 'web-1', deleteVolumes: true, force: true }, T)).operation);
    expect(deletion.state, deletion.error?.message).toBe(OperationState.SUCCEEDED);
    expect(deletion.result.case === 'deletedVm' && deletion.result.value).toMatchObject({ vmName: 'web-1', destroyed: true, deletedVolumes: [{ pool: lvm.vg, name: 'web-1-disk0' }], keptDisks: [`/dev/${lvm.vg}/data-keep`] });
    expect(await domains()).toEqual([]);
    expect(await lvNames()).toEqual(['data-keep']);
    expect(await usage()).toEqual({ ...before, storage_gb: before.storage_gb + 1n });
    await storage.deleteVolume({ volume: { backend: LVM, pool: lvm.vg, name: 'data-keep' } }, T);
    expect(await usage()).toEqual(before);
  });

  it('builds the cloud-init seed, attaches it read-only, and removes it with the VM', async () => {
    const userData = '#cloud-config\npackages: [htop]\n';
    const { plan, operation } = await vms.createVm({ spec: spec('seed_1', { disks: [], cloudInit: { userData: new TextEncoder().encode(userData), sshAuthorizedKeys: [SSH_KEY] } }) }, T);
    const done = await finished(ops, operation);
    expect(done.state, done.error?.message).toBe(OperationState.SUCCEEDED);
    const iso = join(seedDir, 'seed_1.iso');
    const cdrom = parseDomainXml(await virsh('dumpxml', '--inactive', 'seed_1')).disks.find((d) => d.device === 'cdrom');
    expect(cdrom).toMatchObject({ sourcePath: iso, targetDev: 'sda' });
    expect(plan?.domainXml).toContain('<readonly/>');
    const uuid = parseDomainXml(await virsh('dumpxml', '--inactive', 'seed_1')).uuid;
    const isoinfo = async (...args: string[]) => (await run('/usr/bin/isoinfo', [...args, '-i', iso], { encoding: 'utf8' })).stdout;
    expect((await isoinfo('-R', '-f')).split('\n').filter(Boolean).sort()).toEqual(['/meta-data', '/user-data']);
    expect(await isoinfo('-R', '-x', '/user-data')).toBe(userData);
    const metaData = await isoinfo('-R', '-x', '/meta-data');
    expect(metaData).toContain(`instance-id: ${uuid}`);
    expect(metaData).toContain('local-hostname: seed-1');
    expect(metaData).toContain(SSH_KEY);
    expect((await finished(ops, (await vms.deleteVm({ vmName: 'seed_1' }, T)).operation)).state).toBe(OperationState.SUCCEEDED);
    await expect(run('/usr/bin/test', ['-e', iso])).rejects.toThrow();
    // A bad document is refused by field, before anything is made.
    const bad = await rejection(vms.createVm({ spec: spec('seed-2', { disks: [], cloudInit: { userData: new TextEncoder().encode('packages: [htop]') } }) }, T));
    expect(bad.details).toMatch(/^spec\.cloud_init\.user_data: must start with/);
  });

  it('undoes volumes and quotas when a step fails after volumes exist', async () => {
    const before = await usage();
    // The second volume does not fit the 512 MiB VG: lvcreate fails once the first exists.
    const failing = spec('fail-1', {
      disks: [
        { source: { case: 'newVolume', value: { backend: LVM, pool: lvm.vg, sizeBytes: 40n * MIB } } },
        { source: { case: 'newVolume', value: { backend: LVM, pool: lvm.vg, sizeBytes: 4096n * MIB } } },
      ],
    });
    const { operation } = await vms.createVm({ spec: failing }, T);
    const done = await finished(ops, operation);
    expect(done.state).toBe(OperationState.FAILED);
    expect(await lvNames()).toEqual([]);
    expect(await domains()).toEqual([]);
    expect(await usage()).toEqual(before);
  });

  it('CancelOperation undoes a create held in lvcreate: nothing left, quotas back', async () => {
    const before = await usage();
    // A shared hold on the VG's LVM lock (scripts/lvm-test-start's locking_dir): lvs (the plan) still
    // reads, lvcreate (the operation) waits for it. The latch that keeps the operation mid-flight.
    const lockFile = join(dirname(lvm.systemDir), 'lock', `V_${lvm.vg}`);
    const holder = spawn('/usr/bin/flock', ['--shared', '--no-fork', lockFile, '/bin/sh', '-c', 'echo held; exec sleep 600'], { stdio: ['ignore', 'pipe', 'ignore'] });
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout.once('data', () => resolve());
        holder.once('exit', (code) => reject(new Error(`flock exited ${code}`)));
      });
      const { operation } = await vms.createVm({ spec: spec('cancel-1') }, T);
      const id = operation?.id ?? '';
      await vi.waitFor(async () => expect((await ops.getOperation({ operationId: id }, T)).operation?.stage).toMatch(/^creating volume/), { timeout: 30_000, interval: 100 });
      await ops.cancelOperation({ operationId: id }, T);
      const done = await finished(ops, operation);
      expect(done.state).toBe(OperationState.CANCELLED);
    } finally {
      // --no-fork: the holder is the process holding the lock; it is released once it has exited.
      if (holder.exitCode === null && holder.signalCode === null) {
        const exited = new Promise((resolve) => holder.once('exit', resolve));
        holder.kill('SIGKILL');
        await exited;
      }
    }
    expect(await lvNames()).toEqual([]);
    expect(await domains()).toEqual([]);
    expect(await usage()).toEqual(before);
  });

  it('refuses a third VM when the vms quota is 2, with QuotaFailure', async () => {
    const base = await q(QuotaResource.VMS);
    await access.setQuota({ principal: ADMIN, resource: QuotaResource.VMS, limit: base + 2n }, T);
    try {
      const bare = (name: string) => spec(name, { disks: [], interfaces: [] });
      for (const name of ['q-1', 'q-2']) expect((await finished(ops, (await vms.createVm({ spec: bare(name) }, T)).operation)).state).toBe(OperationState.SUCCEEDED);
      const refused = await rejection(vms.createVm({ spec: bare('q-3') }, T));
      expect(refused.code).toBe(Status.RESOURCE_EXHAUSTED);
      const details = refused.metadata.get('grpc-status-details-bin')[0] as Buffer;
      const failure = anyUnpack(fromBinary(StatusSchema, details).details[0]!, QuotaFailureSchema);
      expect(failure?.violations[0]?.subject).toBe(`principal:${ADMIN}/vms`);
      // The plan shows the same verdict without asking for it.
      const { plan } = await vms.createVm({ spec: bare('q-3'), validateOnly: true }, T);
      expect(plan?.allowed).toBe(false);
      expect(plan?.quotas.find((v) => v.dimension === 'vms')).toMatchObject({ used: base + 2n, needed: 1n, limit: base + 2n, allowed: false });
    } finally {
      for (const name of ['q-1', 'q-2']) await finished(ops, (await vms.deleteVm({ vmName: name }, T)).operation);
      await access.setQuota({ principal: ADMIN, resource: QuotaResource.VMS, limit: 100n }, T);
    }
    expect(await q(QuotaResource.VMS)).toBe(base);
  });

  it('answers bad input with INVALID_ARGUMENT naming the field, and missing things with NOT_FOUND', async () => {
    const bad = async (s: SpecInit) => {
      const err = await rejection(vms.createVm({ spec: s, validateOnly: true }, T));
      return `${Status[err.code]} ${err.details}`;
    };
    const disk = (sizeBytes: bigint) => ({ source: { case: 'newVolume' as const, value: { backend: LVM, pool: lvm.vg, sizeBytes } } });
    expect(await bad(spec('b-1', { vcpus: 0 }))).toMatch(/^INVALID_ARGUMENT spec\.vcpus:/);
    expect(await bad(spec('b-1', { vcpus: 100_000 }))).toMatch(/^INVALID_ARGUMENT spec\.vcpus: at most/);
    expect(await bad(spec('b-1', { memoryBytes: 32n * MIB }))).toMatch(/^INVALID_ARGUMENT spec\.memory_bytes:/);
    expect(await bad(spec('b-1', { memoryBytes: 512n * MIB + 1n }))).toMatch(/^INVALID_ARGUMENT spec\.memory_bytes: must be a multiple of 1 MiB/);
    expect(await bad(spec('b-1', { disks: [disk(MIB), disk(MIB), disk(0n)] }))).toMatch(/^INVALID_ARGUMENT spec\.disks\[2\]\.new_volume\.size_bytes:/);
    expect(await bad(spec('b-1', { disks: Array.from({ length: 17 }, () => disk(MIB)) }))).toMatch(/^INVALID_ARGUMENT spec\.disks: at most 16/);
    expect(await bad(spec('b-1', { interfaces: Array.from({ length: 17 }, () => ({ network: 'default' })) }))).toMatch(/^INVALID_ARGUMENT spec\.interfaces: at most 16/);
    expect(await bad(spec('b-1', { interfaces: [{ network: 'default', mac: '01:00:5e:00:00:01' }] }))).toMatch(/^INVALID_ARGUMENT spec\.interfaces\[0\]\.mac: must be a unicast/);
    expect(await bad(spec('b-1', { interfaces: [{ network: 'default', mac: '52:54:00:zz:00:01' }] }))).toMatch(/^INVALID_ARGUMENT spec\.interfaces\[0\]\.mac:/);
    expect(await bad(spec('b-1', { interfaces: [{ network: 'default', vlan: 4095 }] }))).toMatch(/^INVALID_ARGUMENT spec\.interfaces\[0\]\.vlan:/);
    expect(await bad(spec('b-1', { cloudInit: { userData: new Uint8Array(64 * 1024 + 1) } }))).toMatch(/^INVALID_ARGUMENT spec\.cloud_init\.user_data: must be at most 65536 bytes/);
    expect(await bad(spec('b-1', { cloudInit: { sshAuthorizedKeys: ['ssh-ed25519 AAAAC3NzaC1yc2EAAAA= x'] } }))).toMatch(/^INVALID_ARGUMENT spec\.cloud_init\.ssh_authorized_keys\[0\]:/);
    expect(await bad(spec('b-1', { interfaces: [{ network: '<x/>' }] }))).toMatch(/^INVALID_ARGUMENT spec\.interfaces\[0\]\.network:/);
    expect(await bad(spec('bad name!'))).toMatch(/^INVALID_ARGUMENT spec\.name:/);
    expect(await bad(spec('b-1', { interfaces: [{ network: 'nope' }] }))).toMatch(/^NOT_FOUND spec\.interfaces\[0\]\.network: network "nope" not found/);
    expect(await bad(spec('b-1', { disks: [{ source: { case: 'newVolume', value: { backend: LVM, pool: 'nopevg', sizeBytes: MIB } } }] }))).toMatch(/^NOT_FOUND spec\.disks\[0\]\.new_volume\.pool: volume group "nopevg" not found/);
    expect(await bad(spec('b-1', { disks: [{ source: { case: 'volume', value: { backend: LVM, pool: lvm.vg, name: 'nope' } } }] }))).toMatch(/^NOT_FOUND /);
    const made = await finished(ops, (await vms.createVm({ spec: spec('dup-1', { disks: [] }) }, T)).operation);
    expect(made.state).toBe(OperationState.SUCCEEDED);
    expect(await bad(spec('dup-1'))).toMatch(/^ALREADY_EXISTS spec\.name:/);
    await finished(ops, (await vms.deleteVm({ vmName: 'dup-1' }, T)).operation);
    expect((await rejection(vms.deleteVm({ vmName: 'nope-vm' }, T))).code).toBe(Status.NOT_FOUND);
  });

  it('records the user a panel acts for as the owner, and charges the quotas to that user', async () => {
    const PANEL = 'spiffe://debvisor/panel/web';
    await access.putRole({ role: { name: 'impersonator', description: 'acts for users', permissions: ['access:impersonate'], denyPermissions: [] } }, T);
    for (const [principal, roleName] of [[PANEL, 'operator'], [PANEL, 'impersonator'], ['user:alice', 'operator']] as const) await access.bindRole({ principal, roleName }, T);
    const panel = await clientFor(VmService, daemon, await issueClientFor(daemon.pki, PANEL));
    try {
      const asAlice = { ...T, metadata: { 'impersonate-user': 'alice' } };
      const done = await finished(ops, (await panel.createVm({ spec: spec('alice-1') }, asAlice)).operation);
      expect(done.state, done.error?.message).toBe(OperationState.SUCCEEDED);
      expect((await vms.getVm({ vmName: 'alice-1' }, T)).vm?.owner).toBe('user:alice');
      expect((await vms.listVms({ owner: 'user:alice' }, T)).vms.map((v) => v.name)).toEqual(['alice-1']);
      expect(await used(access, QuotaResource.VMS, 'user:alice')).toBe(1n);
      expect(await used(access, QuotaResource.VCPUS, 'user:alice')).toBe(2n);
      expect(await used(access, QuotaResource.STORAGE_GB, 'user:alice')).toBe(1n);
      const deleted = await finished(ops, (await panel.deleteVm({ vmName: 'alice-1', deleteVolumes: true }, asAlice)).operation);
      expect(deleted.state, deleted.error?.message).toBe(OperationState.SUCCEEDED);
      for (const resource of [QuotaResource.VMS, QuotaResource.VCPUS, QuotaResource.MEMORY_GB, QuotaResource.STORAGE_GB]) expect(await used(access, resource, 'user:alice')).toBe(0n);
    } finally {
      panel.close();
    }
  });

  it('a key scoped to vm=ci-*, pool=ci-*, network=ci-net creates ci-42 and nothing outside', async () => {
    const key = await access.createApiKey(
      {
        description: 'ci',
        permissions: ['vm:create', 'vm:delete', 'vm:get', 'storage:volume:create', 'network:use'],
        resourceGlobs: [
          { kind: ResourceKind.VM, glob: 'ci-*' },
          { kind: ResourceKind.POOL, glob: 'ci-*' },
          { kind: ResourceKind.NETWORK, glob: 'ci-net' },
        ],
      },
      T,
    );
    const as = { ...T, metadata: { authorization: `Bearer ${key.secret}` } };
    // No client certificate: the key is the identity.
    const keyed = await clientFor(VmService, daemon, null);
    const ci = (name: string, network = 'ci-net') => spec(name, { interfaces: [{ network }] });
    const denied = await rejection(keyed.createVm({ spec: ci('web-9') }, as));
    expect(denied.code).toBe(Status.PERMISSION_DENIED);
    const outsideNet = await rejection(keyed.createVm({ spec: ci('ci-43', 'default') }, as));
    expect(outsideNet.code).toBe(Status.PERMISSION_DENIED);
    expect(outsideNet.details).toContain('network:use on network default');
    const { plan } = await keyed.createVm({ spec: ci('ci-43', 'default'), validateOnly: true }, as);
    expect(plan?.permissions.find((p) => p.resource === 'default')).toMatchObject({ allowed: false, permission: 'network:use' });
    const done = await finished(ops, (await keyed.createVm({ spec: ci('ci-42') }, as)).operation);
    expect(done.state, done.error?.message).toBe(OperationState.SUCCEEDED);
    expect(await domains()).toEqual(['ci-42']);
    // Its volume goes with it only with storage:volume:delete on the pool.
    const noDelete = await rejection(keyed.deleteVm({ vmName: 'ci-42', deleteVolumes: true }, as));
    expect(noDelete.code).toBe(Status.PERMISSION_DENIED);
    expect(noDelete.details).toContain(`storage:volume:delete on pool ${lvm.vg}`);
    const wider = await access.createApiKey(
      { description: 'ci', permissions: ['vm:delete', 'storage:volume:delete'], resourceGlobs: [{ kind: ResourceKind.VM, glob: 'ci-*' }, { kind: ResourceKind.POOL, glob: 'ci-*' }] },
      T,
    );
    const asWider = { ...T, metadata: { authorization: `Bearer ${wider.secret}` } };
    expect((await finished(ops, (await keyed.deleteVm({ vmName: 'ci-42', deleteVolumes: true }, asWider)).operation)).state).toBe(OperationState.SUCCEEDED);
    expect(await lvNames()).toEqual([]);
    keyed.close();
  });

  it('a scoped key learns nothing of pools, volumes and networks outside its globs: the plan answers the same whether they exist or not', async () => {
    const key = await access.createApiKey(
      { description: 'ci', permissions: ['vm:create', 'storage:volume:create', 'network:use'], resourceGlobs: [{ kind: ResourceKind.VM, glob: 'ci-*' }, { kind: ResourceKind.POOL, glob: 'zz-*' }, { kind: ResourceKind.NETWORK, glob: 'ci-net' }] },
      T,
    );
    const as = { ...T, metadata: { authorization: `Bearer ${key.secret}` } };
    const keyed = await clientFor(VmService, daemon, null);
    await run('/sbin/lvm', ['lvcreate', '--yes', '-n', 'ci-there', '-L', '8m', lvm.vg], { env: lvmEnv(lvm) });
    const denialsOf = async (over: Partial<SpecInit>) => {
      const { plan } = await keyed.createVm({ spec: spec('ci-probe', { interfaces: [{ network: 'ci-net' }], ...over }), validateOnly: true }, as);
      expect(plan?.allowed).toBe(false);
      return plan!.permissions.filter((p) => !p.allowed).map((p) => `${p.permission} ${p.resourceKind}`);
    };
    const newVolumeIn = (pool: string) => ({ disks: [{ source: { case: 'newVolume' as const, value: { backend: LVM, pool, sizeBytes: 20n * MIB } } }] });
    const volume = (pool: string, name: string) => ({ disks: [{ source: { case: 'volume' as const, value: { backend: LVM, pool, name } } }] });
    // A volume group on this node and one that is not; a volume that exists and one that does not; a network that exists and one that does not.
    expect(await denialsOf(newVolumeIn(lvm.vg))).toEqual(['storage:volume:create pool']);
    expect(await denialsOf(newVolumeIn('prod-vg'))).toEqual(['storage:volume:create pool']);
    expect(await denialsOf(volume(lvm.vg, 'ci-there'))).toEqual(['storage:volume:create pool']);
    expect(await denialsOf(volume(lvm.vg, 'ci-not-there'))).toEqual(['storage:volume:create pool']);
    expect(await denialsOf({ ...newVolumeIn(lvm.vg), interfaces: [{ network: 'default' }] })).toEqual(['storage:volume:create pool', 'network:use network']);
    expect(await denialsOf({ ...newVolumeIn(lvm.vg), interfaces: [{ network: 'nope-net' }] })).toEqual(['storage:volume:create pool', 'network:use network']);
    // Inside its globs, a pool that is not here is NOT_FOUND as before.
    expect((await rejection(keyed.createVm({ spec: spec('ci-probe', { ...newVolumeIn('zz-vg'), interfaces: [{ network: 'ci-net' }] }), validateOnly: true }, as))).code).toBe(Status.NOT_FOUND);
    await run('/sbin/lvm', ['lvremove', '--yes', `${lvm.vg}/ci-there`], { env: lvmEnv(lvm) });
    keyed.close();
  });
});

describe('UpdateVm', () => {
  it('changes vcpus, memory, disks and NICs, live where the driver can, guarded by the etag', async () => {
    const made = await finished(ops, (await vms.createVm({ spec: spec('upd-1') }, T)).operation);
    expect(made.state, made.error?.message).toBe(OperationState.SUCCEEDED);
    await vms.startVm({ vmName: 'upd-1' }, T);
    const before = await usage();
    const { etag } = await vms.getVm({ vmName: 'upd-1' }, T);
    const macBefore = parseDomainXml(await virsh('dumpxml', '--inactive', 'upd-1')).interfaces[0]?.mac ?? '';

    const stale = await rejection(vms.updateVm({ vmName: 'upd-1', vcpus: 1, etag: 'f'.repeat(32) }, T));
    expect(stale.code).toBe(Status.ABORTED);
    expect((await rejection(vms.updateVm({ vmName: 'upd-1', vcpus: 1, etag: '' }, T))).details).toMatch(/^etag:/);
    expect((await rejection(vms.updateVm({ vmName: 'upd-1', etag }, T))).code).toBe(Status.INVALID_ARGUMENT);
    expect((await rejection(vms.updateVm({ vmName: 'upd-1', memoryBytes: 3n, etag }, T))).details).toMatch(/^memory_bytes:/);
    expect((await rejection(vms.updateVm({ vmName: 'upd-1', removeInterfaces: ['01:02:03:04:05:06'], etag }, T))).details).toMatch(/^remove_interfaces\[0\]: must be a unicast/);
    expect((await rejection(vms.updateVm({ vmName: 'upd-1', detachDisks: ['vdz'], etag }, T))).code).toBe(Status.NOT_FOUND);

    const changes = {
      vmName: 'upd-1',
      vcpus: 1,
      memoryBytes: 256n * MIB,
      attachDisks: [{ source: { case: 'newVolume' as const, value: { backend: LVM, pool: lvm.vg, sizeBytes: 8n * MIB } } }],
      addInterfaces: [{ network: 'ci-net', mac: '52:54:00:00:00:42' }],
      removeInterfaces: [macBefore],
      etag,
    };
    const dry = await vms.updateVm({ ...changes, validateOnly: true }, T);
    expect(dry.etag).toBe(etag);
    expect(dry.plan?.changes.map((c) => c.description)).toEqual([
      'vcpus 2 -> 1',
      `memory ${512n * MIB} -> ${256n * MIB} bytes`,
      `remove interface ${macBefore}`,
      `attach disk vdb (/dev/${lvm.vg}/upd-1-disk1)`,
      'add interface 52:54:00:00:00:42 on network ci-net',
    ]);
    expect(dry.plan?.volumes.map((v) => v.volume?.name)).toEqual(['upd-1-disk1']);
    expect(await lvNames()).toEqual(['upd-1-disk0']);

    const done = await vms.updateVm(changes, T);
    // The test driver changes vCPUs and the balloon live, but has no device hotplug: those apply at the next boot.
    expect(done.plan?.changes.map((c) => [c.description.split(' ')[0], c.live])).toEqual([
      ['vcpus', true],
      ['memory', true],
      ['remove', false],
      ['attach', false],
      ['add', false],
    ]);
    expect(done.plan?.changes[3]?.reason).toContain('next boot');
    expect(done.etag).not.toBe(etag);
    const defined = parseDomainXml(await virsh('dumpxml', '--inactive', 'upd-1'));
    expect(defined).toMatchObject({ vcpus: 1, maxMemoryBytes: 256 * 1024 * 1024 });
    expect(defined.disks.map((d) => d.targetDev)).toEqual(['vda', 'vdb']);
    expect(defined.interfaces.map((n) => [n.mac, n.source])).toEqual([['52:54:00:00:00:42', 'ci-net']]);
    expect(defined.metadata.createdVolumes.map((v) => v.name)).toEqual(['upd-1-disk0', 'upd-1-disk1']);
    expect(defined.metadata.owner).toBe(ADMIN);
    expect((await vms.getVm({ vmName: 'upd-1' }, T)).etag).toBe(done.etag);
    expect(await usage()).toEqual({ ...before, vcpus: before.vcpus - 1n, storage_gb: before.storage_gb + 1n });
    // The old etag is stale now.
    expect((await rejection(vms.updateVm({ ...changes, etag }, T))).code).toBe(Status.ABORTED);

    // A detached disk is no longer the VM's: DeleteVm leaves it.
    const detached = await vms.updateVm({ vmName: 'upd-1', detachDisks: ['vdb'], etag: done.etag }, T);
    expect(detached.plan?.changes.map((c) => c.description)).toEqual(['detach disk vdb']);
    expect(parseDomainXml(await virsh('dumpxml', '--inactive', 'upd-1')).metadata.createdVolumes.map((v) => v.name)).toEqual(['upd-1-disk0']);

    const deletion = await finished(ops, (await vms.deleteVm({ vmName: 'upd-1', deleteVolumes: true, force: true }, T)).operation);
    expect(deletion.state, deletion.error?.message).toBe(OperationState.SUCCEEDED);
    expect(await lvNames()).toEqual(['upd-1-disk1']);
    await storage.deleteVolume({ volume: { backend: LVM, pool: lvm.vg, name: 'upd-1-disk1' } }, T);
    expect(await lvNames()).toEqual([]);
    expect(await usage()).toEqual({ vms: before.vms - 1n, vcpus: before.vcpus - 2n, memory_gb: before.memory_gb - 1n, storage_gb: before.storage_gb - 1n });
  });
});

describe('debvisorctl vm create|update|delete', () => {
  it('prints the plan with --dry-run, creates, updates and deletes', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'debvisor-ctl-'));
    try {
      await writeFile(join(dir, 'user-data.yaml'), '#cloud-config\npackages: [htop]\n');
      await writeFile(join(dir, 'id.pub'), `${SSH_KEY}\n`);
      await storage.createVolume({ volume: { backend: LVM, pool: lvm.vg, name: 'cli-extra' }, sizeBytes: 8n * MIB }, T);
      const args = ['vm', 'create', '--name', 'cli-1', '--vcpus', '2', '--memory', '256MiB', '--disk', `pool=${lvm.vg},size=16MiB`, '--disk', `volume=${lvm.vg}/cli-extra`, '--nic', 'network=default,vlan=7', '--cloud-init', join(dir, 'user-data.yaml'), '--ssh-key', join(dir, 'id.pub')];
      const dry = await ctlOn(daemon, ...args, '--dry-run');
      expect(dry.code, dry.stderr).toBe(0);
      expect(dry.stdout).toContain('cli-1-disk0');
      expect(dry.stdout).toContain('network:use');
      expect(dry.stdout).toContain('<domain type="test">');
      expect(await domains()).toEqual([]);
      const made = await ctlOn(daemon, ...args);
      expect(made.code, made.stderr + made.stdout).toBe(0);
      expect(await domains()).toEqual(['cli-1']);
      const bad = await ctlOn(daemon, 'vm', 'create', '--name', 'cli-2', '--vcpus', '1', '--memory', '256MiB', '--nic', 'network=default,mac=01:00:00:00:00:01');
      expect(bad.code).toBe(1);
      expect(bad.stderr).toMatch(/INVALID_ARGUMENT: spec\.interfaces\[0\]\.mac:/);
      const updated = await ctlOn(daemon, 'vm', 'update', 'cli-1', '--vcpus', '1', '--attach-disk', `pool=${lvm.vg},size=8MiB`);
      expect(updated.code, updated.stderr).toBe(0);
      expect(updated.stdout).toContain('vcpus 2 -> 1');
      expect(updated.stdout).toContain('next boot');
      const deleted = await ctlOn(daemon, 'vm', 'delete', 'cli-1', '--delete-volumes', '--also-delete', `lvm:${lvm.vg}/cli-extra`);
      expect(deleted.code, deleted.stderr + deleted.stdout).toBe(0);
      expect(await domains()).toEqual([]);
      expect(await lvNames()).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
