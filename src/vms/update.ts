// UpdateVm: vCPUs, memory, disks and NICs of an existing VM. The persistent definition is edited
// (an order-preserving parse of its inactive XML, the new devices written by the same builder as
// CreateVm's) and defined again; then, if the VM runs, each change is tried live (setvcpus,
// setmem, attach-device, detach-device --live) and the reply says which took effect now and
// which at the next boot. The etag (hash of the inactive XML) guards against lost updates.
import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { XMLParser } from 'fast-xml-parser';
import XMLBuilder from 'fast-xml-builder';
import type { UpdateVmRequest, UpdateVmResponseSchema } from '../gen/debvisor/v1/vm_pb.js';
import { VmPlanSchema, type PermissionVerdictSchema, type PlannedChangeSchema } from '../gen/debvisor/v1/vm_types_pb.js';
import type { CallContext } from '../rpc/context.js';
import type { Principal } from '../rpc/principal.js';
import { InvalidArgumentError, RpcError } from '../rpc/errors.js';
import { validateText, validateVmName } from '../backends/validate.js';
import { parseDomainXml, type DomainXml } from '../backends/libvirt/xml.js';
import { causeOf } from '../events/cause.js';
import { gibOf } from '../quota/units.js';
import type { VolumeKey } from '../storage/names.js';
import type { CountedResource } from '../rpc/quota-dimensions.js';
import { DEBVISOR_XMLNS } from '../backends/libvirt/xml.js';
import { buildDiskXml, buildInterfaceXml, definitionEtag, targetDevName, type DiskDevice, type NicDevice } from './domain-xml.js';
import { PERMISSION_NETWORK_USE, PERMISSION_VOLUME_CREATE, type ProvisioningDeps, type VmProvisioning } from './provisioning.js';
import { MAX_DISKS, MAX_NICS, validateDisk, validateInterface, validateMac, validateMemory, validateVcpus } from './spec.js';

type Ordered = Record<string, unknown>;

const orderedParser = new XMLParser({
  preserveOrder: true,
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: true,
  processEntities: true,
  htmlEntities: false,
});
const orderedBuilder = new XMLBuilder({ preserveOrder: true, ignoreAttributes: false, attributeNamePrefix: '@', format: true, indentBy: '  ', suppressEmptyNode: true, processEntities: true });

function tagOf(node: Ordered): string {
  return Object.keys(node).find((k) => k !== ':@') ?? '';
}

function childrenOf(node: Ordered): Ordered[] {
  const value = node[tagOf(node)];
  return Array.isArray(value) ? (value as Ordered[]) : [];
}

function attrOf(node: Ordered | undefined, name: string): string {
  const attrs = node?.[':@'];
  const value = typeof attrs === 'object' && attrs !== null ? (attrs as Record<string, unknown>)[`@${name}`] : undefined;
  return typeof value === 'string' ? value : '';
}

function child(node: Ordered, tag: string): Ordered | undefined {
  return childrenOf(node).find((c) => tagOf(c) === tag);
}

function parseOrdered(xml: string): Ordered[] {
  return orderedParser.parse(xml) as Ordered[];
}

/** One change of the plan, and how to try it on the running VM. */
interface Change {
  readonly description: string;
  /** undefined: the change cannot be made live (reason). */
  readonly live: (() => Promise<void>) | undefined;
  /** After `live` succeeded: why the change was only requested, not made; undefined when made. */
  readonly pending?: () => Promise<string | undefined>;
  readonly notLive: string;
}

export interface VmUpdateDeps extends Pick<ProvisioningDeps, 'libvirt' | 'inventory' | 'storage' | 'quotas' | 'allows' | 'networks'> {
  readonly provisioning: VmProvisioning;
}

export class VmUpdates {
  constructor(private readonly deps: VmUpdateDeps) {}

