// The domain XML CreateVm defines and UpdateVm attaches, written from typed, validated fields by
// fast-xml-parser's builder: every text and attribute value is escaped by the builder, so no
// caller text reaches libvirt as markup. Ownership and what was made for the VM go into
// <metadata> under the debvisor namespace (parsed back by src/backends/libvirt/xml.ts).
import { createHash } from 'node:crypto';
import XMLBuilder from 'fast-xml-builder';
import { DEBVISOR_XMLNS, type CreatedVolume } from '../backends/libvirt/xml.js';
import type { CephMonitor } from '../config/ceph-monitor.js';

export type DiskBusName = 'virtio' | 'scsi' | 'sata';
export type DiskCacheName = 'none' | 'writeback' | 'writethrough' | 'directsync' | 'unsafe';
export type NicModelName = 'virtio' | 'e1000' | 'rtl8139';

/** Where a disk's data is, as libvirt addresses it. */
export type DiskSource =
  | { readonly type: 'block'; readonly path: string }
  | { readonly type: 'file'; readonly path: string }
  | {
      readonly type: 'rbd';
      readonly pool: string;
      readonly image: string;
      readonly auth?: { readonly username: string; readonly secretUuid: string };
      /** <host> elements: the monitors QEMU connects to; absent: those of QEMU's default ceph.conf. */
      readonly monitors?: readonly CephMonitor[];
    };

export interface DiskDevice {
  readonly source: DiskSource;
  readonly device: 'disk' | 'cdrom';
  readonly bus: DiskBusName;
  readonly cache: DiskCacheName;
  readonly targetDev: string;
  /** 0: not in the boot order. */
  readonly bootOrder: number;
  readonly readOnly: boolean;
}

export interface NicDevice {
  readonly type: 'network' | 'bridge';
  readonly source: string;
  readonly model: NicModelName;
  readonly mac: string;
  /** 0: untagged. */
  readonly vlan: number;
}

export interface DomainDefinition {
  readonly domainType: 'kvm' | 'qemu' | 'test';
  readonly name: string;
  readonly uuid: string;
  readonly description: string;
  readonly owner: string;
  readonly tags: Readonly<Record<string, string>>;
  readonly createdVolumes: readonly CreatedVolume[];
  readonly seedFiles: readonly string[];
  readonly vcpus: number;
  readonly memoryBytes: bigint;
  readonly firmware: 'bios' | 'uefi';
  readonly machineType: string;
  readonly cpu: { readonly mode: 'host-passthrough' | 'host-model' } | { readonly mode: 'custom'; readonly model: string };
  readonly disks: readonly DiskDevice[];
  readonly nics: readonly NicDevice[];
}

const builder = new XMLBuilder({ ignoreAttributes: false, attributeNamePrefix: '@', format: true, indentBy: '  ', suppressEmptyNode: true, processEntities: true });

type Element = Record<string, unknown>;

function diskSourceElement(source: DiskSource): { type: string; element: Element } {
  switch (source.type) {
    case 'block':
      return { type: 'block', element: { '@dev': source.path } };
    case 'file':
      return { type: 'file', element: { '@file': source.path } };
    case 'rbd':
      return {
        type: 'network',
        element: {
          '@protocol': 'rbd',
          '@name': `${source.pool}/${source.image}`,
          ...(source.monitors && source.monitors.length > 0 ? { host: source.monitors.map((m) => ({ '@name': m.host, '@port': String(m.port) })) } : {}),
        },
      };
  }
}

function diskElement(disk: DiskDevice): Element {
  const { type, element } = diskSourceElement(disk.source);
  return {
    '@type': type,
    '@device': disk.device,
    driver: { '@name': 'qemu', '@type': 'raw', ...(disk.device === 'disk' ? { '@cache': disk.cache } : {}) },
    ...(disk.source.type === 'rbd' && disk.source.auth ? { auth: { '@username': disk.source.auth.username, secret: { '@type': 'ceph', '@uuid': disk.source.auth.secretUuid } } } : {}),
    source: element,
    target: { '@dev': disk.targetDev, '@bus': disk.bus },
    ...(disk.bootOrder > 0 ? { boot: { '@order': String(disk.bootOrder) } } : {}),
    // An empty element: suppressEmptyNode writes <readonly/>.
    ...(disk.readOnly ? { readonly: '' } : {}),
  };
}

