// Parsers for libvirt's XML (virsh dumpxml, snapshot-dumpxml) with a real XML parser.
// Pure functions: tested against XML captured from a real libvirtd (test/backends/fixtures/libvirt/).
import { XMLParser } from 'fast-xml-parser';

/** libvirt's virDomainState, numbered as in libvirt and in debvisor.v1.VmState. */
export type DomainState = 'nostate' | 'running' | 'blocked' | 'paused' | 'shutdown' | 'shutoff' | 'crashed' | 'pmsuspended';

export interface DomainDisk {
  /** Guest device, e.g. "vda". */
  readonly targetDev: string;
  /** File path, block device, "pool/image" for RBD/volumes, or the network source name. */
  readonly sourcePath: string;
  /** Driver format ("raw", "qcow2"); empty when not set. */
  readonly format: string;
  /** "disk", "cdrom", "floppy" or "lun". */
  readonly device: string;
  /** Where the data lives: <disk type=...> ("file", "block", "network", "volume", ...). */
  readonly sourceType: string;
  /** Network protocol of a network disk ("rbd", "nbd", ...); empty otherwise. */
  readonly protocol: string;
}

export interface DomainInterface {
  /** "network", "bridge", "direct", "user", ... */
  readonly type: string;
  /** Bridge, network or host device name; empty when none. */
  readonly source: string;
  readonly mac: string;
  /** Device model, e.g. "virtio"; empty when not set. */
  readonly model: string;
}

/** The debvisor metadata namespace of a domain's <metadata> (CreateVm writes it). */
export const DEBVISOR_XMLNS = 'https://debvisor.dev/xmlns/vm/1';

/** A volume CreateVm made for a VM (DeleteVm with delete_volumes removes only these). */
export interface CreatedVolume {
  readonly backend: 'lvm' | 'rbd';
  readonly pool: string;
  readonly name: string;
}

/** What DebVisor recorded in a domain's <metadata>: empty for a VM defined outside DebVisor. */
export interface DebvisorMetadata {
  /** Principal that created the VM (the user when a panel acted for one); empty when unknown. */
  readonly owner: string;
  readonly tags: Readonly<Record<string, string>>;
  readonly createdVolumes: readonly CreatedVolume[];
  /** cloud-init seed files made for the VM (removed with it). */
  readonly seedFiles: readonly string[];
}

export const NO_METADATA: DebvisorMetadata = Object.freeze({ owner: '', tags: Object.freeze({}), createdVolumes: Object.freeze([]), seedFiles: Object.freeze([]) });

/** What the domain XML says (state, autostart and persistence come from other calls). */
export interface DomainXml {
  readonly name: string;
  readonly uuid: string;
  /** Hypervisor type from <domain type=...>: "kvm", "qemu", "test". */
  readonly type: string;
  /** Current vCPUs (the `current` attribute when set, else the maximum). */
  readonly vcpus: number;
  /** Current memory (<currentMemory>, else <memory>) in bytes. */
  readonly memoryBytes: number;
  /** Maximum memory (<memory>) in bytes. */
  readonly maxMemoryBytes: number;
  readonly disks: readonly DomainDisk[];
  readonly interfaces: readonly DomainInterface[];
  /** <description>; empty when none. */
  readonly description: string;
  readonly metadata: DebvisorMetadata;
}

export interface SnapshotXml {
  readonly name: string;
  readonly description: string;
  /** From <creationTime> (seconds since the epoch). */
  readonly createTime: Date;
  /** Domain state when the snapshot was taken ("disk-snapshot" maps to shutoff). */
  readonly state: DomainState;
  /** Parent snapshot name; empty for a root. */
  readonly parent: string;
}

/** The XML was not what libvirt produces: a bug or an incompatible libvirt, never a client error. */
export class LibvirtParseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LibvirtParseError';
  }
}

const ARRAYS = new Set(['domain.devices.disk', 'domain.devices.interface']);

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  // Keep every value a string: a VM named "0123" must not become the number 123.
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: true,
  // No DOCTYPE entity expansion; the five XML entities libvirt escapes with are still decoded.
  processEntities: true,
  htmlEntities: false,
  isArray: (_name, jpath) => ARRAYS.has(String(jpath)) || ARRAYS.has(String(jpath).replace(/^domainsnapshot\./, '')),
});

type Node = Record<string, unknown>;

function obj(value: unknown): Node {
  return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Node) : {};
}

function list(value: unknown): Node[] {
  if (value === undefined) return [];
  return (Array.isArray(value) ? value : [value]).map(obj);
}