  async update(request: UpdateVmRequest, principal: Principal, ctx: CallContext): Promise<MessageInitShape<typeof UpdateVmResponseSchema>> {
    const { libvirt, inventory, storage, quotas, provisioning } = this.deps;
    const opts = { signal: ctx.signal };
    const vm = validateVmName(request.vmName, 'vm_name');
    const etag = validateText(request.etag, 'etag', 64);
    if (etag === '') throw new InvalidArgumentError('etag', 'required: the etag of GetVm or GetVmDefinition');
    const host = await libvirt.nodeResources(opts);
    // Validate every field before reading anything else.
    const vcpus = request.vcpus === 0 ? undefined : validateVcpus(request.vcpus, host.cpus, 'vcpus');
    const memory = request.memoryBytes === 0n ? undefined : validateMemory(request.memoryBytes, 'memory_bytes');
    const detach = request.detachDisks.map((dev, i) => {
      if (!/^(vd|sd|hd|xvd)[a-z]{1,3}$/.test(dev)) throw new InvalidArgumentError(`detach_disks[${i}]`, 'a guest device name such as vdb');
      return dev;
    });
    const removeMacs = request.removeInterfaces.map((mac, i) => validateMac(mac, `remove_interfaces[${i}]`));
    const addNics = request.addInterfaces.map((nic, i) => validateInterface(nic, `add_interfaces[${i}]`));

    const inactive = await libvirt.dumpXml(vm, { ...opts, inactive: true });
    if (definitionEtag(inactive) !== etag) throw new RpcError('ABORTED', `etag: the definition of VM "${vm}" changed since that etag was read; read it again (GetVm) and retry`);
    const current = parseDomainXml(inactive);
    const attachDisks = request.attachDisks.map((disk, i) => {
      const field = `attach_disks[${i}]`;
      if (disk.source.case !== 'volume' && disk.source.case !== 'newVolume') throw new InvalidArgumentError(field, 'only volume (an existing one) or new_volume can be attached');
      return validateDisk(disk, vm, current.disks.length + i, field);
    });
    if (vcpus === undefined && memory === undefined && attachDisks.length + detach.length + addNics.length + removeMacs.length === 0) {
      throw new InvalidArgumentError('vcpus', 'nothing to change: set vcpus, memory_bytes, attach_disks, detach_disks, add_interfaces or remove_interfaces');
    }
    for (const [i, dev] of detach.entries()) if (!current.disks.some((d) => d.targetDev === dev)) throw new RpcError('NOT_FOUND', `detach_disks[${i}]: VM "${vm}" has no disk ${dev}`);
    for (const [i, mac] of removeMacs.entries()) if (!current.interfaces.some((n) => n.mac.toLowerCase() === mac)) throw new RpcError('NOT_FOUND', `remove_interfaces[${i}]: VM "${vm}" has no interface ${mac}`);
    const remainingDisks = current.disks.length - detach.length + attachDisks.length;
    if (remainingDisks > MAX_DISKS + 1) throw new InvalidArgumentError('attach_disks', `at most ${MAX_DISKS} disks`);
    if (current.interfaces.length - removeMacs.length + addNics.length > MAX_NICS) throw new InvalidArgumentError('add_interfaces', `at most ${MAX_NICS} network interfaces`);
    for (const nic of addNics) {
      if (current.interfaces.some((n) => n.mac.toLowerCase() === nic.mac && !removeMacs.includes(nic.mac))) throw new RpcError('ALREADY_EXISTS', `${nic.field}.mac: VM "${vm}" already has an interface ${nic.mac}`);
    }

    // What the disks and NICs refer to, and the caller's rights on it.
    const permissions: MessageInitShape<typeof PermissionVerdictSchema>[] = [];
    const verdict = (permission: string, kind: string, resource: string) => {
      const allowed = this.deps.allows(principal, permission, [{ kind, name: resource }]);
      permissions.push({ permission, resourceKind: kind, resource, allowed, reason: allowed ? '' : `missing ${permission} on ${kind} ${resource}` });
    };
    const newVolumes: { key: VolumeKey; sizeBytes: bigint }[] = [];
    for (const disk of attachDisks) {
      const o = disk.origin;
      const key: VolumeKey = { backend: o.backend, pool: o.pool, name: o.name };
      const sub = o.kind === 'existing' ? 'volume' : 'new_volume';
      provisioning.poolOn(o.backend, o.pool, `${disk.field}.${sub}.pool`);
      if (o.kind === 'existing') await storage.getVolume(key, opts);
      else if (o.kind === 'empty') {
        await storage.refuseExisting(key, `${disk.field}.new_volume.name`, opts);
        newVolumes.push({ key, sizeBytes: o.sizeBytes });
      }
      verdict(PERMISSION_VOLUME_CREATE, 'pool', o.pool);
    }
    if (addNics.length > 0) {
      const known = await this.deps.networks(opts);
      for (const nic of addNics) {
        if (!known.some((n) => n.name === nic.source && n.kind === nic.type)) throw new RpcError('NOT_FOUND', `${nic.field}.${nic.type}: ${nic.type} "${nic.source}" not found on this node`);
        verdict(PERMISSION_NETWORK_USE, 'network', nic.source);
      }
    }

    // The new devices, named after what remains.
    const used = new Set(current.disks.filter((d) => !detach.includes(d.targetDev)).map((d) => d.targetDev));
    const nextTarget = (bus: 'virtio' | 'scsi' | 'sata') => {
      for (let i = 0; ; i++) {
        const name = targetDevName(bus, i);
        if (!used.has(name)) {
          used.add(name);
          return name;
        }
      }
    };
    const diskDevices: DiskDevice[] = attachDisks.map((d) => ({
      source: provisioning.diskSource({ backend: d.origin.backend, pool: d.origin.pool, name: d.origin.name }),
      device: 'disk',
      bus: d.bus,
      cache: d.cache,
      targetDev: nextTarget(d.bus),
      bootOrder: d.bootOrder,
      readOnly: false,
    }));
    const nicDevices: NicDevice[] = addNics.map((n) => ({ type: n.type, source: n.source, model: n.model, mac: n.mac, vlan: n.vlan }));
    const newXml = this.edited(inactive, { vcpus, memory, detach, removeMacs, disks: diskDevices, nics: nicDevices, createdVolumes: newVolumes.map((v) => v.key) });

    // Quotas: the owner's vcpus and memory_gb change by the difference; new volumes' GiB are the caller's.
    const owner = current.metadata.owner;
    const deltas: [string, CountedResource, number][] = [];
    if (owner !== '' && vcpus !== undefined) deltas.push([owner, 'vcpus', vcpus - current.vcpus]);
    if (owner !== '' && memory !== undefined) deltas.push([owner, 'memory_gb', gibOf(memory) - gibOf(BigInt(current.maxMemoryBytes))]);
    const storageGb = newVolumes.reduce((sum, v) => sum + gibOf(v.sizeBytes), 0);
    if (storageGb > 0) deltas.push([principal.id, 'storage_gb', storageGb]);

    const state = await libvirt.state(vm, opts);
    const running = state === 'running' || state === 'paused' || state === 'blocked';
    // The balloon moves only within the memory the running VM booted with.
    const liveMaxMemory = running ? BigInt(parseDomainXml(await libvirt.dumpXml(vm, opts)).maxMemoryBytes) : 0n;
    const changes = this.changes(vm, inactive, current, running, liveMaxMemory, { vcpus, memory, detach, removeMacs, disks: diskDevices, nics: nicDevices }, opts);
    const quotaViews = await quotas.view(principal.id);
    const planChanges = (outcomes?: readonly { live: boolean; reason: string }[]): MessageInitShape<typeof PlannedChangeSchema>[] =>
      changes.map((c, i) => {
        const outcome = outcomes?.[i];
        return { description: c.description, live: outcome ? outcome.live : c.live !== undefined, reason: outcome ? outcome.reason : c.live === undefined ? c.notLive : '' };
      });
    const quotaVerdicts = deltas.map(([who, dimension, needed]) => {
      const view = who === principal.id ? quotaViews.find((v) => v.resource === dimension) : undefined;
      const usedUnits = view?.used ?? 0;
      const limit = view?.limit ?? 0;
      return { dimension, used: BigInt(usedUnits), needed: BigInt(needed), limit: BigInt(Number.isFinite(limit) ? limit : 0), unlimited: view?.unlimited ?? false, allowed: needed <= 0 || view === undefined || view.unlimited || usedUnits + needed <= limit };
    });
    const plan = (outcomes?: readonly { live: boolean; reason: string }[]) =>
      create(VmPlanSchema, {
        vmName: vm,
        domainXml: newXml,
        volumes: newVolumes.map((v) => ({ volume: { backend: v.key.backend === 'lvm' ? 1 : 2, pool: v.key.pool, name: v.key.name }, sizeBytes: v.sizeBytes, source: 'empty' })),
        quotas: quotaVerdicts,
        permissions,
        changes: planChanges(outcomes),
        allowed: quotaVerdicts.every((q) => q.allowed) && permissions.every((p) => p.allowed),
      });
    if (request.validateOnly) return { plan: plan(), etag, vm: await this.vmMessage(vm) };
    const refused = permissions.filter((p) => !p.allowed);
    if (refused.length > 0) throw new RpcError('PERMISSION_DENIED', `permission denied: ${refused.map((p) => p.reason).join('; ')}`);

    // Apply: quotas, volumes, the new definition (all undone on failure); then the live part.
    const taken: [string, CountedResource, number][] = [];
    const made: VolumeKey[] = [];
    const cause = causeOf(ctx);
    const apply = async (): Promise<MessageInitShape<typeof UpdateVmResponseSchema>> => {
      try {
        for (const [who, dimension, amount] of deltas) {
          if (amount <= 0) continue;
          await quotas.consume(who, dimension, amount, cause);
          taken.push([who, dimension, amount]);
        }
        for (const v of newVolumes) {
          await storage.createVolume(v.key, v.sizeBytes, { vm }, principal.id, { ...opts, cause });
          made.push(v.key);
        }
        // Between the etag check and now someone may have changed it: check again right before writing.
        if (definitionEtag(await libvirt.dumpXml(vm, { ...opts, inactive: true })) !== etag) throw new RpcError('ABORTED', `etag: the definition of VM "${vm}" changed meanwhile; read it again and retry`);
        await libvirt.defineXml(newXml, opts);
      } catch (err) {
        for (const key of made.reverse()) await storage.deleteVolume(key, true, { force: true, cause }).catch(() => undefined);
        for (const [who, dimension, amount] of taken) {
          // The storage_gb of a made volume went back with deleteVolume.
          if (dimension === 'storage_gb') {
            const notMade = newVolumes.filter((v) => !made.includes(v.key)).reduce((sum, v) => sum + gibOf(v.sizeBytes), 0);
            if (notMade > 0) await quotas.release(who, dimension, notMade);
          } else await quotas.release(who, dimension, amount);
        }
        throw err;
      }
      for (const [who, dimension, amount] of deltas) if (amount < 0) await quotas.release(who, dimension, -amount);
      const outcomes: { live: boolean; reason: string }[] = [];
      for (const change of changes) {
        if (!change.live) {
          outcomes.push({ live: false, reason: change.notLive });
          continue;
        }
        try {
          await change.live();
          const pending = await change.pending?.();
          outcomes.push(pending === undefined ? { live: true, reason: '' } : { live: false, reason: pending });
        } catch (err) {
          outcomes.push({ live: false, reason: `at the next boot: the running VM refused it (${err instanceof Error ? err.message : String(err)})` });
        }
      }
      const after = await libvirt.dumpXml(vm, { ...opts, inactive: true });
      return { plan: plan(outcomes), etag: definitionEtag(after), vm: await this.vmMessage(vm) };
    };
    // This call's changes to the VM carry its actor until its reply has reloaded the VM.
    const attribution = inventory.attribute(vm, cause.actor, cause.traceId);
    try {
      return await apply();
    } finally {
      attribution[Symbol.dispose]();
    }
  }

