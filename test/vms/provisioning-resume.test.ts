// CreateVm and DeleteVm resumed by a restarted daemon, against a REAL libvirtd (test driver), a
// REAL LVM VG on a loop device and the real embedded store: the state a killed run leaves (some
// volumes, maybe the domain, the quotas charged, the record RUNNING) is made with the same calls
// the run makes, then a new OperationManager on the same store recovers it, as a restarted
// daemon does. A killed create is undone (only what it made), a killed delete carried through,
// and no quota unit is given back twice however often the rollback is killed.
// (The SIGKILL of the real daemon mid-create is test/e2e/vm-create-restart.test.ts.)
import { randomUUID } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { status as Status } from '@grpc/grpc-js';
import pino from 'pino';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Config } from '../../src/config/schema.js';
import { Libvirt } from '../../src/backends/libvirt/virsh.js';
import { LvmBackend } from '../../src/backends/lvm/lvm.js';
import { OperationManager } from '../../src/operations/manager.js';
import { QuotaManager } from '../../src/quota/manager.js';
import type { CountedResource } from '../../src/rpc/quota-dimensions.js';
import { registerVmProvisioningKinds } from '../../src/services/vm-provisioning.js';
import { StorageManager } from '../../src/storage/manager.js';
import { OPERATION_TAG } from '../../src/storage/names.js';
import { RecordCache } from '../../src/store/cache.js';
import { LeaseHolder } from '../../src/store/lease-holder.js';
import type { OperationRecord } from '../../src/store/records.js';
import { createRepositories, type Repositories } from '../../src/store/repositories.js';
import type { Store } from '../../src/store/store.js';
import { CloudInitSeeds } from '../../src/vms/cloud-init.js';
import { VmLiveInventory } from '../../src/vms/inventory.js';
import { CREATE_ROLLED_BACK, VmProvisioning, type CreateVmParams, type ProvisioningDeps, type DeleteVmParams, type ProvisioningRun } from '../../src/vms/provisioning.js';
import { StorageBackend } from '../../src/gen/debvisor/v1/storage_types_pb.js';
import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { VmSpecSchema, type VmSpec } from '../../src/gen/debvisor/v1/vm_pb.js';
import { startLibvirt, VIRSH, type TestLibvirt } from '../support/libvirt.js';
import { lvmEnv, startLvm, type TestLvm } from '../support/lvm.js';
import { embeddedHarness, type StoreHarness } from '../support/store-harness.js';

const run = promisify(execFile);
const silent = pino({ level: 'silent' });
const MIB = 1024n * 1024n;
const OWNER = 'spiffe://debvisor/admin/alice';
const NODE = 'node-a';
const WAIT = { timeout: 60_000, interval: 50 };
const DIMENSIONS: readonly CountedResource[] = ['vms', 'vcpus', 'memory_gb', 'storage_gb'];
const settings = (() => ({
  quota: { defaults: { concurrent_operations: 10, snapshots: 100, storage_gb: 100, vms: 100, vcpus: 100, memory_gb: 100 }, recompute_min_interval_seconds: 0 },
})) as unknown as () => Config;

let harness: StoreHarness;
let store: Store;
let repos: Repositories;
let lease: LeaseHolder;
let lvm: TestLvm;
let lv: TestLibvirt;
let libvirt: Libvirt;
let inventory: VmLiveInventory;
let storage: StorageManager;
let quotas: QuotaManager;
let provisioning: VmProvisioning;
let deps: ProvisioningDeps;
let seedDir: string;
let seeds: CloudInitSeeds;
const stopping = new AbortController();
const managers: OperationManager[] = [];

const virsh = async (...args: string[]) => (await run(VIRSH, ['-q', '-c', lv.uri, ...args], { env: { LC_ALL: 'C', PATH: '/usr/bin:/bin' } })).stdout;
const domains = async () => (await virsh('list', '--all', '--name')).split('\n').map((l) => l.trim()).filter(Boolean).sort();
async function lvNames(): Promise<string[]> {
  const { stdout } = await run('/sbin/lvm', ['lvs', '--reportformat', 'json', '-o', 'lv_name', lvm.vg], { env: lvmEnv(lvm) });
  return ((JSON.parse(stdout) as { report: { lv: { lv_name: string }[] }[] }).report[0]?.lv ?? []).map((l) => l.lv_name).sort();
}
async function usage(): Promise<Record<CountedResource, number>> {
  const out = {} as Record<CountedResource, number>;
  for (const d of DIMENSIONS) out[d] = await quotas.usage(OWNER, d);
  return out;
}
const exists = (path: string) => stat(path).then(() => true, () => false);

