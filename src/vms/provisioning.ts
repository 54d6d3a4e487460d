// CreateVm and DeleteVm: the plan (everything checked and shown before anything changes), the
// quota charge, the creating operation that undoes what it made when any step fails or is
// cancelled, and the deleting operation. Volumes the caller passed in are never touched.
// Both operations are resumed by a restarted daemon: a killed create is undone (only what that
// operation made: its domain by UUID, its volumes by their operation tag), a killed delete is
// carried through. Quota refunds are claimed on the operation's record first, so a refund
// never happens twice however often the daemon is killed (a kill between claim and refund
// leaves the units charged: RecomputeQuota gives them back).
import type { VmInventoryRecord } from '../store/records.js';
import { create, fromJson, toJson, type MessageInitShape } from '@bufbuild/protobuf';
import { ExponentialBackoff, handleWhen, retry } from 'cockatiel';
import { z } from 'zod';
import type { Libvirt } from '../backends/libvirt/virsh.js';
import { parseDomainXml, type CreatedVolume } from '../backends/libvirt/xml.js';
import { VmStateError } from '../backends/libvirt/errors.js';
import { ExecError } from '../backends/exec.js';
import { validatePool } from '../storage/names.js';
import type { StorageManager } from '../storage/manager.js';
import { OPERATION_TAG, volumeLabel, type VolumeKey } from '../storage/names.js';
import type { QuotaManager } from '../quota/manager.js';
import { gibOf } from '../quota/units.js';
import type { EventCause } from '../events/cause.js';
import type { Principal } from '../rpc/principal.js';
import type { ResourceRef } from '../rpc/policy.js';
import { InvalidArgumentError, itemStatus, RpcError } from '../rpc/errors.js';
import { VmPlanSchema, type VmPlan, type PermissionVerdictSchema, type QuotaVerdictSchema, type PlannedVolumeSchema } from '../gen/debvisor/v1/vm_types_pb.js';
import { StorageBackend } from '../gen/debvisor/v1/storage_types_pb.js';
import type { VmSpec } from '../gen/debvisor/v1/vm_pb.js';
import type { CountedResource } from '../rpc/quota-dimensions.js';
import { InventoryUnavailableError, type VmLiveInventory } from './inventory.js';
import { buildDomainXml, targetDevName, type DiskDevice, type DiskSource, type DomainDefinition } from './domain-xml.js';
import { validateSpec, type DiskPlanInput, type NicPlanInput, type ValidSpec } from './spec.js';
import type { CloudInitInput, CloudInitSeeds } from './cloud-init.js';
import type { ImageLibrary } from '../images/library.js';
import { libraryImageSource } from '../images/source.js';
import type { CephMonitor } from '../config/ceph-monitor.js';

/** A libvirt network or host bridge of this node (NodeService.ListNetworks). */
export interface NodeNetwork {
  readonly name: string;
  readonly kind: 'network' | 'bridge';
}

/** Builds and removes cloud-init NoCloud seed ISOs: `<dir>/<vm>.iso`. */
export type SeedBuilder = Pick<CloudInitSeeds, 'seedPath' | 'build' | 'removeSeed'>;

export interface VmDefaults {
  readonly domainType: 'kvm' | 'qemu' | 'test';
  readonly machineType: string;
  readonly cpuMode: 'host-passthrough' | 'host-model';
  /** Ceph client and libvirt secret for RBD disks; undefined: no <auth>. */
  readonly rbdAuth: { readonly username: string; readonly secretUuid: string } | undefined;
  /** Ceph monitors written into RBD disk sources; undefined or empty: no <host> (QEMU's ceph.conf). */
  readonly rbdMonitors?: readonly CephMonitor[];
}

export interface ProvisioningDeps {
  readonly libvirt: Libvirt;
  readonly inventory: VmLiveInventory;
  readonly storage: StorageManager;
  readonly quotas: QuotaManager;
  /** Whether the principal holds a permission on resources (AccessState.allows: roles, key globs, impersonator). */
  readonly allows: (principal: Principal, permission: string, resources: readonly ResourceRef[]) => boolean;
  readonly networks: (options: { signal?: AbortSignal }) => Promise<readonly NodeNetwork[]>;
  /** undefined: this node cannot build seeds (a spec with cloud_init is refused). */
  readonly seeds: SeedBuilder | undefined;
  readonly defaults: () => VmDefaults;
  /** This node's image library (a disk from a library image); undefined: none. */
  readonly images?: ImageLibrary | undefined;
}

export const PERMISSION_VOLUME_CREATE = 'storage:volume:create';
export const PERMISSION_TEMPLATE_CLONE = 'storage:template:clone';
export const PERMISSION_NETWORK_USE = 'network:use';
export const PERMISSION_VOLUME_DELETE = 'storage:volume:delete';