  private async vmMessage(vm: string) {
    const d = await this.deps.inventory.reloaded(vm);
    return { name: d.name, uuid: d.uuid, vcpus: d.vcpus, memoryBytes: BigInt(d.memoryBytes), autostart: d.autostart, persistent: d.persistent, owner: d.owner, description: d.description };
  }

  /** The changes in order, each with how it is tried live. */
  private changes(
    vm: string,
    inactive: string,
    current: DomainXml,
    running: boolean,
    liveMaxMemory: bigint,
    c: { vcpus: number | undefined; memory: bigint | undefined; detach: readonly string[]; removeMacs: readonly string[]; disks: readonly DiskDevice[]; nics: readonly NicDevice[] },
    opts: { signal?: AbortSignal },
  ): Change[] {
    const { libvirt } = this.deps;
    const off = 'at the next boot: the VM is not running';
    const out: Change[] = [];
    const liveIf = (fn: () => Promise<void>) => (running ? fn : undefined);
    if (c.vcpus !== undefined) out.push({ description: `vcpus ${current.vcpus} -> ${c.vcpus}`, live: liveIf(() => libvirt.setLiveVcpus(vm, c.vcpus ?? 1, opts)), notLive: off });
    if (c.memory !== undefined) {
      const fits = c.memory <= liveMaxMemory;
      out.push({
        description: `memory ${current.maxMemoryBytes} -> ${c.memory} bytes`,
        live: running && fits ? () => libvirt.setLiveMemory(vm, c.memory ?? 0n, opts) : undefined,
        notLive: running ? 'at the next boot: above the memory the VM booted with' : off,
      });
    }
    const inactiveDevice = (tag: 'disk' | 'interface', match: (node: Ordered) => boolean) => {
      const domain = parseOrdered(inactive).find((n) => tagOf(n) === 'domain');
      const devices = domain && child(domain, 'devices');
      const node = devices && childrenOf(devices).find((n) => tagOf(n) === tag && match(n));
      return node ? orderedBuilder.build([node]) : undefined;
    };
    // A PCI unplug (virtio-blk, a NIC) needs the guest's consent: virsh gives up waiting after 5 s and
    // still succeeds, the device staying in QEMU (its volume open) until the guest lets go. So a
    // detach is live only once the running VM's XML no longer has the device.
    const detach = (description: string, xml: string | undefined, stillThere: (live: DomainXml) => boolean): Change => ({
      description,
      live: xml && running ? () => libvirt.changeDevice(vm, 'detach', xml, { live: true, config: false }, opts) : undefined,
      notLive: off,
      pending: async () => (stillThere(parseDomainXml(await libvirt.dumpXml(vm, opts))) ? 'requested: the guest has not released it yet (gone when it does, at the next boot at the latest)' : undefined),
    });
    for (const dev of c.detach) {
      const xml = inactiveDevice('disk', (n) => attrOf(child(n, 'target'), 'dev') === dev);
      out.push(detach(`detach disk ${dev}`, xml, (live) => live.disks.some((d) => d.targetDev === dev)));
    }
    for (const mac of c.removeMacs) {
      const xml = inactiveDevice('interface', (n) => attrOf(child(n, 'mac'), 'address').toLowerCase() === mac);
      out.push(detach(`remove interface ${mac}`, xml, (live) => live.interfaces.some((n) => n.mac.toLowerCase() === mac)));
    }
    for (const disk of c.disks) {
      const label = disk.source.type === 'rbd' ? `${disk.source.pool}/${disk.source.image}` : disk.source.path;
      // SATA has no hotplug in QEMU.
      const hotplug = running && disk.bus !== 'sata';
      out.push({
        description: `attach disk ${disk.targetDev} (${label})`,
        live: hotplug ? () => libvirt.changeDevice(vm, 'attach', buildDiskXml(disk), { live: true, config: false }, opts) : undefined,
        notLive: running ? 'at the next boot: SATA disks cannot be hotplugged' : off,
      });
    }
    for (const nic of c.nics) {
      out.push({ description: `add interface ${nic.mac} on ${nic.type} ${nic.source}`, live: liveIf(() => libvirt.changeDevice(vm, 'attach', buildInterfaceXml(nic), { live: true, config: false }, opts)), notLive: off });
    }
    return out;
  }