/** Text of an element that may carry attributes (then the text is under "#text"). */
function text(value: unknown): string {
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  const t = obj(value)['#text'];
  return typeof t === 'string' || typeof t === 'number' ? String(t) : '';
}

function attr(node: unknown, name: string): string {
  const v = obj(node)[`@${name}`];
  return typeof v === 'string' ? v : '';
}

// libvirt's scaled integers (formatdomain "Memory Allocation"): "b"/"bytes", k/KiB..., KB=1000...
const UNITS: Record<string, number> = {
  b: 1, bytes: 1,
  k: 1024, kib: 1024, kb: 1000,
  m: 1024 ** 2, mib: 1024 ** 2, mb: 1000 ** 2,
  g: 1024 ** 3, gib: 1024 ** 3, gb: 1000 ** 3,
  t: 1024 ** 4, tib: 1024 ** 4, tb: 1000 ** 4,
  p: 1024 ** 5, pib: 1024 ** 5, pb: 1000 ** 5,
};

function memoryBytes(node: unknown, what: string): number | undefined {
  if (node === undefined) return undefined;
  const raw = text(node);
  if (!/^[0-9]+$/.test(raw)) throw new LibvirtParseError(`${what}: not an integer`);
  // libvirt's default unit for <memory> is KiB.
  const unit = (attr(node, 'unit') || 'KiB').toLowerCase();
  const scale = UNITS[unit];
  if (scale === undefined) throw new LibvirtParseError(`${what}: unknown unit ${JSON.stringify(unit)}`);
  return Number(raw) * scale;
}

function parse(xml: string, root: string): Node {
  let doc: unknown;
  try {
    doc = parser.parse(xml);
  } catch (err) {
    throw new LibvirtParseError(`invalid XML: ${err instanceof Error ? err.message : String(err)}`);
  }
  const top = obj(doc)[root];
  if (top === undefined) throw new LibvirtParseError(`no <${root}> element`);
  return obj(top);
}

function diskSource(disk: Node): string {
  const source = obj(disk.source);
  switch (attr(disk, 'type')) {
    case 'file':
      return attr(source, 'file');
    case 'block':
      return attr(source, 'dev');
    case 'dir':
      return attr(source, 'dir');
    case 'volume': {
      const pool = attr(source, 'pool');
      const volume = attr(source, 'volume');
      return pool && volume ? `${pool}/${volume}` : volume;
    }
    case 'network':
      // RBD: name="pool/image"; other protocols (nbd, iscsi) put the export/target here too.
      return attr(source, 'name');
    default:
      return attr(source, 'file') || attr(source, 'dev') || attr(source, 'name');
  }
}

function interfaceSource(iface: Node): string {
  const source = obj(iface.source);
  return attr(source, 'bridge') || attr(source, 'network') || attr(source, 'dev') || attr(source, 'name');
}

/** The <debvisor:vm> element, whatever prefix it was written with (libvirt keeps the namespace, not necessarily the prefix). */
function debvisorMetadata(metadata: Node): DebvisorMetadata {
  for (const [key, value] of Object.entries(metadata)) {
    const colon = key.indexOf(':');
    if (colon < 0 || key.slice(colon + 1) !== 'vm') continue;
    const prefix = key.slice(0, colon);
    const vm = obj(Array.isArray(value) ? value[0] : value);
    if (attr(vm, `xmlns:${prefix}`) !== DEBVISOR_XMLNS) continue;
    const child = (name: string) => vm[`${prefix}:${name}`];
    const tags: Record<string, string> = {};
    for (const tag of list(child('tag'))) tags[attr(tag, 'key')] = text(tag);
    return {
      owner: text(child('owner')),
      tags,
      createdVolumes: list(child('volume')).flatMap((v) => {
        const backend = attr(v, 'backend');
        return backend === 'lvm' || backend === 'rbd' ? [{ backend, pool: attr(v, 'pool'), name: attr(v, 'name') }] : [];
      }),
      seedFiles: list(child('seed')).map((seed) => attr(seed, 'path')).filter((path) => path !== ''),
    };
  }
  return NO_METADATA;
}

/** What `virsh net-dumpxml` says of a libvirt network (whether it is active comes from net-list). */
export interface NetworkXml {
  readonly name: string;
  readonly uuid: string;
  /** <bridge name>; empty when the network has none (macvtap, hostdev). */
  readonly bridge: string;
  /** <forward mode>: "nat" for a <forward> without mode, "isolated" without <forward>. */
  readonly forwardMode: string;
  readonly addresses: readonly {
    readonly address: string;
    readonly prefixLength: number;
    readonly dhcpRanges: readonly { readonly start: string; readonly end: string }[];
  }[];
}