/** A volume the creating operation makes: its key, size, where its data comes from. */
const plannedVolume = z.object({
  backend: z.enum(['lvm', 'rbd']),
  pool: z.string(),
  name: z.string(),
  /** Decimal string: operation params are JSON. */
  sizeBytes: z.string().regex(/^\d+$/),
  source: z.discriminatedUnion('kind', [
    z.object({ kind: z.literal('empty') }),
    /** imageSha256: a library image's digest, the volume's lineage (held in use while it is read). */
    z.object({ kind: z.literal('image'), imagePath: z.string(), imageSha256: z.string().regex(/^[0-9a-f]{64}$/).optional() }),
    z.object({ kind: z.literal('clone'), template: z.object({ pool: z.string(), image: z.string(), snapshot: z.string() }), flatten: z.boolean() }),
  ]),
  /** storage_gb units taken for it before the operation (given back if it is never made). */
  charged: z.number().int().nonnegative(),
});

export const createVmParams = z.object({
  vmName: z.string(),
  owner: z.string(),
  domainXml: z.string(),
  volumes: z.array(plannedVolume),
  seed: z
    .object({
      instanceId: z.string(),
      hostname: z.string(),
      userData: z.string().optional(),
      metaData: z.string().optional(),
      networkConfig: z.string().optional(),
      sshAuthorizedKeys: z.array(z.string()),
    })
    .optional() satisfies z.ZodType<CloudInitInput | undefined>,
  networks: z.array(z.string()),
  autostart: z.boolean(),
  start: z.boolean(),
  /** vms, vcpus and memory_gb units taken for the VM. */
  charged: z.object({ vms: z.number(), vcpus: z.number(), memory_gb: z.number() }),
  /** The plan as protobuf JSON: the operation's result. */
  plan: z.json(),
});
export type CreateVmParams = z.infer<typeof createVmParams>;

const volumeKey = z.object({ backend: z.enum(['lvm', 'rbd']), pool: z.string(), name: z.string() });

/**
 * The definition DeleteVm acts on, read when it was called: the deletion refuses a VM that changed
 * since, and a resumed deletion still knows it once the killed run has undefined the domain.
 */
const vmDefinition = z.object({
  uuid: z.string(),
  owner: z.string(),
  vcpus: z.number().int(),
  memoryGb: z.number().int(),
  /** Source paths of its disks (not CD-ROMs). */
  diskPaths: z.array(z.string()),
  createdVolumes: z.array(volumeKey),
  hasSeed: z.boolean(),
  nvram: z.boolean(),
});
export type VmDefinition = z.infer<typeof vmDefinition>;

export const deleteVmParams = z.object({
  vmName: z.string(),
  deleteVolumes: z.boolean(),
  force: z.boolean(),
  alsoDelete: z.array(volumeKey),
  definition: vmDefinition,
});
export type DeleteVmParams = z.infer<typeof deleteVmParams>;

export interface Plan {
  readonly message: VmPlan;
  readonly params: CreateVmParams;
}

const KIND_ENUM: Record<'lvm' | 'rbd', StorageBackend> = { lvm: StorageBackend.LVM, rbd: StorageBackend.RBD };

/** The operation running a create or a delete (the part of OperationHandle provisioning uses). */
export interface ProvisioningRun {
  readonly id: string;
  readonly signal: AbortSignal;
  readonly cause: EventCause;
  /** A restarted daemon runs it again: the killed run may have left it half-done. */
  readonly resumed: boolean;
  /** True the first time `step` is claimed, across restarts too (OperationHandle.claim). */
  claim(step: string): Promise<boolean>;
  progress(percent: number, stage: string): void;
}

/** How the failure of a resumed CreateVm reads: the restart is the cause; the undo's outcome follows. */
export const CREATE_ROLLED_BACK = 'the daemon restarted during creation; what it had made was removed';