function spec(name: string, over: Partial<Exclude<MessageInitShape<typeof VmSpecSchema>, VmSpec>> = {}): VmSpec {
  return create(VmSpecSchema, {
    name,
    vcpus: 2,
    memoryBytes: 512n * MIB,
    disks: [
      { source: { case: 'newVolume', value: { backend: StorageBackend.LVM, pool: lvm.vg, sizeBytes: 20n * MIB } } },
      { source: { case: 'newVolume', value: { backend: StorageBackend.LVM, pool: lvm.vg, sizeBytes: 20n * MIB } } },
    ],
    ...over,
  });
}

/** A run of an operation outside any manager: the first (not resumed) run, as the daemon makes it. */
function firstRun(id: string): ProvisioningRun {
  return { id, signal: stopping.signal, cause: { actor: { principal: OWNER }, traceId: '' }, resumed: false, claim: () => Promise.resolve(true), progress: () => undefined };
}

/** The record a killed daemon left: RUNNING, resumable, on this node. */
async function killedRecord(kind: 'CREATE_VM' | 'DELETE_VM', params: CreateVmParams | DeleteVmParams, extra: Partial<OperationRecord> = {}): Promise<string> {
  const id = extra.id ?? randomUUID();
  const now = new Date().toISOString();
  await repos.operations.create(id, {
    schema_version: 1,
    id,
    kind,
    owner: OWNER,
    target: `vm:${params.vmName}`,
    node: NODE,
    state: 'RUNNING',
    progress_percent: 40,
    stage: 'running',
    cancel_requested: false,
    resumable: true,
    params,
    created_at: now,
    updated_at: now,
    ...extra,
  });
  return id;
}

/** What a restarted daemon does: a new manager over the same store recovers this node's operations; resolves with the record once terminal. */
async function restart(id: string): Promise<OperationRecord> {
  const cache = new RecordCache(repos.operations, () => undefined);
  await cache.start(stopping.signal);
  const operations = new OperationManager(repos, cache, quotas, NODE, silent, () => 3_600_000);
  managers.push(operations);
  registerVmProvisioningKinds(operations, provisioning);
  await operations.recover();
  let record: OperationRecord | undefined;
  await vi.waitFor(() => {
    record = operations.get(id);
    expect(['SUCCEEDED', 'FAILED', 'CANCELLED']).toContain(record?.state);
  }, WAIT);
  operations.stop();
  return record!;
}

/** Puts a finished record back to RUNNING, claims kept: as if the daemon had been killed again during the rollback. */
async function killAgain(id: string): Promise<void> {
  await repos.operations.mutate(id, (current) => current && { ...current, state: 'RUNNING', stage: 'running', error: undefined, done_at: undefined });
}

beforeAll(async () => {
  harness = await embeddedHarness();
  store = await harness.open();
  repos = createRepositories(store);
  lease = new LeaseHolder(store, 15, silent);
  const suffix = Math.random().toString(36).slice(2, 8);
  [lvm, lv] = await Promise.all([startLvm({ vg: `resume-vg${suffix}`, sizeMiB: 256 }), startLibvirt()]);
  const registry = new Registry();
  libvirt = new Libvirt({ uri: lv.uri, registry });
  inventory = new VmLiveInventory({
    libvirt,
    node: () => NODE,
    log: silent,
    registry,
    settings: () => ({ resyncIntervalMs: 300_000, maxStalenessMs: 60_000, attributionWindowMs: 10_000, subscriptionBackoffMaxMs: 1_000 }),
  });
  inventory.start();
  await vi.waitFor(() => expect(inventory.freshness.synced).toBe(true), WAIT);
  quotas = new QuotaManager(store, repos, settings, () => lease.lease());
  storage = new StorageManager({ backends: { lvm: new LvmBackend({ vgs: [lvm.vg], systemDir: lvm.systemDir, registry }) }, quotas, imagesDir: () => tmpdir() });
  seedDir = await mkdtemp(join(tmpdir(), 'debvisor-resume-seeds-'));
  seeds = new CloudInitSeeds({ dir: seedDir, registry });
  deps = {
    libvirt,
    inventory,
    storage,
    quotas,
    allows: () => true,
    networks: () => Promise.resolve([]),
    seeds,
    defaults: () => ({ domainType: 'test' as const, machineType: 'pc', cpuMode: 'host-model' as const, rbdAuth: undefined }),
  };
  provisioning = new VmProvisioning(deps);
  // What the owner holds elsewhere: a refund given twice would show (usage never goes below zero).
  for (const d of DIMENSIONS) await quotas.consume(OWNER, d, 10);
});

