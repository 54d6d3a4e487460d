// CreateVm's spec, validated field by field into plain data: every problem is INVALID_ARGUMENT
// naming its field path (`spec.disks[2].size_bytes`). Pure: what needs the host (pools, networks,
// images, the node's CPUs) is checked by the planner (src/vms/provisioning.ts).
import { randomBytes, randomUUID } from 'node:crypto';
import { MAX_CLOUD_INIT_DOCUMENT_BYTES, validateCloudInit, type CloudInitInput } from './cloud-init.js';
import { CpuMode, DiskBus, DiskCache, Firmware, NicModel, type CloudInitSpec, type VmDiskSpec, type VmInterfaceSpec, type VmSpec } from '../gen/debvisor/v1/vm_pb.js';
import { StorageBackend } from '../gen/debvisor/v1/storage_types_pb.js';
import { validateImageName, validatePoolName, validateSnapshotName, validateText, validateVmName } from '../backends/validate.js';
import type { BackendKind } from '../backends/storage-backend.js';
import { InvalidArgumentError } from '../rpc/errors.js';
import { MAX_VOLUME_BYTES, validatePool, validateTags, validateVolumeName } from '../storage/names.js';
import type { DiskBusName, DiskCacheName, NicModelName } from './domain-xml.js';

export const MAX_DISKS = 16;
export const MAX_NICS = 16;
export const MIN_MEMORY_BYTES = 64n * 1024n * 1024n;
const MIB = 1024n * 1024n;
/** Far beyond any host today; keeps the number sane before it reaches libvirt. */
export const MAX_MEMORY_BYTES = 16n * 1024n ** 4n;
const MAX_BOOT_ORDER = 64;

export type DiskOrigin =
  | { readonly kind: 'existing'; readonly backend: BackendKind; readonly pool: string; readonly name: string }
  | { readonly kind: 'empty'; readonly backend: BackendKind; readonly pool: string; readonly name: string; readonly sizeBytes: bigint }
  | { readonly kind: 'image'; readonly backend: BackendKind; readonly pool: string; readonly name: string; readonly sizeBytes: bigint; readonly imagePath: string; readonly libraryImage: string }
  | {
      readonly kind: 'clone';
      readonly backend: 'rbd';
      readonly pool: string;
      readonly name: string;
      readonly template: { readonly pool: string; readonly image: string; readonly snapshot: string };
      readonly flatten: boolean;
    };

export interface DiskPlanInput {
  /** Field path of the disk, e.g. `spec.disks[2]`. */
  readonly field: string;
  readonly origin: DiskOrigin;
  readonly bus: DiskBusName;
  readonly cache: DiskCacheName;
  readonly bootOrder: number;
}

export interface NicPlanInput {
  readonly field: string;
  readonly type: 'network' | 'bridge';
  readonly source: string;
  readonly model: NicModelName;
  readonly mac: string;
  readonly vlan: number;
}

export interface ValidSpec {
  readonly name: string;
  readonly description: string;
  readonly tags: Readonly<Record<string, string>>;
  readonly vcpus: number;
  readonly memoryBytes: bigint;
  readonly firmware: 'bios' | 'uefi';
  /** Empty: the node's default. */
  readonly machineType: string;
  /** undefined: the node's default mode. */
  readonly cpu: { readonly mode: 'host-passthrough' | 'host-model' } | { readonly mode: 'custom'; readonly model: string } | undefined;
  readonly disks: readonly DiskPlanInput[];
  readonly nics: readonly NicPlanInput[];
  /** The new domain's UUID (also cloud-init's default instance-id). */
  readonly uuid: string;
  readonly cloudInit: CloudInitInput | undefined;
  readonly autostart: boolean;
  readonly start: boolean;
}

const BACKENDS: Partial<Record<StorageBackend, BackendKind>> = { [StorageBackend.LVM]: 'lvm', [StorageBackend.RBD]: 'rbd' };
const BUSES: Record<DiskBus, DiskBusName> = { [DiskBus.UNSPECIFIED]: 'virtio', [DiskBus.VIRTIO]: 'virtio', [DiskBus.SCSI]: 'scsi', [DiskBus.SATA]: 'sata' };
const CACHES: Record<DiskCache, DiskCacheName> = {
  [DiskCache.UNSPECIFIED]: 'none',
  [DiskCache.NONE]: 'none',
  [DiskCache.WRITEBACK]: 'writeback',
  [DiskCache.WRITETHROUGH]: 'writethrough',
  [DiskCache.DIRECTSYNC]: 'directsync',
  [DiskCache.UNSAFE]: 'unsafe',
};
const MODELS: Record<NicModel, NicModelName> = { [NicModel.UNSPECIFIED]: 'virtio', [NicModel.VIRTIO]: 'virtio', [NicModel.E1000]: 'e1000', [NicModel.RTL8139]: 'rtl8139' };

