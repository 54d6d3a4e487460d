// debvisorctl vm create|update|delete over VmService.CreateVm, UpdateVm and DeleteVm, registered
// from src/cli/vm.ts. `--dry-run` prints the daemon's plan (volumes, quotas, permissions,
// warnings, changes, and the domain XML) and changes nothing.
import { readFile } from 'node:fs/promises';
import { InvalidArgumentError, type Command } from 'commander';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { CreateVmResponseSchema, CpuMode, DiskBus, DiskCache, Firmware, NicModel, UpdateVmResponseSchema, VmService, type VmDiskSpecSchema, type VmInterfaceSpecSchema } from '../gen/debvisor/v1/vm_pb.js';
import type { VmPlan } from '../gen/debvisor/v1/vm_types_pb.js';
import { StorageBackend, type VolumeRefSchema } from '../gen/debvisor/v1/storage_types_pb.js';
import { bytes, collect, count, enumName, enumParser, withService } from './command.js';
import { waitAndExit, WAIT_HELP } from './operation.js';
import { printJson, printRecord, printTable } from './output.js';
import { size, SIZE_HELP, tag } from './storage.js';

type DiskInit = MessageInitShape<typeof VmDiskSpecSchema>;
type VolumeRefInit = MessageInitShape<typeof VolumeRefSchema>;
type NicInit = MessageInitShape<typeof VmInterfaceSpecSchema>;

const backendOf = enumParser(StorageBackend);
const busOf = enumParser(DiskBus);
const cacheOf = enumParser(DiskCache);
const modelOf = enumParser(NicModel);

/** "a=1,b=2,flag" → { a: "1", b: "2", flag: "" }; each key once. */
function pairs(value: string, allowed: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of value.split(',')) {
    const at = part.indexOf('=');
    const key = (at < 0 ? part : part.slice(0, at)).trim();
    if (!allowed.includes(key)) throw new InvalidArgumentError(`unknown key "${key}" (expected ${allowed.join(', ')})`);
    if (out.has(key)) throw new InvalidArgumentError(`"${key}" given twice`);
    out.set(key, at < 0 ? '' : part.slice(at + 1).trim());
  }
  return out;
}

const DISK_HELP =
  'a disk (repeatable, in guest order): pool=P,size=S (a new empty volume) | image=NAME|sha256:HEX|./PATH,pool=P,size=S (provisioned from a library image, or a file under the images directory when it holds a /) | ' +
  'volume=POOL/NAME (an existing volume) | template=POOL/IMAGE@SNAP[,pool=P][,flatten] (an RBD clone); ' +
  'also backend=lvm|rbd (default lvm; rbd for templates), name=N, bus=virtio|scsi|sata, cache=none|writeback|..., boot=N';