function nicElement(nic: NicDevice): Element {
  return {
    '@type': nic.type,
    mac: { '@address': nic.mac },
    source: nic.type === 'network' ? { '@network': nic.source } : { '@bridge': nic.source },
    ...(nic.vlan > 0 ? { vlan: { tag: { '@id': String(nic.vlan) } } } : {}),
    model: { '@type': nic.model },
  };
}

/** The whole domain XML of a definition. */
export function buildDomainXml(def: DomainDefinition): string {
  const memory = { '@unit': 'b', '#text': def.memoryBytes.toString() };
  const metadata: Element = {
    '@xmlns:debvisor': DEBVISOR_XMLNS,
    'debvisor:owner': def.owner,
    ...(Object.keys(def.tags).length > 0 ? { 'debvisor:tag': Object.entries(def.tags).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([key, value]) => ({ '@key': key, '#text': value })) } : {}),
    ...(def.createdVolumes.length > 0 ? { 'debvisor:volume': def.createdVolumes.map((v) => ({ '@backend': v.backend, '@pool': v.pool, '@name': v.name })) } : {}),
    ...(def.seedFiles.length > 0 ? { 'debvisor:seed': def.seedFiles.map((path) => ({ '@path': path })) } : {}),
  };
  const sata = def.disks.some((d) => d.bus === 'sata');
  const scsi = def.disks.some((d) => d.bus === 'scsi');
  const domain: Element = {
    '@type': def.domainType,
    name: def.name,
    uuid: def.uuid,
    ...(def.description !== '' ? { description: def.description } : {}),
    metadata: { 'debvisor:vm': metadata },
    memory,
    currentMemory: memory,
    vcpu: { '@placement': 'static', '#text': String(def.vcpus) },
    os: {
      ...(def.firmware === 'uefi' ? { '@firmware': 'efi' } : {}),
      type: { '@arch': 'x86_64', '@machine': def.machineType, '#text': 'hvm' },
    },
    features: { acpi: '', apic: '' },
    cpu: def.cpu.mode === 'custom' ? { '@mode': 'custom', '@match': 'exact', model: { '@fallback': 'forbid', '#text': def.cpu.model } } : { '@mode': def.cpu.mode },
    clock: { '@offset': 'utc' },
    on_poweroff: 'destroy',
    on_reboot: 'restart',
    on_crash: 'destroy',
    devices: {
      ...(def.disks.length > 0 ? { disk: def.disks.map(diskElement) } : {}),
      ...(scsi ? { controller: [{ '@type': 'scsi', '@index': '0', '@model': 'virtio-scsi' }, ...(sata ? [{ '@type': 'sata', '@index': '0' }] : [])] } : sata ? { controller: { '@type': 'sata', '@index': '0' } } : {}),
      ...(def.nics.length > 0 ? { interface: def.nics.map(nicElement) } : {}),
      ...(def.domainType === 'test' ? {} : { console: { '@type': 'pty' }, serial: { '@type': 'pty' } }),
    },
  };
  return builder.build({ domain });
}

/** One <disk> element (virsh attach-device). */
export function buildDiskXml(disk: DiskDevice): string {
  return builder.build({ disk: diskElement(disk) });
}

/** One <interface> element (virsh attach-device). */
export function buildInterfaceXml(nic: NicDevice): string {
  return builder.build({ interface: nicElement(nic) });
}

/** UpdateVm's etag: a hash of the inactive definition as libvirt gives it. */
export function definitionEtag(inactiveXml: string): string {
  return createHash('sha256').update(inactiveXml.trim()).digest('hex').slice(0, 32);
}

/** Guest device names: vda, vdb, ... for virtio; sda, sdb, ... shared by SCSI and SATA (and the seed CD-ROM). */
export function targetDevName(bus: DiskBusName, index: number): string {
  const prefix = bus === 'virtio' ? 'vd' : 'sd';
  let suffix = '';
  let n = index;
  do {
    suffix = String.fromCharCode(97 + (n % 26)) + suffix;
    n = Math.floor(n / 26) - 1;
  } while (n >= 0);
  return prefix + suffix;
}