function enumValue<E extends number, T>(table: Record<E, T>, value: E, field: string): T {
  const mapped = (table as Partial<Record<number, T>>)[value];
  if (mapped === undefined) throw new InvalidArgumentError(field, `unknown value ${value}`);
  return mapped;
}

function backendOf(value: StorageBackend, field: string): BackendKind {
  const kind = BACKENDS[value];
  if (!kind) throw new InvalidArgumentError(field, 'required: STORAGE_BACKEND_LVM or STORAGE_BACKEND_RBD');
  return kind;
}

function sizeOf(bytes: bigint, field: string): bigint {
  if (bytes <= 0n) throw new InvalidArgumentError(field, 'required: the size in bytes');
  if (bytes > MAX_VOLUME_BYTES) throw new InvalidArgumentError(field, `at most ${MAX_VOLUME_BYTES} bytes`);
  return bytes;
}

/** A volume name, or the default `<vm>-disk<index>`. */
function volumeNameOf(backend: BackendKind, given: string, vm: string, index: number, field: string): string {
  return validateVolumeName(backend, given === '' ? `${vm}-disk${index}` : given, field);
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** A unicast MAC in lower case; INVALID_ARGUMENT for a malformed, multicast or all-zero one. */
export function validateMac(value: string, field: string): string {
  const mac = value.toLowerCase();
  if (!MAC.test(mac)) throw new InvalidArgumentError(field, 'must be six hex octets separated by colons, e.g. 52:54:00:12:34:56');
  if (parseInt(mac.slice(0, 2), 16) & 1) throw new InvalidArgumentError(field, 'must be a unicast address (the first octet is multicast)');
  if (mac === '00:00:00:00:00:00') throw new InvalidArgumentError(field, 'must not be all zeros');
  return mac;
}

/** A MAC with libvirt's locally administered prefix 52:54:00. */
export function generateMac(): string {
  return ['52', '54', '00', ...[...randomBytes(3)].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

export function validateDisk(disk: VmDiskSpec, vm: string, index: number, field: string): DiskPlanInput {
  const source = disk.source;
  let origin: DiskOrigin;
  switch (source.case) {
    case 'volume': {
      const backend = backendOf(source.value.backend, `${field}.volume.backend`);
      origin = { kind: 'existing', backend, pool: validatePool(backend, source.value.pool, `${field}.volume.pool`), name: validateVolumeName(backend, source.value.name, `${field}.volume.name`) };
      break;
    }
    case 'newVolume': {
      const v = source.value;
      const backend = backendOf(v.backend, `${field}.new_volume.backend`);
      origin = {
        kind: 'empty',
        backend,
        pool: validatePool(backend, v.pool, `${field}.new_volume.pool`),
        name: volumeNameOf(backend, v.name, vm, index, `${field}.new_volume.name`),
        sizeBytes: sizeOf(v.sizeBytes, `${field}.new_volume.size_bytes`),
      };
      break;
    }
    case 'image': {
      const v = source.value;
      const backend = backendOf(v.backend, `${field}.image.backend`);
      origin = {
        kind: 'image',
        backend,
        pool: validatePool(backend, v.pool, `${field}.image.pool`),
        name: volumeNameOf(backend, v.name, vm, index, `${field}.image.name`),
        sizeBytes: sizeOf(v.sizeBytes, `${field}.image.size_bytes`),
        imagePath: validateText(v.imagePath, `${field}.image.image_path`, 4096),
        libraryImage: v.image,
      };
      if (origin.imagePath === '' && v.image === '') throw new InvalidArgumentError(`${field}.image.image_path`, 'required: a path under the images directory, or image (a library image)');
      if (origin.imagePath !== '' && v.image !== '') throw new InvalidArgumentError(`${field}.image.image`, 'give either image or image_path, not both');
      break;
    }
    case 'templateClone': {
      const v = source.value;
      const templatePool = validatePoolName(v.templatePool, `${field}.template_clone.template_pool`);
      origin = {
        kind: 'clone',
        backend: 'rbd',
        pool: v.pool === '' ? templatePool : validatePoolName(v.pool, `${field}.template_clone.pool`),
        name: volumeNameOf('rbd', v.name, vm, index, `${field}.template_clone.name`),
        template: {
          pool: templatePool,
          image: validateImageName(v.templateImage, `${field}.template_clone.template_image`),
          snapshot: validateSnapshotName(v.templateSnapshot, `${field}.template_clone.template_snapshot`),
        },
        flatten: v.flatten,
      };
      break;
    }
    default:
      throw new InvalidArgumentError(field, 'required: one of volume, new_volume, image, template_clone');
  }
  if (disk.bootOrder > MAX_BOOT_ORDER) throw new InvalidArgumentError(`${field}.boot_order`, `at most ${MAX_BOOT_ORDER}`);
  return { field, origin, bus: enumValue(BUSES, disk.bus, `${field}.bus`), cache: enumValue(CACHES, disk.cache, `${field}.cache`), bootOrder: disk.bootOrder };
}

/** Network and bridge names as libvirt and the kernel allow them (IFNAMSIZ for a bridge). */
const NETWORK_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const BRIDGE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,14}$/;

export function validateInterface(nic: VmInterfaceSpec, field: string): NicPlanInput {
  if ((nic.network === '') === (nic.bridge === '')) throw new InvalidArgumentError(field, 'exactly one of network and bridge is required');
  const type = nic.network !== '' ? 'network' : 'bridge';
  const source = type === 'network' ? nic.network : nic.bridge;
  if (!(type === 'network' ? NETWORK_NAME : BRIDGE_NAME).test(source)) {
    throw new InvalidArgumentError(`${field}.${type}`, type === 'network' ? 'letters, digits, . _ -; at most 64' : 'an interface name: letters, digits, . _ -; at most 15');
  }
  if (nic.vlan !== 0 && (nic.vlan < 1 || nic.vlan > 4094)) throw new InvalidArgumentError(`${field}.vlan`, 'must be 1..4094 (0 = untagged)');
  return { field, type, source, model: enumValue(MODELS, nic.model, `${field}.model`), mac: nic.mac === '' ? generateMac() : validateMac(nic.mac, `${field}.mac`), vlan: nic.vlan };
}

/** The hostname cloud-init gets by default: the VM name as an RFC 1123 label. */
export function defaultHostname(vm: string): string {
  const label = vm.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 63);
  return label === '' || /^[0-9]+$/.test(label) ? `vm-${label}`.replace(/-$/, '') : label;
}

function validateCloudInitSpec(spec: CloudInitSpec, vm: string, uuid: string, field: string): CloudInitInput {
  const text = (bytes: Uint8Array, name: string): string | undefined => {
    if (bytes.length === 0) return undefined;
    // Bounded before it is decoded (cloud-init.ts checks the same limit on the text).
    if (bytes.length > MAX_CLOUD_INIT_DOCUMENT_BYTES) throw new InvalidArgumentError(`${field}.${name}`, `must be at most ${MAX_CLOUD_INIT_DOCUMENT_BYTES} bytes`);
    try {
      return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
    } catch {
      throw new InvalidArgumentError(`${field}.${name}`, 'must be valid UTF-8');
    }
  };
  const input: CloudInitInput = {
    instanceId: spec.instanceId === '' ? uuid : spec.instanceId,
    hostname: spec.hostname === '' ? defaultHostname(vm) : spec.hostname,
    userData: text(spec.userData, 'user_data'),
    metaData: text(spec.metaData, 'meta_data'),
    networkConfig: text(spec.networkConfig, 'network_config'),
    sshAuthorizedKeys: [...spec.sshAuthorizedKeys],
  };
  validateCloudInit(input, field);
  return input;
}

/** Memory in bytes: at least 64 MiB, whole MiB. */
export function validateMemory(bytes: bigint, field: string): bigint {
  if (bytes < MIN_MEMORY_BYTES) throw new InvalidArgumentError(field, `at least 64 MiB (${MIN_MEMORY_BYTES} bytes)`);
  if (bytes % MIB !== 0n) throw new InvalidArgumentError(field, 'must be a multiple of 1 MiB (1048576 bytes)');
  if (bytes > MAX_MEMORY_BYTES) throw new InvalidArgumentError(field, `at most ${MAX_MEMORY_BYTES} bytes`);
  return bytes;
}

/** vCPUs: 1..maxVcpus (the host's logical CPUs). */
export function validateVcpus(vcpus: number, maxVcpus: number, field: string): number {
  if (vcpus < 1) throw new InvalidArgumentError(field, 'at least 1');
  if (maxVcpus > 0 && vcpus > maxVcpus) throw new InvalidArgumentError(field, `at most ${maxVcpus}, this host's logical CPUs`);
  return vcpus;
}

const MACHINE_TYPE = /^[A-Za-z0-9._-]{1,64}$/;
const CPU_MODEL = /^[A-Za-z0-9._-]{1,64}$/;

/** The spec as plain, validated data; `maxVcpus` is the host's count of logical CPUs. */
export function validateSpec(spec: VmSpec | undefined, maxVcpus: number): ValidSpec {
  if (!spec) throw new InvalidArgumentError('spec', 'required');
  const name = validateVmName(spec.name, 'spec.name');
  if (spec.disks.length > MAX_DISKS) throw new InvalidArgumentError('spec.disks', `at most ${MAX_DISKS} disks`);
  if (spec.interfaces.length > MAX_NICS) throw new InvalidArgumentError('spec.interfaces', `at most ${MAX_NICS} network interfaces`);
  let cpu: ValidSpec['cpu'];
  switch (spec.cpuMode) {
    case CpuMode.UNSPECIFIED:
      cpu = undefined;
      break;
    case CpuMode.HOST_PASSTHROUGH:
      cpu = { mode: 'host-passthrough' };
      break;
    case CpuMode.HOST_MODEL:
      cpu = { mode: 'host-model' };
      break;
    case CpuMode.CUSTOM:
      if (!CPU_MODEL.test(spec.cpuModel)) throw new InvalidArgumentError('spec.cpu_model', 'required with CPU_MODE_CUSTOM: a model name such as Skylake-Server');
      cpu = { mode: 'custom', model: spec.cpuModel };
      break;
    default:
      throw new InvalidArgumentError('spec.cpu_mode', `unknown value ${String(spec.cpuMode)}`);
  }
  if (spec.cpuMode !== CpuMode.CUSTOM && spec.cpuModel !== '') throw new InvalidArgumentError('spec.cpu_model', 'only with CPU_MODE_CUSTOM');
  if (spec.machineType !== '' && !MACHINE_TYPE.test(spec.machineType)) throw new InvalidArgumentError('spec.machine_type', 'a machine type such as q35 or pc-q35-8.2');
  if (!(spec.firmware in Firmware)) throw new InvalidArgumentError('spec.firmware', `unknown value ${String(spec.firmware)}`);
  const disks = spec.disks.map((disk, i) => validateDisk(disk, name, i, `spec.disks[${i}]`));
  const seen = new Map<string, string>();
  const boots = new Map<number, string>();
  for (const disk of disks) {
    const key = `${disk.origin.backend}:${disk.origin.pool}/${disk.origin.name}`;
    const other = seen.get(key);
    if (other !== undefined) throw new InvalidArgumentError(disk.field, `names the same volume as ${other}`);
    seen.set(key, disk.field);
    if (disk.bootOrder > 0) {
      const sameBoot = boots.get(disk.bootOrder);
      if (sameBoot !== undefined) throw new InvalidArgumentError(`${disk.field}.boot_order`, `${disk.bootOrder} is also ${sameBoot}'s`);
      boots.set(disk.bootOrder, disk.field);
    }
  }
  const nics = spec.interfaces.map((nic, i) => validateInterface(nic, `spec.interfaces[${i}]`));
  const uuid = randomUUID();
  const macs = new Map<string, string>();
  for (const nic of nics) {
    const other = macs.get(nic.mac);
    if (other !== undefined) throw new InvalidArgumentError(`${nic.field}.mac`, `${nic.mac} is also ${other}'s`);
    macs.set(nic.mac, nic.field);
  }
  return {
    name,
    description: validateText(spec.description, 'spec.description', 1024),
    tags: validateTags(spec.tags, 'spec.tags'),
    vcpus: validateVcpus(spec.vcpus, maxVcpus, 'spec.vcpus'),
    memoryBytes: validateMemory(spec.memoryBytes, 'spec.memory_bytes'),
    firmware: spec.firmware === Firmware.UEFI ? 'uefi' : 'bios',
    machineType: spec.machineType,
    cpu,
    disks,
    nics,
    uuid,
    cloudInit: spec.cloudInit ? validateCloudInitSpec(spec.cloudInit, name, uuid, 'spec.cloud_init') : undefined,
    autostart: spec.autostart,
    start: spec.startAfterCreate,
  };
}