/** A dotted IPv4 netmask ("255.255.255.0") as a prefix length (24). */
function netmaskPrefix(netmask: string): number {
  const octets = netmask.split('.').map(Number);
  if (octets.length !== 4 || octets.some((o) => !Number.isInteger(o) || o < 0 || o > 255)) throw new LibvirtParseError('ip: bad netmask');
  const bits = octets.map((o) => o.toString(2).padStart(8, '0')).join('');
  if (!/^1*0*$/.test(bits)) throw new LibvirtParseError('ip: netmask is not contiguous');
  return bits.indexOf('0') < 0 ? 32 : bits.indexOf('0');
}

/** Parses `virsh net-dumpxml` output (formatnetwork.html). */
export function parseNetworkXml(xml: string): NetworkXml {
  const network = parse(xml, 'network');
  const name = text(network.name);
  if (!name) throw new LibvirtParseError('network without <name>');
  const forward = network.forward;
  return {
    name,
    uuid: text(network.uuid),
    bridge: attr(network.bridge, 'name'),
    // libvirt: no <forward> is an isolated network; <forward/> without a mode is NAT.
    forwardMode: forward === undefined ? 'isolated' : attr(forward, 'mode') || 'nat',
    addresses: list(network.ip).map((ip) => {
      const prefix = attr(ip, 'prefix');
      const netmask = attr(ip, 'netmask');
      const prefixLength = prefix ? Number(prefix) : netmask ? netmaskPrefix(netmask) : 0;
      if (!Number.isInteger(prefixLength) || prefixLength < 0 || prefixLength > 128) throw new LibvirtParseError('ip: bad prefix');
      return {
        address: attr(ip, 'address'),
        prefixLength,
        dhcpRanges: list(obj(ip.dhcp).range).map((range) => ({ start: attr(range, 'start'), end: attr(range, 'end') })),
      };
    }),
  };
}

/** Parses `virsh dumpxml` output. */
export function parseDomainXml(xml: string): DomainXml {
  const domain = parse(xml, 'domain');
  return domainFromNode(domain);
}

function domainFromNode(domain: Node): DomainXml {
  const name = text(domain.name);
  if (!name) throw new LibvirtParseError('domain without <name>');
  const vcpuNode = domain.vcpu;
  const vcpus = Number(attr(vcpuNode, 'current') || text(vcpuNode) || '1');
  if (!Number.isInteger(vcpus) || vcpus < 0) throw new LibvirtParseError('vcpu: not an integer');
  const max = memoryBytes(domain.memory, 'memory') ?? 0;
  const current = memoryBytes(domain.currentMemory, 'currentMemory') ?? max;
  const devices = obj(domain.devices);
  return {
    name,
    uuid: text(domain.uuid),
    type: attr(domain, 'type'),
    vcpus,
    memoryBytes: current,
    maxMemoryBytes: max,
    disks: list(devices.disk).map((disk) => ({
      targetDev: attr(disk.target, 'dev'),
      sourcePath: diskSource(disk),
      format: attr(disk.driver, 'type'),
      device: attr(disk, 'device') || 'disk',
      sourceType: attr(disk, 'type'),
      protocol: attr(disk.source, 'protocol'),
    })),
    interfaces: list(devices.interface).map((iface) => ({
      type: attr(iface, 'type'),
      source: interfaceSource(iface),
      mac: attr(iface.mac, 'address'),
      model: attr(iface.model, 'type'),
    })),
    description: text(domain.description),
    metadata: debvisorMetadata(obj(domain.metadata)),
  };
}

const STATE_NAMES: Record<string, DomainState> = {
  nostate: 'nostate',
  running: 'running',
  blocked: 'blocked',
  paused: 'paused',
  shutdown: 'shutdown',
  shutoff: 'shutoff',
  crashed: 'crashed',
  pmsuspended: 'pmsuspended',
  // A disk-only snapshot records no memory state: reverting to it leaves the VM off.
  'disk-snapshot': 'shutoff',
};

/** Parses `virsh snapshot-dumpxml` output. */
export function parseSnapshotXml(xml: string): SnapshotXml {
  const snap = parse(xml, 'domainsnapshot');
  const name = text(snap.name);
  if (!name) throw new LibvirtParseError('snapshot without <name>');
  const seconds = Number(text(snap.creationTime) || '0');
  if (!Number.isFinite(seconds)) throw new LibvirtParseError('creationTime: not a number');
  return {
    name,
    description: text(snap.description),
    createTime: new Date(seconds * 1000),
    state: STATE_NAMES[text(snap.state)] ?? 'nostate',
    parent: text(obj(snap.parent).name),
  };
}