afterAll(async () => {
  for (const m of managers) m.stop();
  stopping.abort();
  await (inventory as VmLiveInventory | undefined)?.stop();
  await lease.release().catch(() => undefined);
  await store.close();
  await harness.cleanup();
  await Promise.all([(lvm as TestLvm | undefined)?.stop(), (lv as TestLibvirt | undefined)?.stop()]);
  if (seedDir) await rm(seedDir, { recursive: true, force: true });
});

const principal = { id: OWNER, kind: 'certificate' as const };

describe('a CreateVm killed mid-way, resumed by a restarted daemon', () => {
  it('removes the volume and domain it made, the seed, and gives every quota unit back; a second kill during the rollback refunds nothing twice', async () => {
    const before = await usage();
    const plan = await provisioning.plan(spec('half-1', { cloudInit: { userData: new TextEncoder().encode('#cloud-config\n') } }), principal, {});
    await provisioning.charge(plan, { actor: { principal: OWNER }, traceId: '' });
    const id = await killedRecord('CREATE_VM', plan.params);
    // What the killed run got to: the first volume (tagged with its operation), the seed, the definition.
    const [first] = plan.params.volumes;
    await storage.createVolume({ backend: 'lvm', pool: lvm.vg, name: first!.name }, BigInt(first!.sizeBytes), { vm: 'half-1' }, OWNER, { madeBy: id });
    await seeds.build('half-1', plan.params.seed!, 'spec.cloud_init');
    await libvirt.defineXml(plan.params.domainXml);
    expect(await lvNames()).toEqual(['half-1-disk0']);
    expect(await domains()).toEqual(['half-1']);
    expect(await usage()).toEqual({ ...before, vms: before.vms + 1, vcpus: before.vcpus + 2, memory_gb: before.memory_gb + 1, storage_gb: before.storage_gb + 2 });

    const done = await restart(id);
    expect(done.state).toBe('FAILED');
    expect(done.error).toEqual({ code: Status.UNAVAILABLE, message: CREATE_ROLLED_BACK });
    expect(await lvNames()).toEqual([]);
    expect(await domains()).toEqual([]);
    expect(await exists(join(seedDir, 'half-1.iso'))).toBe(false);
    expect(await usage()).toEqual(before);

    // Killed again during the rollback (claims kept, record RUNNING): it converges, refunding nothing twice.
    await killAgain(id);
    const again = await restart(id);
    expect(again.error).toEqual({ code: Status.UNAVAILABLE, message: CREATE_ROLLED_BACK });
    expect(await usage()).toEqual(before);
  });

  it('never removes a same-named VM, seed or volume someone else made; the charge for them is given back', async () => {
    const before = await usage();
    const plan = await provisioning.plan(spec('taken-1', { cloudInit: { userData: new TextEncoder().encode('#cloud-config\n') } }), principal, {});
    await provisioning.charge(plan, { actor: { principal: OWNER }, traceId: '' });
    const id = await killedRecord('CREATE_VM', plan.params);
    // Someone else (not this operation) made a VM of that name (another UUID), its seed, and volumes of the planned names.
    const otherPlan = await provisioning.plan(spec('taken-1', { cloudInit: { userData: new TextEncoder().encode('#cloud-config\n') } }), principal, {});
    await libvirt.defineXml(otherPlan.params.domainXml);
    await seeds.build('taken-1', otherPlan.params.seed!, 'spec.cloud_init');
    await storage.createVolume({ backend: 'lvm', pool: lvm.vg, name: 'taken-1-disk0' }, 8n * MIB, {}, 'someone-else');
    await storage.createVolume({ backend: 'lvm', pool: lvm.vg, name: 'taken-1-disk1' }, 8n * MIB, {}, OWNER, { madeBy: randomUUID() });
    const othersUuid = (await virsh('domuuid', 'taken-1')).trim();
    const charged = await usage();

    const done = await restart(id);
    expect(done.error).toEqual({ code: Status.UNAVAILABLE, message: CREATE_ROLLED_BACK });
    expect((await virsh('domuuid', 'taken-1')).trim()).toBe(othersUuid);
    expect(await exists(join(seedDir, 'taken-1.iso'))).toBe(true);
    expect(await lvNames()).toEqual(['taken-1-disk0', 'taken-1-disk1']);
    // Everything the create charged comes back: it made none of this.
    expect(await usage()).toEqual({ ...charged, vms: before.vms, vcpus: before.vcpus, memory_gb: before.memory_gb, storage_gb: charged.storage_gb - 2 });

    await virsh('undefine', 'taken-1');
    await seeds.removeSeed('taken-1');
    for (const name of ['taken-1-disk0', 'taken-1-disk1']) await storage.deleteVolume({ backend: 'lvm', pool: lvm.vg, name }, true);
  });

  it('killed after the first volume and before the domain, with a cancel requested: ends CANCELLED, undone', async () => {
    const before = await usage();
    const plan = await provisioning.plan(spec('cancel-1'), principal, {});
    await provisioning.charge(plan, { actor: { principal: OWNER }, traceId: '' });
    const id = await killedRecord('CREATE_VM', plan.params, { cancel_requested: true });
    await storage.createVolume({ backend: 'lvm', pool: lvm.vg, name: 'cancel-1-disk0' }, 20n * MIB, { vm: 'cancel-1' }, OWNER, { madeBy: id });
    const done = await restart(id);
    expect(done.state).toBe('CANCELLED');
    expect(await lvNames()).toEqual([]);
    expect(await domains()).toEqual([]);
    expect(await usage()).toEqual(before);
  });

  it('removes nothing and gives nothing back while libvirt cannot say whether the VM is defined', async () => {
    const before = await usage();
    const plan = await provisioning.plan(spec('blind-1'), principal, {});
    await provisioning.charge(plan, { actor: { principal: OWNER }, traceId: '' });
    const id = randomUUID();
    await storage.createVolume({ backend: 'lvm', pool: lvm.vg, name: 'blind-1-disk0' }, 20n * MIB, { vm: 'blind-1' }, OWNER, { madeBy: id });
    // The same parts, but libvirt's socket is not there (libvirtd down).
    const blind = new VmProvisioning({ ...deps, libvirt: new Libvirt({ uri: 'test+unix:///default?socket=/nonexistent/libvirt-sock', registry: new Registry() }) });
    const claimed: string[] = [];
    const resumed = { ...firstRun(id), resumed: true, claim: (step: string) => Promise.resolve(claimed.push(step) > 0) };
    await expect(blind.create(plan.params, resumed)).rejects.toMatchObject({ code: 'UNAVAILABLE', message: expect.stringMatching(/^the daemon restarted during creation; removing what it had made left: VM blind-1: libvirt is unreachable.*; nothing was removed and no quota given back$/) as unknown });
    expect(claimed).toEqual([]);
    expect(await lvNames()).toEqual(['blind-1-disk0']);
    expect(await usage()).toEqual({ ...before, vms: before.vms + 1, vcpus: before.vcpus + 2, memory_gb: before.memory_gb + 1, storage_gb: before.storage_gb + 2 });
    // With libvirt back, the next start undoes it.
    const done = await restart(await killedRecord('CREATE_VM', plan.params, { id }));
    expect(done.error?.message).toBe(CREATE_ROLLED_BACK);
    expect(await lvNames()).toEqual([]);
    expect(await usage()).toEqual(before);
  });

  it('the volumes a create makes carry its operation id', async () => {
    const plan = await provisioning.plan(spec('tagged-1', { disks: [spec('x').disks[0]!] }), principal, {});
    await provisioning.charge(plan, { actor: { principal: OWNER }, traceId: '' });
    const id = randomUUID();
    await provisioning.create(plan.params, firstRun(id));
    expect((await storage.getVolume({ backend: 'lvm', pool: lvm.vg, name: 'tagged-1-disk0' })).tags).toEqual({ vm: 'tagged-1', [OPERATION_TAG]: id });
    const definition = await provisioning.checkDelete('tagged-1', principal, { force: true, deleteVolumes: true, alsoDelete: [] }, {});
    await provisioning.delete({ vmName: 'tagged-1', deleteVolumes: true, force: true, alsoDelete: [], definition }, firstRun(randomUUID()));
    expect(await lvNames()).toEqual([]);
  });
});