  /** The inactive XML with the changes made: order and everything else kept as libvirt wrote it. */
  private edited(
    inactive: string,
    c: { vcpus: number | undefined; memory: bigint | undefined; detach: readonly string[]; removeMacs: readonly string[]; disks: readonly DiskDevice[]; nics: readonly NicDevice[]; createdVolumes: readonly VolumeKey[] },
  ): string {
    const doc = parseOrdered(inactive);
    const domain = doc.find((n) => tagOf(n) === 'domain');
    if (!domain) throw new RpcError('INTERNAL', 'the VM definition has no <domain>');
    const items = childrenOf(domain);
    const text = (value: string) => [{ '#text': value }];
    for (const [i, node] of items.entries()) {
      const tag = tagOf(node);
      if (tag === 'vcpu' && c.vcpus !== undefined) items[i] = { vcpu: text(String(c.vcpus)), ':@': { '@placement': attrOf(node, 'placement') || 'static' } };
      if ((tag === 'memory' || tag === 'currentMemory') && c.memory !== undefined) items[i] = { [tag]: text(c.memory.toString()), ':@': { '@unit': 'b' } };
    }
    if (c.memory !== undefined && !items.some((n) => tagOf(n) === 'currentMemory')) {
      const at = items.findIndex((n) => tagOf(n) === 'memory');
      items.splice(at + 1, 0, { currentMemory: text(c.memory.toString()), ':@': { '@unit': 'b' } });
    }
    const devices = items.find((n) => tagOf(n) === 'devices');
    if (!devices) throw new RpcError('INTERNAL', 'the VM definition has no <devices>');
    const list = childrenOf(devices);
    const kept = list.filter((n) => {
      if (tagOf(n) === 'disk') return !c.detach.includes(attrOf(child(n, 'target'), 'dev'));
      if (tagOf(n) === 'interface') return !c.removeMacs.includes(attrOf(child(n, 'mac'), 'address').toLowerCase());
      return true;
    });
    // New disks after the last disk, new interfaces after the last interface (libvirt sorts anyway).
    const insertAfter = (tag: string, nodes: Ordered[]) => {
      let at = -1;
      kept.forEach((n, i) => {
        if (tagOf(n) === tag) at = i;
      });
      kept.splice(at < 0 ? kept.length : at + 1, 0, ...nodes);
    };
    insertAfter('disk', c.disks.flatMap((d) => parseOrdered(buildDiskXml(d))));
    insertAfter('interface', c.nics.flatMap((n) => parseOrdered(buildInterfaceXml(n))));
    devices[tagOf(devices)] = kept;
    // A detached disk is no longer the VM's: DeleteVm must not remove it with the VM.
    const detachedPaths = new Set(parseDomainXml(inactive).disks.filter((d) => c.detach.includes(d.targetDev)).map((d) => d.sourcePath));
    if (detachedPaths.size > 0) this.forgetVolumes(items, detachedPaths);
    if (c.createdVolumes.length > 0) this.recordVolumes(items, c.createdVolumes);
    return orderedBuilder.build(doc);
  }