/** A commander parser for repeated --disk. */
export function diskOption(value: string, previous: DiskInit[] = []): DiskInit[] {
  const p = pairs(value, ['pool', 'size', 'image', 'volume', 'template', 'backend', 'name', 'bus', 'cache', 'boot', 'flatten']);
  const backend = p.has('backend') ? backendOf(p.get('backend') ?? '') : p.has('template') ? StorageBackend.RBD : StorageBackend.LVM;
  const common = {
    ...(p.has('bus') ? { bus: busOf(p.get('bus') ?? '') } : {}),
    ...(p.has('cache') ? { cache: cacheOf(p.get('cache') ?? '') } : {}),
    ...(p.has('boot') ? { bootOrder: count(p.get('boot') ?? '') } : {}),
  };
  const sizeBytes = () => {
    const given = p.get('size');
    if (given === undefined) throw new InvalidArgumentError(`size= is required (${SIZE_HELP})`);
    return size(given);
  };
  let disk: DiskInit;
  if (p.has('volume')) {
    const [pool = '', name = ''] = (p.get('volume') ?? '').split('/');
    disk = { source: { case: 'volume', value: { backend, pool, name } }, ...common };
  } else if (p.has('template')) {
    const match = /^([^/]+)\/([^@]+)@(.+)$/.exec(p.get('template') ?? '');
    if (!match) throw new InvalidArgumentError('template= must be POOL/IMAGE@SNAPSHOT');
    disk = {
      source: { case: 'templateClone', value: { templatePool: match[1] ?? '', templateImage: match[2] ?? '', templateSnapshot: match[3] ?? '', pool: p.get('pool') ?? '', name: p.get('name') ?? '', flatten: p.has('flatten') } },
      ...common,
    };
  } else if (p.has('image')) {
    // A library image (ImageService) by name or digest; a value with a '/' is a file under the images directory.
    const image = p.get('image') ?? '';
    const file = image.includes('/') ? image.replace(/^\.\//, '') : '';
    const library = file === '' ? image : '';
    disk = { source: { case: 'image', value: { backend, pool: p.get('pool') ?? '', sizeBytes: sizeBytes(), name: p.get('name') ?? '', imagePath: file, image: library } }, ...common };
  } else {
    disk = { source: { case: 'newVolume', value: { backend, pool: p.get('pool') ?? '', sizeBytes: sizeBytes(), name: p.get('name') ?? '' } }, ...common };
  }
  return [...previous, disk];
}

const NIC_HELP = 'a network interface (repeatable): network=NAME or bridge=NAME, and model=virtio|e1000|rtl8139, mac=52:54:00:..., vlan=N';

/** A commander parser for repeated --nic. */
export function nicOption(value: string, previous: NicInit[] = []): NicInit[] {
  const p = pairs(value, ['network', 'bridge', 'model', 'mac', 'vlan']);
  return [
    ...previous,
    {
      network: p.get('network') ?? '',
      bridge: p.get('bridge') ?? '',
      ...(p.has('model') ? { model: modelOf(p.get('model') ?? '') } : {}),
      mac: p.get('mac') ?? '',
      ...(p.has('vlan') ? { vlan: count(p.get('vlan') ?? '') } : {}),
    },
  ];
}

/** A commander parser for repeated `backend:pool/name`. */
function volumeRef(value: string, previous: VolumeRefInit[] = []): VolumeRefInit[] {
  const match = /^([a-z]+):([^/]+)\/(.+)$/.exec(value);
  if (!match) throw new InvalidArgumentError('expected backend:pool/name, e.g. lvm:vg0/data');
  return [...previous, { backend: backendOf(match[1] ?? ''), pool: match[2] ?? '', name: match[3] ?? '' }];
}

function cpuOf(value: string): { cpuMode: CpuMode; cpuModel: string } {
  if (value === 'host-passthrough') return { cpuMode: CpuMode.HOST_PASSTHROUGH, cpuModel: '' };
  if (value === 'host-model') return { cpuMode: CpuMode.HOST_MODEL, cpuModel: '' };
  return { cpuMode: CpuMode.CUSTOM, cpuModel: value };
}

/** SSH public keys from files (one or more lines each; comments and blank lines skipped). */
async function sshKeys(files: readonly string[]): Promise<string[]> {
  const keys: string[] = [];
  for (const file of files) {
    for (const line of (await readFile(file, 'utf8')).split('\n')) if (line.trim() !== '' && !line.trim().startsWith('#')) keys.push(line.trim());
  }
  return keys;
}

/** The plan as an operator reads it: tables, warnings, then the XML. */
export function printPlan(plan: VmPlan | undefined): void {
  if (!plan) return;
  printRecord({ vm: plan.vmName, allowed: plan.allowed ? 'yes' : 'no (see the refused rows)' });
  if (plan.changes.length > 0) {
    process.stdout.write('\nchanges:\n');
    printTable(['change', 'applies', 'why'], plan.changes.map((c) => [c.description, c.live ? 'now (live)' : 'next boot', c.reason]));
  }
  process.stdout.write('\nvolumes to create:\n');
  printTable(['backend', 'pool', 'name', 'size', 'source', 'disk'], plan.volumes.map((v) => [enumName(StorageBackend, v.volume?.backend ?? 0), v.volume?.pool ?? '', v.volume?.name ?? '', bytes(v.sizeBytes), v.source, v.targetDev]));
  process.stdout.write('\nquotas:\n');
  printTable(['dimension', 'used', 'needed', 'limit', 'verdict'], plan.quotas.map((q) => [q.dimension, String(q.used), String(q.needed), q.unlimited ? 'unlimited' : String(q.limit), q.allowed ? 'ok' : 'EXCEEDED']));
  process.stdout.write('\npermissions:\n');
  printTable(['permission', 'on', 'verdict'], plan.permissions.map((p) => [p.permission, `${p.resourceKind} ${p.resource}`, p.allowed ? 'ok' : `REFUSED: ${p.reason}`]));
  if (plan.warnings.length > 0) {
    process.stdout.write('\nwarnings:\n');
    for (const warning of plan.warnings) printRecord({ '-': warning });
  }
  process.stdout.write('\ndomain XML:\n');
  printRecord({ '': plan.domainXml });
}

interface CreateOptions {
  name: string;
  vcpus: number;
  memory: bigint;
  disk?: DiskInit[];
  nic?: NicInit[];
  cloudInit?: string;
  metaData?: string;
  networkConfig?: string;
  sshKey?: string[];
  hostname?: string;
  description?: string;
  tag?: Record<string, string>;
  firmware?: Firmware;
  machine?: string;
  cpu?: string;
  autostart?: boolean;
  start?: boolean;
  dryRun?: boolean;
  requestId?: string;
}

interface UpdateOptions {
  vcpus?: number;
  memory?: bigint;
  attachDisk?: DiskInit[];
  detachDisk?: string[];
  addNic?: NicInit[];
  removeNic?: string[];
  etag?: string;
  dryRun?: boolean;
}

export function registerVmProvisioningCommands(program: Command, vm: Command): void {
  const withVms = withService(program, VmService);

  vm.command('create')
    .description('create a VM from a spec (volumes, cloud-init seed, definition); --dry-run shows the plan only')
    .requiredOption('--name <name>', 'VM name')
    .requiredOption('--vcpus <n>', 'virtual CPUs', count)
    .requiredOption('--memory <size>', `memory: ${SIZE_HELP}`, size)
    .option('--disk <spec>', DISK_HELP, diskOption)
    .option('--nic <spec>', NIC_HELP, nicOption)
    .option('--cloud-init <file>', 'cloud-init user-data file (e.g. a #cloud-config YAML)')
    .option('--meta-data <file>', 'cloud-init meta-data file')
    .option('--network-config <file>', 'cloud-init network-config file')
    .option('--ssh-key <file>', 'SSH public key file for the default user (repeatable)', collect)
    .option('--hostname <name>', 'cloud-init local-hostname (default: from the VM name)')
    .option('--description <text>', 'free-form description')
    .option('--tag <key=value>', 'a free-form tag (repeatable)', tag)
    .option('--firmware <bios|uefi>', 'firmware (default bios)', enumParser(Firmware))
    .option('--machine <type>', "QEMU machine type (default: the node's)")
    .option('--cpu <mode>', "host-passthrough, host-model or a CPU model name (default: the node's)")
    .option('--autostart', 'start the VM when the host boots')
    .option('--start', 'start the VM once it is defined')
    .option('--dry-run', 'print the plan (with the domain XML) and change nothing')
    .option('--request-id <id>', 'idempotency key: a retry with the same id does not create twice')
    .addHelpText('after', WAIT_HELP)
    .action(
      withVms(async (call, opts: CreateOptions) => {
        const text = async (file: string | undefined) => (file === undefined ? new Uint8Array() : new Uint8Array(await readFile(file)));
        const cloudInit =
          opts.cloudInit !== undefined || opts.metaData !== undefined || opts.networkConfig !== undefined || opts.sshKey !== undefined || opts.hostname !== undefined
            ? { userData: await text(opts.cloudInit), metaData: await text(opts.metaData), networkConfig: await text(opts.networkConfig), sshAuthorizedKeys: await sshKeys(opts.sshKey ?? []), hostname: opts.hostname ?? '' }
            : undefined;
        const response = await call.client.createVm(
          {
            spec: {
              name: opts.name,
              vcpus: opts.vcpus,
              memoryBytes: opts.memory,
              disks: opts.disk ?? [],
              interfaces: opts.nic ?? [],
              description: opts.description ?? '',
              tags: opts.tag ?? {},
              ...(opts.firmware !== undefined ? { firmware: opts.firmware } : {}),
              machineType: opts.machine ?? '',
              ...(opts.cpu !== undefined ? cpuOf(opts.cpu) : {}),
              ...(cloudInit ? { cloudInit } : {}),
              autostart: opts.autostart ?? false,
              startAfterCreate: opts.start ?? false,
            },
            validateOnly: opts.dryRun ?? false,
            requestId: opts.requestId ?? '',
          },
          call.options,
        );
        if (call.flags.output === 'json' && opts.dryRun) {
          printJson(CreateVmResponseSchema, response);
          return;
        }
        if (opts.dryRun) {
          printPlan(response.plan);
          return;
        }
        await waitAndExit(call, response.operation, `create operation for ${opts.name}`);
      }),
    );

  vm.command('update')
    .description("change a VM's vCPUs, memory, disks and NICs: live where possible, else at the next boot")
    .argument('<name>', 'VM name')
    .option('--vcpus <n>', 'new vCPU count', count)
    .option('--memory <size>', `new memory: ${SIZE_HELP}`, size)
    .option('--attach-disk <spec>', 'a disk to attach (repeatable): pool=P,size=S or volume=POOL/NAME, as vm create --disk', diskOption)
    .option('--detach-disk <dev>', 'guest device of a disk to detach, e.g. vdb (repeatable)', collect)
    .option('--add-nic <spec>', `an interface to add (repeatable): ${NIC_HELP}`, nicOption)
    .option('--remove-nic <mac>', 'MAC of an interface to remove (repeatable)', collect)
    .option('--etag <etag>', 'the etag the changes were made against (default: read it now with GetVm)')
    .option('--dry-run', 'print the plan and change nothing')
    .action(
      withVms(async (call, name: string, opts: UpdateOptions) => {
        const etag = opts.etag ?? (await call.client.getVm({ vmName: name }, call.options)).etag;
        const response = await call.client.updateVm(
          {
            vmName: name,
            vcpus: opts.vcpus ?? 0,
            memoryBytes: opts.memory ?? 0n,
            attachDisks: opts.attachDisk ?? [],
            detachDisks: opts.detachDisk ?? [],
            addInterfaces: opts.addNic ?? [],
            removeInterfaces: opts.removeNic ?? [],
            etag,
            validateOnly: opts.dryRun ?? false,
          },
          call.options,
        );
        if (call.flags.output === 'json') {
          printJson(UpdateVmResponseSchema, response);
          return;
        }
        if (opts.dryRun) {
          printPlan(response.plan);
          return;
        }
        printTable(['change', 'applies', 'why'], response.plan?.changes.map((c) => [c.description, c.live ? 'now (live)' : 'next boot', c.reason]) ?? []);
        printRecord({ etag: response.etag });
      }),
    );

  vm.command('delete')
    .description('undefine a VM (with its snapshot metadata and NVRAM); --delete-volumes also removes the volumes vm create made for it')
    .argument('<name>', 'VM name')
    .option('--delete-volumes', 'also delete the volumes created for this VM (volumes attached from outside stay)')
    .option('--force', 'power a running VM off first')
    .option('--also-delete <backend:pool/name>', 'also delete this disk of the VM, attached from outside (repeatable), e.g. lvm:vg0/data', volumeRef)
    .addHelpText('after', WAIT_HELP)
    .action(
      withVms(async (call, name: string, opts: { deleteVolumes?: boolean; force?: boolean; alsoDelete?: VolumeRefInit[] }) => {
        const response = await call.client.deleteVm(
          { vmName: name, deleteVolumes: opts.deleteVolumes ?? false, force: opts.force ?? false, alsoDelete: opts.alsoDelete ?? [] },
          call.options,
        );
        await waitAndExit(call, response.operation, `delete operation for ${name}`);
      }),
    );
}