describe('a DeleteVm killed mid-way, resumed by a restarted daemon', () => {
  it('carries the deletion through after the killed run undefined the VM: volumes deleted, quotas given back once', async () => {
    const before = await usage();
    const plan = await provisioning.plan(spec('del-1'), principal, {});
    await provisioning.charge(plan, { actor: { principal: OWNER }, traceId: '' });
    await provisioning.create(plan.params, firstRun(randomUUID()));
    expect(await usage()).toEqual({ ...before, vms: before.vms + 1, vcpus: before.vcpus + 2, memory_gb: before.memory_gb + 1, storage_gb: before.storage_gb + 2 });
    const definition = await provisioning.checkDelete('del-1', principal, { force: false, deleteVolumes: true, alsoDelete: [] }, {});
    const id = await killedRecord('DELETE_VM', { vmName: 'del-1', deleteVolumes: true, force: false, alsoDelete: [], definition });
    // The killed run undefined the VM, gave its vms/vcpus/memory_gb back (claimed first) and deleted the first volume.
    await libvirt.undefineVm('del-1');
    await repos.operations.mutate(id, (current) => current && { ...current, claimed_steps: ['release vm quota'] });
    for (const d of ['vms', 'vcpus', 'memory_gb'] as const) await quotas.release(OWNER, d, plan.params.charged[d]);
    await storage.deleteVolume({ backend: 'lvm', pool: lvm.vg, name: 'del-1-disk0' }, true);

    const done = await restart(id);
    expect(done.state, done.error?.message).toBe('SUCCEEDED');
    expect(await domains()).toEqual([]);
    expect(await lvNames()).toEqual([]);
    expect(await usage()).toEqual(before);
  });

  it('carries it through when killed before the undefine; refuses a VM that changed since the call', async () => {
    const before = await usage();
    const plan = await provisioning.plan(spec('del-2'), principal, {});
    await provisioning.charge(plan, { actor: { principal: OWNER }, traceId: '' });
    await provisioning.create(plan.params, firstRun(randomUUID()));
    const definition = await provisioning.checkDelete('del-2', principal, { force: false, deleteVolumes: true, alsoDelete: [] }, {});
    const id = await killedRecord('DELETE_VM', { vmName: 'del-2', deleteVolumes: true, force: false, alsoDelete: [], definition });
    const done = await restart(id);
    expect(done.state, done.error?.message).toBe('SUCCEEDED');
    expect(done.result).toMatchObject({ case: 'deletedVm', value: { vmName: 'del-2', deletedVolumes: [{ name: 'del-2-disk0' }, { name: 'del-2-disk1' }] } });
    expect(await domains()).toEqual([]);
    expect(await lvNames()).toEqual([]);
    expect(await usage()).toEqual(before);

    // The VM changed between the call and the run: the deletion refuses it rather than acting on what it no longer is.
    const plan3 = await provisioning.plan(spec('del-3', { disks: [] }), principal, {});
    await provisioning.charge(plan3, { actor: { principal: OWNER }, traceId: '' });
    await provisioning.create(plan3.params, firstRun(randomUUID()));
    const stale = await provisioning.checkDelete('del-3', principal, { force: false, deleteVolumes: true, alsoDelete: [] }, {});
    await virsh('setvcpus', 'del-3', '1', '--config');
    await expect(provisioning.delete({ vmName: 'del-3', deleteVolumes: true, force: false, alsoDelete: [], definition: stale }, firstRun(randomUUID()))).rejects.toMatchObject({ code: 'ABORTED' });
    expect(await domains()).toEqual(['del-3']);
    const fresh = await provisioning.checkDelete('del-3', principal, { force: false, deleteVolumes: true, alsoDelete: [] }, {});
    await provisioning.delete({ vmName: 'del-3', deleteVolumes: true, force: false, alsoDelete: [], definition: fresh }, firstRun(randomUUID()));
    expect(await domains()).toEqual([]);
  });
});