  /** Drops from the debvisor metadata the made-for-this-VM volumes whose disk path is in `paths`. */
  private forgetVolumes(items: Ordered[], paths: ReadonlySet<string>): void {
    const own = this.ownMetadata(items);
    if (!own) return;
    const prefix = tagOf(own).slice(0, -3);
    own[tagOf(own)] = childrenOf(own).filter((n) => {
      if (tagOf(n) !== `${prefix}:volume`) return true;
      const backend = attrOf(n, 'backend');
      if (backend !== 'lvm' && backend !== 'rbd') return true;
      const source = this.deps.provisioning.diskSource({ backend, pool: attrOf(n, 'pool'), name: attrOf(n, 'name') });
      return !paths.has(source.type === 'rbd' ? `${source.pool}/${source.image}` : source.path);
    });
  }

  /** The <debvisor:vm> element of <metadata>, whatever its prefix. */
  private ownMetadata(items: Ordered[]): Ordered | undefined {
    const metadata = items.find((n) => tagOf(n) === 'metadata');
    return metadata
      ? childrenOf(metadata).find((n) => {
          const tag = tagOf(n);
          const prefix = tag.endsWith(':vm') ? tag.slice(0, -3) : '';
          return prefix !== '' && attrOf(n, `xmlns:${prefix}`) === DEBVISOR_XMLNS;
        })
      : undefined;
  }

  /** Adds volumes to the debvisor metadata (DeleteVm with delete_volumes removes them with the VM). */
  private recordVolumes(items: Ordered[], volumes: readonly VolumeKey[]): void {
    const entries = (prefix: string) => volumes.map((v) => ({ [`${prefix}:volume`]: [], ':@': { '@backend': v.backend, '@pool': v.pool, '@name': v.name } }));
    let metadata = items.find((n) => tagOf(n) === 'metadata');
    if (!metadata) {
      metadata = { metadata: [] };
      items.splice(Math.max(0, items.findIndex((n) => tagOf(n) === 'memory')), 0, metadata);
    }
    const own = childrenOf(metadata).find((n) => {
      const tag = tagOf(n);
      const prefix = tag.endsWith(':vm') ? tag.slice(0, -3) : '';
      return prefix !== '' && attrOf(n, `xmlns:${prefix}`) === DEBVISOR_XMLNS;
    });
    if (own) {
      const prefix = tagOf(own).slice(0, -3);
      childrenOf(own).push(...entries(prefix));
    } else {
      childrenOf(metadata).push({ 'debvisor:vm': entries('debvisor'), ':@': { '@xmlns:debvisor': DEBVISOR_XMLNS } });
    }
  }
}