/** A UEFI VM has an NVRAM file, removed with its definition (the test driver refuses --nvram for others). */
function hasNvram(xml: string): boolean {
  return /<nvram[\s>]|firmware=['"]efi['"]/.test(xml);
}

/** What DeleteVm acts on, from the VM's inactive XML. */
function definitionOf(inactiveXml: string): VmDefinition {
  const xml = parseDomainXml(inactiveXml);
  return {
    uuid: xml.uuid,
    owner: xml.metadata.owner,
    vcpus: xml.vcpus,
    memoryGb: gibOf(BigInt(xml.maxMemoryBytes)),
    diskPaths: xml.disks.filter((d) => d.device === 'disk').map((d) => d.sourcePath),
    createdVolumes: xml.metadata.createdVolumes.map((v) => ({ backend: v.backend, pool: v.pool, name: v.name })),
    hasSeed: xml.metadata.seedFiles.length > 0,
    nvram: hasNvram(inactiveXml),
  };
}

function isUnavailable(err: unknown): boolean {
  return err instanceof ExecError && err.kind === 'unavailable';
}

function isMissing(err: unknown): boolean {
  return (err instanceof ExecError && err.kind === 'not_found') || (err instanceof RpcError && err.code === 'NOT_FOUND');
}

/** One quota dimension of a plan. */
interface QuotaNeed {
  readonly dimension: CountedResource;
  readonly needed: number;
}

export class VmProvisioning {
  constructor(private readonly deps: ProvisioningDeps) {}

  /** NOT_FOUND naming the pool when this node does not use it (not configured, or not one of its pools). */
  poolOn(backend: 'lvm' | 'rbd', pool: string, field: string): void {
    const backends = this.deps.storage.enabled();
    const found = backends.find((b) => b.kind === backend);
    validatePool(backend, pool, field);
    if (!found?.pools.includes(pool)) throw new RpcError('NOT_FOUND', `${field}: ${backend === 'rbd' ? 'pool' : 'volume group'} "${pool}" not found on this node`);
  }

  diskSource(key: VolumeKey): DiskSource {
    if (key.backend === 'lvm') return { type: 'block', path: this.deps.storage.backend('lvm').imageTarget(key.pool, key.name) };
    const { rbdAuth: auth, rbdMonitors: monitors } = this.deps.defaults();
    return { type: 'rbd', pool: key.pool, image: key.name, ...(auth ? { auth } : {}), ...(monitors && monitors.length > 0 ? { monitors } : {}) };
  }

  /** Guest device names: per bus family, in spec order; the seed CD-ROM last on SATA. */
  private targets(disks: readonly DiskPlanInput[]): { disks: string[]; seed: string } {
    let vd = 0;
    let sd = 0;
    const names = disks.map((d) => targetDevName(d.bus, d.bus === 'virtio' ? vd++ : sd++));
    return { disks: names, seed: targetDevName('sata', sd) };
  }

  /**
   * Validates the request and everything it refers to, and computes the plan: the domain XML, the
   * volumes to create, quota and permission verdicts, warnings. Changes nothing.
   */
  async plan(request: VmSpec | undefined, principal: Principal, options: { signal?: AbortSignal }): Promise<Plan> {
    const { libvirt, storage, inventory } = this.deps;
    const host = await libvirt.nodeResources(options);
    const spec = validateSpec(request, host.cpus);
    if (inventory.list().vms.some((vm) => vm.name === spec.name)) throw new RpcError('ALREADY_EXISTS', `spec.name: VM "${spec.name}" already exists`);
    const warnings: string[] = [];
    if (host.freeMemoryBytes !== undefined && spec.memoryBytes > BigInt(host.freeMemoryBytes)) {
      warnings.push(`memory: ${spec.memoryBytes} bytes is more than the ${host.freeMemoryBytes} bytes this node has free`);
    }
    if (spec.cpu?.mode === 'custom') {
      const models = await libvirt.cpuModels(options);
      if (models.length > 0 && !models.includes(spec.cpu.model)) warnings.push(`cpu_model: "${spec.cpu.model}" is not a CPU model libvirt knows on this node`);
    }
    if (spec.cloudInit && !this.deps.seeds) throw new RpcError('FAILED_PRECONDITION', 'spec.cloud_init: this node cannot build cloud-init seeds');

    // What the disks refer to: pools, existing volumes, images, templates.
    const volumes: CreateVmParams['volumes'] = [];
    const created: CreatedVolume[] = [];
    const permissions: MessageInitShape<typeof PermissionVerdictSchema>[] = [];
    const verdict = (permission: string, kind: string, resource: string, refs: readonly ResourceRef[]): boolean => {
      const allowed = this.deps.allows(principal, permission, refs);
      permissions.push({ permission, resourceKind: kind, resource, allowed, reason: allowed ? '' : `missing ${permission} on ${kind} ${resource}` });
      return allowed;
    };
    const targets = this.targets(spec.disks);
    const volumeTargets: string[] = [];
    for (const [index, disk] of spec.disks.entries()) {
      const o = disk.origin;
      const field = disk.field;
      const key: VolumeKey = { backend: o.backend, pool: o.pool, name: o.name };
      const sub = o.kind === 'existing' ? 'volume' : o.kind === 'empty' ? 'new_volume' : o.kind === 'image' ? 'image' : 'template_clone';
      // The verdicts come before anything is looked up: a caller that may not use a pool (or a
      // template's pool) learns neither whether it is on this node nor what it holds.
      const mayUsePool = verdict(PERMISSION_VOLUME_CREATE, 'pool', o.pool, [{ kind: 'pool', name: o.pool }]);
      const mayClone = o.kind !== 'clone' || verdict(PERMISSION_TEMPLATE_CLONE, 'pool', `${o.template.pool}/${o.template.image}@${o.template.snapshot}`, [{ kind: 'pool', name: o.template.pool }]);
      if (!mayUsePool || !mayClone) continue;
      this.poolOn(o.backend, o.pool, `${field}.${sub}.pool`);
      if (o.kind === 'existing') {
        await storage.getVolume(key, options);
        continue;
      }
      await storage.refuseExisting(key, `${field}.${sub}.name`, options);
      let sizeBytes: bigint;
      let source: CreateVmParams['volumes'][number]['source'];
      if (o.kind === 'empty') {
        sizeBytes = o.sizeBytes;
        source = { kind: 'empty' };
      } else if (o.kind === 'image') {
        const library = o.libraryImage === '' ? undefined : await libraryImageSource(this.deps.images, o.libraryImage, principal, `${field}.image.image`);
        const imagePath = library?.imagePath ?? o.imagePath;
        await storage.inspectImage(imagePath, o.sizeBytes, options).catch((err: unknown) => {
          // inspectImage names the ProvisionVolume fields; here they are the disk's.
          if (err instanceof InvalidArgumentError) throw new InvalidArgumentError(`${field}.image.${err.field === 'size_bytes' ? 'size_bytes' : 'image_path'}`, err.message.slice(err.field.length + 2));
          throw err;
        });
        sizeBytes = o.sizeBytes;
        source = { kind: 'image', imagePath, ...(library ? { imageSha256: library.imageSha256 } : {}) };
      } else {
        this.poolOn('rbd', o.template.pool, `${field}.template_clone.template_pool`);
        const template = await storage.templateForClone(o.template, options);
        sizeBytes = template.sizeBytes;
        source = { kind: 'clone', template: o.template, flatten: o.flatten };
      }
      volumes.push({ backend: o.backend, pool: o.pool, name: o.name, sizeBytes: sizeBytes.toString(), source, charged: gibOf(sizeBytes) });
      volumeTargets.push(targets.disks[index] ?? '');
      created.push(key);
    }

    // Networks and bridges, as ListNetworks shows them.
    const known = await this.deps.networks(options);
    for (const nic of spec.nics) {
      if (!verdict(PERMISSION_NETWORK_USE, 'network', nic.source, [{ kind: 'network', name: nic.source }])) continue;
      const found = known.find((n) => n.name === nic.source && n.kind === nic.type);
      if (!found) throw new RpcError('NOT_FOUND', `${nic.field}.${nic.type}: ${nic.type} "${nic.source}" not found on this node`);
    }

    const seedPath = spec.cloudInit && this.deps.seeds ? this.deps.seeds.seedPath(spec.name) : undefined;
    // Written only for a plan the caller may apply: the disks' sources look up their pools.
    const xml = permissions.every((p) => p.allowed) ? this.domainXml(spec, principal.id, created, seedPath) : '';

    // Quotas: one VM, its vCPUs and memory, and the GiB of the volumes made for it.
    const needs: QuotaNeed[] = [
      { dimension: 'vms', needed: 1 },
      { dimension: 'vcpus', needed: spec.vcpus },
      { dimension: 'memory_gb', needed: gibOf(spec.memoryBytes) },
      { dimension: 'storage_gb', needed: volumes.reduce((sum, v) => sum + v.charged, 0) },
    ];
    const quotas = await this.verdicts(principal.id, needs);
    const plannedVolumes: MessageInitShape<typeof PlannedVolumeSchema>[] = volumes.map((v, i) => ({
      volume: { backend: KIND_ENUM[v.backend], pool: v.pool, name: v.name },
      sizeBytes: BigInt(v.sizeBytes),
      source: v.source.kind === 'empty' ? 'empty' : v.source.kind === 'image' ? (v.source.imageSha256 ? `image:sha256:${v.source.imageSha256}` : `image:${v.source.imagePath}`) : `template:${v.source.template.pool}/${v.source.template.image}@${v.source.template.snapshot}`,
      targetDev: volumeTargets[i] ?? '',
    }));
    const message = create(VmPlanSchema, {
      vmName: spec.name,
      domainXml: xml,
      volumes: plannedVolumes,
      quotas,
      permissions,
      warnings,
      allowed: quotas.every((q) => q.allowed) && permissions.every((p) => p.allowed),
    });
    const seed = spec.cloudInit && { ...spec.cloudInit, sshAuthorizedKeys: [...spec.cloudInit.sshAuthorizedKeys] };
    return {
      message,
      params: {
        vmName: spec.name,
        owner: principal.id,
        domainXml: xml,
        volumes,
        ...(seed ? { seed } : {}),
        networks: spec.nics.map((n) => `${n.type}:${n.source}`),
        autostart: spec.autostart,
        start: spec.start,
        charged: { vms: 1, vcpus: spec.vcpus, memory_gb: gibOf(spec.memoryBytes) },
        plan: toJson(VmPlanSchema, message),
      },
    };
  }

  private async verdicts(owner: string, needs: readonly QuotaNeed[]): Promise<MessageInitShape<typeof QuotaVerdictSchema>[]> {
    const view = await this.deps.quotas.view(owner);
    return needs.map(({ dimension, needed }) => {
      const q = view.find((v) => v.resource === dimension);
      const used = q?.used ?? 0;
      const unlimited = q?.unlimited ?? false;
      const limit = q?.limit ?? 0;
      return { dimension, used: BigInt(used), needed: BigInt(needed), limit: BigInt(Number.isFinite(limit) ? limit : 0), unlimited, allowed: unlimited || needed <= 0 || used + needed <= limit };
    });
  }

  private domainXml(spec: ValidSpec, owner: string, created: readonly CreatedVolume[], seedPath: string | undefined): string {
    const defaults = this.deps.defaults();
    const targets = this.targets(spec.disks);
    const disks: DiskDevice[] = spec.disks.map((d, i) => ({
      source: this.diskSource({ backend: d.origin.backend, pool: d.origin.pool, name: d.origin.name }),
      device: 'disk',
      bus: d.bus,
      cache: d.cache,
      targetDev: targets.disks[i] ?? '',
      bootOrder: d.bootOrder,
      readOnly: false,
    }));
    if (seedPath !== undefined) disks.push({ source: { type: 'file', path: seedPath }, device: 'cdrom', bus: 'sata', cache: 'none', targetDev: targets.seed, bootOrder: 0, readOnly: true });
    const definition: DomainDefinition = {
      domainType: defaults.domainType,
      name: spec.name,
      uuid: spec.uuid,
      description: spec.description,
      owner,
      tags: spec.tags,
      createdVolumes: created,
      seedFiles: seedPath !== undefined ? [seedPath] : [],
      vcpus: spec.vcpus,
      memoryBytes: spec.memoryBytes,
      firmware: spec.firmware,
      machineType: spec.machineType || defaults.machineType,
      cpu: spec.cpu ?? { mode: defaults.cpuMode },
      disks,
      nics: spec.nics.map((n: NicPlanInput) => ({ type: n.type, source: n.source, model: n.model, mac: n.mac, vlan: n.vlan })),
    };
    return buildDomainXml(definition);
  }

  /** Takes the plan's quotas (RESOURCE_EXHAUSTED with QuotaFailure when one does not fit); all or none. */
  async charge(plan: Plan, cause: EventCause): Promise<void> {
    const { quotas } = this.deps;
    const owner = plan.params.owner;
    const taken: [CountedResource, number][] = [];
    try {
      for (const [dimension, amount] of Object.entries(plan.params.charged) as [CountedResource, number][]) {
        if (amount <= 0) continue;
        await quotas.consume(owner, dimension, amount, cause);
        taken.push([dimension, amount]);
      }
      const storageGb = plan.params.volumes.reduce((sum, v) => sum + v.charged, 0);
      if (storageGb > 0) {
        await quotas.consume(owner, 'storage_gb', storageGb, cause);
        taken.push(['storage_gb', storageGb]);
      }
    } catch (err) {
      for (const [dimension, amount] of taken) await quotas.release(owner, dimension, amount);
      throw err;
    }
  }

  /** Gives back what charge() took and the operation did not turn into something that exists. */
  async refund(params: CreateVmParams, uncreatedStorageGb: number): Promise<void> {
    const { quotas } = this.deps;
    for (const [dimension, amount] of Object.entries(params.charged) as [CountedResource, number][]) if (amount > 0) await quotas.release(params.owner, dimension, amount);
    if (uncreatedStorageGb > 0) await quotas.release(params.owner, 'storage_gb', uncreatedStorageGb);
  }

  /**
   * The creating operation: volumes, seed, definition, autostart, start. A failure (or cancel) at
   * any step removes what this operation made, in reverse, and gives the quotas back. Resumed
   * after a restart, it only does that: it cannot tell how far the killed run got.
   */
  async create(params: CreateVmParams, run: ProvisioningRun): Promise<VmPlan> {
    if (run.resumed) {
      const left = await this.undoCreate(params, run);
      throw new RpcError('UNAVAILABLE', left.length === 0 ? CREATE_ROLLED_BACK : `the daemon restarted during creation; removing what it had made left: ${left.join('; ')}`);
    }
    const { storage, libvirt, inventory } = this.deps;
    const step = (percent: number, stage: string) => {
      run.signal.throwIfAborted();
      run.progress(percent, stage);
    };
    const change = { signal: run.signal, cause: run.cause };
    try {
      const total = params.volumes.length;
      for (const [i, v] of params.volumes.entries()) {
        const key: VolumeKey = { backend: v.backend, pool: v.pool, name: v.name };
        const base = (i / Math.max(1, total)) * 80;
        step(base, `creating volume ${volumeLabel(key)}`);
        const progress = (pct: number, stage: string) => run.progress(base + (pct / 100) * (80 / Math.max(1, total)), stage);
        const tags = { 'vm': params.vmName };
        // Each volume carries this operation's id: an undo removes only volumes it made.
        if (v.source.kind === 'empty') {
          await storage.createVolume(key, BigInt(v.sizeBytes), tags, params.owner, { ...change, madeBy: run.id });
        } else if (v.source.kind === 'image') {
          // A library image is in use while it is read: DeleteImage is refused until then.
          const release = v.source.imageSha256 ? this.deps.images?.use(v.source.imageSha256) : undefined;
          try {
            await storage.provision(key, { sizeBytes: BigInt(v.sizeBytes), tags, owner: params.owner, imagePath: v.source.imagePath, imageSha256: v.source.imageSha256, madeBy: run.id }, { ...change, onProgress: progress });
          } finally {
            release?.();
          }
        } else {
          await storage.clone(v.source.template, { pool: v.pool, image: v.name, owner: params.owner, madeBy: run.id }, v.source.flatten, { ...change, onProgress: progress });
        }
      }
      if (params.seed && this.deps.seeds) {
        step(82, 'building cloud-init seed');
        await this.deps.seeds.build(params.vmName, params.seed, 'spec.cloud_init', { signal: run.signal });
      }
      // A network that went away since the plan: refuse now, before the definition (and undo the volumes).
      step(88, 'checking networks');
      const known = await this.deps.networks({ signal: run.signal });
      for (const wanted of params.networks) {
        if (!known.some((n) => `${n.kind}:${n.name}` === wanted)) throw new RpcError('NOT_FOUND', `${wanted.replace(':', ' ')} not found on this node any more`);
      }
      step(90, 'defining');
      // The VM's events from here on are this call's (the attribution ends with its window).
      inventory.attribute(params.vmName, run.cause.actor, run.cause.traceId, 5_000);
      await libvirt.defineXml(params.domainXml, { signal: run.signal });
      if (params.autostart) await libvirt.setAutostart(params.vmName, true, { signal: run.signal });
      if (params.start) {
        step(95, 'starting');
        await libvirt.start(params.vmName, { signal: run.signal });
      }
      await inventory.reloaded(params.vmName).catch(() => undefined);
      return fromJson(VmPlanSchema, params.plan);
    } catch (err) {
      // What could not be removed stays for an operator (and RecomputeQuota): the step's own failure is what the caller needs.
      await this.undoCreate(params, run);
      throw err;
    }
  }

  /**
   * Removes what the creating operation `run` made, from what its params planned and what exists
   * now, and gives back the quotas charged for what it removed or never made. Idempotent: a second
   * undo (after another restart) finds less to do and refunds nothing twice. The domain goes only
   * if its UUID is the plan's, volumes only if they carry `run`'s id: a same-named VM or volume
   * made by someone else is never touched. Returns what it could not remove or give back.
   */
  private async undoCreate(params: CreateVmParams, run: ProvisioningRun): Promise<string[]> {
    const { libvirt, storage, inventory, quotas } = this.deps;
    const left: string[] = [];
    // Without the operation's signal: a cancel must not stop its own clean-up.
    const attempt = async (what: string, work: () => Promise<unknown>) => {
      try {
        await work();
      } catch (err) {
        left.push(`${what}: ${itemStatus(err).message}`);
      }
    };
    const vm = params.vmName;
    const planned = parseDomainXml(params.domainXml).uuid;
    // The domain named like the VM now (undefined: there is none). Unknown (libvirt unreachable for a while):
    // the planned volumes may be a defined VM's disks, so nothing is removed.
    let domain: string | undefined;
    try {
      domain = await retry(handleWhen(isUnavailable), { maxAttempts: 5, backoff: new ExponentialBackoff({ initialDelay: 500, maxDelay: 5_000 }) }).execute(() => this.domainUuid(vm));
    } catch (err) {
      return [`VM ${vm}: ${itemStatus(err).message}; nothing was removed and no quota given back`];
    }
    if (domain === planned) {
      try {
        await libvirt.destroy(vm).catch((err: unknown) => {
          // Already off.
          if (!(err instanceof VmStateError)) throw err;
        });
        await libvirt.undefineVm(vm, { nvram: hasNvram(params.domainXml) });
      } catch (err) {
        // A VM still defined keeps its disks, its seed and its quota units.
        return [`VM ${vm}: ${itemStatus(err).message}; it was left with its seed and volumes`];
      }
      await inventory.reloaded(vm).catch(() => undefined);
    }
    // The seed is `<dir>/<vm>.iso`: a same-named VM made by someone else owns it.
    if (params.seed && (domain === undefined || domain === planned)) await attempt('cloud-init seed', async () => this.deps.seeds?.removeSeed(vm));
    await attempt('quota refund of vms, vcpus and memory_gb', async () => {
      if (await run.claim('refund vm quota')) await this.refund(params, 0);
    });
    for (const v of [...params.volumes].reverse()) {
      const key: VolumeKey = { backend: v.backend, pool: v.pool, name: v.name };
      await attempt(`volume ${volumeLabel(key)}`, async () => {
        const volume = await storage.getVolume(key).catch((err: unknown) => {
          if (isMissing(err)) return undefined;
          throw err;
        });
        // Its charge is settled once: by deleting the volume (deleteVolume gives its storage_gb back) or by a refund.
        const first = await run.claim(`storage ${volumeLabel(key)}`);
        if (volume?.tags[OPERATION_TAG] === run.id) await storage.deleteVolume(key, true, { force: true, cause: run.cause });
        else if (first && v.charged > 0) await quotas.release(params.owner, 'storage_gb', v.charged);
      });
    }
    return left;
  }

  /** The UUID of the domain named `vm`; undefined when there is none. */
  private async domainUuid(vm: string): Promise<string | undefined> {
    try {
      return parseDomainXml(await this.deps.libvirt.dumpXml(vm, { inactive: true })).uuid;
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw err;
    }
  }

  /**
   * Checks a DeleteVm can start: the VM exists, is off or force is set, the extra volumes are its
   * disks, and the caller may delete every volume that would go (storage:volume:delete on its pool).
   * Returns the definition the deletion acts on.
   */
  async checkDelete(vmName: string, principal: Principal, request: { force: boolean; deleteVolumes: boolean; alsoDelete: readonly VolumeKey[] }, options: { signal?: AbortSignal }): Promise<VmDefinition> {
    const state = await this.deps.libvirt.state(vmName, options);
    if (!request.force && state !== 'shutoff' && state !== 'crashed') throw new VmStateError(vmName, state, 'delete (set force to power it off first)');
    const definition = definitionOf(await this.deps.libvirt.dumpXml(vmName, { ...options, inactive: true }));
    for (const [i, key] of request.alsoDelete.entries()) {
      if (!definition.diskPaths.includes(this.diskPath(key))) throw new InvalidArgumentError(`also_delete[${i}]`, `${volumeLabel(key)} is not a disk of VM "${vmName}"`);
    }
    const pools = new Set([...(request.deleteVolumes ? definition.createdVolumes : []), ...request.alsoDelete].map((key) => key.pool));
    const refused = [...pools].filter((pool) => !this.deps.allows(principal, PERMISSION_VOLUME_DELETE, [{ kind: 'pool', name: pool }]));
    if (refused.length > 0) throw new RpcError('PERMISSION_DENIED', `permission denied: deleting the VM's volumes requires ${PERMISSION_VOLUME_DELETE} on pool ${refused.join(', ')}`);
    return definition;
  }

  /** How a volume appears as a disk source in domain XML. */
  private diskPath(key: VolumeKey): string {
    const source = this.diskSource(key);
    return source.type === 'rbd' ? `${source.pool}/${source.image}` : source.path;
  }

  /**
   * The deleting operation: destroy (force), undefine, seeds, volumes made for the VM (delete_volumes),
   * quotas back. Every step skips what is already done, so a resumed deletion carries a killed one through.
   */
  async delete(params: DeleteVmParams, run: ProvisioningRun) {
    const { libvirt, storage, quotas, inventory } = this.deps;
    const vm = params.vmName;
    const wanted = params.definition;
    inventory.attribute(vm, run.cause.actor, run.cause.traceId, 5_000);
    let current: VmDefinition | undefined;
    try {
      current = definitionOf(await libvirt.dumpXml(vm, { signal: run.signal, inactive: true }));
    } catch (err) {
      if (!isMissing(err)) throw err;
    }
    let destroyed = false;
    if (current?.uuid === wanted.uuid) {
      if (JSON.stringify(vmDefinition.parse(current)) !== JSON.stringify(wanted)) throw new RpcError('ABORTED', `VM "${vm}" changed since DeleteVm was called; call DeleteVm again`);
      const state = await libvirt.state(vm, { signal: run.signal });
      if (state !== 'shutoff' && state !== 'crashed') {
        if (!params.force) throw new VmStateError(vm, state, 'delete (set force to power it off first)');
        run.progress(10, 'powering off');
        await libvirt.destroy(vm, { signal: run.signal });
        destroyed = true;
      }
      run.progress(30, 'undefining');
      await libvirt.undefineVm(vm, { signal: run.signal, nvram: wanted.nvram });
      await inventory.reloaded(vm).catch(() => undefined);
    } else if (!run.resumed) {
      throw current
        ? new RpcError('FAILED_PRECONDITION', `VM "${vm}" is not the VM DeleteVm was called for (it was deleted and defined again); call DeleteVm again`)
        : new RpcError('NOT_FOUND', `VM "${vm}" not found`);
    }
    // The definition is gone (now, or by the killed run): a failure from here on must not stop the quota refund.
    if (wanted.owner !== '' && (await run.claim('release vm quota'))) {
      await quotas.release(wanted.owner, 'vms', 1);
      await quotas.release(wanted.owner, 'vcpus', wanted.vcpus);
      await quotas.release(wanted.owner, 'memory_gb', wanted.memoryGb);
    }
    // A same-named VM defined since owns the seed path.
    const replaced = current !== undefined && current.uuid !== wanted.uuid;
    if (wanted.hasSeed && !replaced) await this.deps.seeds?.removeSeed(vm).catch(() => undefined);
    const targets: VolumeKey[] = [...(params.deleteVolumes ? wanted.createdVolumes : []), ...params.alsoDelete];
    const deleted: VolumeKey[] = [];
    const gone: VolumeKey[] = [];
    const kept: string[] = [];
    for (const [i, key] of targets.entries()) {
      run.progress(40 + (i / Math.max(1, targets.length)) * 59, `deleting ${volumeLabel(key)}`);
      try {
        // Not forced: a volume another VM on this host uses now is kept (and reported), never pulled from under it.
        await storage.deleteVolume(key, true, { signal: run.signal, cause: run.cause });
        deleted.push(key);
      } catch (err) {
        // Already gone is what was asked for (deleted by the killed run, too); in use elsewhere (or with clones) stays.
        if (!(err instanceof RpcError && (err.code === 'NOT_FOUND' || err.code === 'FAILED_PRECONDITION'))) throw err;
        if (err.code === 'FAILED_PRECONDITION') kept.push(`${volumeLabel(key)}: ${err.message}`);
        else gone.push(key);
      }
    }
    const deletedPaths = new Set([...deleted, ...gone].map((key) => this.diskPath(key)));
    return {
      vmName: vm,
      destroyed,
      deletedVolumes: deleted.map((k) => ({ backend: KIND_ENUM[k.backend], pool: k.pool, name: k.name })),
      keptDisks: [...wanted.diskPaths.filter((path) => !deletedPaths.has(path)), ...kept],
    };
  }

  /**
   * What `principal` owns of VMs, vCPUs and memory: this node's VMs from its live inventory, and
   * other nodes' as their heartbeats last published them (`published`, every node's records). A
   * VM counts once by UUID (a migrated VM may still be in its old node's last publication).
   * undefined while this node's inventory is not loaded.
   */
  countOwnedBy(principal: string, node: string, published: readonly VmInventoryRecord[] = []): { vms: number; vcpus: number; memory_gb: number } | undefined {
    let listed;
    try {
      listed = this.deps.inventory.list().vms;
    } catch (err) {
      if (err instanceof InventoryUnavailableError) return undefined;
      throw err;
    }
    const total = { vms: 0, vcpus: 0, memory_gb: 0 };
    const counted = new Set<string>();
    const add = (owner: string | undefined, vcpus: number, maxMemoryBytes: number) => {
      if (owner !== principal) return;
      total.vms += 1;
      total.vcpus += vcpus;
      total.memory_gb += gibOf(BigInt(maxMemoryBytes));
    };
    for (const vm of listed) {
      counted.add(vm.uuid);
      const definition = vm.inactiveXml !== undefined ? parseDomainXml(vm.inactiveXml) : undefined;
      add(vm.owner, definition?.vcpus ?? vm.vcpus, definition?.maxMemoryBytes ?? vm.maxMemoryBytes);
    }
    for (const record of published) {
      if (record.node === node || counted.has(record.uuid) || record.xml === '') continue;
      counted.add(record.uuid);
      const definition = parseDomainXml(record.xml);
      add(definition.metadata.owner, definition.vcpus, definition.maxMemoryBytes);
    }
    return total;
  }

}
