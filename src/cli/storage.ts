// debvisorctl volume list|create|resize|delete|provision, snapshot list|create|delete|prune and
// template snapshot|clone over StorageService (RBD and LVM; templates are RBD).
import { status as Status } from '@grpc/grpc-js';
import { InvalidArgumentError, type Command } from 'commander';
import bytesIec from 'bytes-iec';
import {
  CreateRbdTemplateSnapshotResponseSchema,
  CreateSnapshotResponseSchema,
  CreateVolumeResponseSchema,
  DeleteSnapshotResponseSchema,
  DeleteVolumeResponseSchema,
  ListSnapshotsResponseSchema,
  ListVolumesResponseSchema,
  ResizeVolumeResponseSchema,
  StorageService,
  type Snapshot,
  type Volume,
} from '../gen/debvisor/v1/storage_pb.js';
import type { RpcStatus } from '../gen/debvisor/v1/common_pb.js';
import { StorageBackend } from '../gen/debvisor/v1/storage_types_pb.js';
import { bytes, count, enumName, enumParser, when, withService } from './command.js';
import { waitAndExit, WAIT_HELP } from './operation.js';
import { UsageError } from './exit-codes.js';
import { printJson, printRecord, printTable } from './output.js';

const backend = enumParser(StorageBackend);

/** A per-item status as `CODE: message`; undefined for OK (or none). */
function problemOf(status: RpcStatus | undefined): string | undefined {
  const code = status?.code ?? 0;
  return code === 0 ? undefined : `${Status[code] ?? code}: ${status?.message ?? ''}`;
}

export const SIZE_HELP = 'a size such as 512MiB, 10GiB or 1.5TiB (KB, MB, GB: powers of 1000)';

/** A commander parser for a size: "10GiB" → 10737418240n; whole bytes, more than zero. */
export function size(value: string): bigint {
  const parsed = bytesIec.parse(value);
  if (parsed === null || !Number.isSafeInteger(parsed) || parsed <= 0) throw new InvalidArgumentError(`expected ${SIZE_HELP}`);
  return BigInt(parsed);
}

/** A commander parser for repeated `--tag key=value`. */
export function tag(value: string, previous: Record<string, string> = {}): Record<string, string> {
  const at = value.indexOf('=');
  if (at <= 0) throw new InvalidArgumentError('expected key=value');
  return { ...previous, [value.slice(0, at)]: value.slice(at + 1) };
}

/** The `<backend> <pool> <volume>` arguments every per-volume command takes. */
function volumeArguments(command: Command): Command {
  return command.argument('<backend>', 'rbd or lvm', backend).argument('<pool>', 'RBD pool or LVM volume group').argument('<volume>', 'volume name');
}

function printVolume(each: Volume | undefined): void {
  if (!each) throw new Error('the daemon returned no volume');
  printRecord({
    backend: enumName(StorageBackend, each.ref?.backend ?? StorageBackend.UNSPECIFIED),
    pool: each.ref?.pool ?? '',
    name: each.ref?.name ?? '',
    size: bytes(each.sizeBytes),
    owner: each.owner,
    tags: Object.entries(each.tags)
      .map(([key, value]) => `${key}=${value}`)
      .join(', '),
    created: when(each.createTime),
  });
}

function printSnapshot(each: Snapshot | undefined): void {
  if (!each) throw new Error('the daemon returned no snapshot');
  printRecord({
    volume: `${each.dataset?.pool ?? ''}/${each.dataset?.name ?? ''}`,
    name: each.name,
    label: each.label || '-',
    created: when(each.createTime),
    size: bytes(each.sizeBytes),
    protected: String(each.protected),
  });
}

interface PruneFlags {
  keepLast: number;
  keepDaily: number;
  keepWeekly: number;
  dryRun?: boolean;
}

export function registerStorageCommands(program: Command): void {
  const withStorage = withService(program, StorageService);

  const volume = program.command('volume').description('storage volumes (RBD images, LVM logical volumes)');
  volume
    .command('list')
    .description('list volumes of the configured pools')
    .option('--backend <backend>', 'only this backend: rbd or lvm', backend)
    .option('--pool <pool>', 'only this pool (RBD pool or LVM volume group)')
    .option('--name <glob>', 'only volumes whose name matches this glob ("*", "?")')
    .action(
      withStorage(async ({ client, options, flags }, opts: { backend?: StorageBackend; pool?: string; name?: string }) => {
        const response = await client.listVolumes(
          { pageSize: 1000, backend: opts.backend ?? StorageBackend.UNSPECIFIED, pool: opts.pool ?? '', nameGlob: opts.name ?? '' },
          options,
        );
        if (flags.output === 'json') {
          printJson(ListVolumesResponseSchema, response);
          return;
        }
        printTable(
          ['backend', 'pool', 'name', 'size', 'used', 'owner', 'created'],
          response.volumes.map((each) => [
            enumName(StorageBackend, each.ref?.backend ?? StorageBackend.UNSPECIFIED),
            each.ref?.pool ?? '',
            each.ref?.name ?? '',
            bytes(each.sizeBytes),
            bytes(each.usedBytes),
            each.owner,
            when(each.createTime),
          ]),
        );
      }),
    );

  volumeArguments(volume.command('create'))
    .description('create a volume (an RBD image or an LVM logical volume)')
    .requiredOption('--size <size>', SIZE_HELP, size)
    .option('--tag <key=value>', 'a free-form tag (repeatable)', tag)
    .action(
      withStorage(async ({ client, options, flags }, backendValue: StorageBackend, pool: string, name: string, opts: { size: bigint; tag?: Record<string, string> }) => {
        const response = await client.createVolume({ volume: { backend: backendValue, pool, name }, sizeBytes: opts.size, tags: opts.tag ?? {} }, options);
        if (flags.output === 'json') printJson(CreateVolumeResponseSchema, response);
        else printVolume(response.volume);
      }),
    );
  volumeArguments(volume.command('resize'))
    .description('grow a volume (shrinking destroys data beyond the new size and needs --allow-shrink)')
    .requiredOption('--size <size>', `the new size: ${SIZE_HELP}`, size)
    .option('--allow-shrink', 'permit a size smaller than the current one')
    .action(
      withStorage(async ({ client, options, flags }, backendValue: StorageBackend, pool: string, name: string, opts: { size: bigint; allowShrink?: boolean }) => {
        const response = await client.resizeVolume({ volume: { backend: backendValue, pool, name }, newSizeBytes: opts.size, allowShrink: opts.allowShrink ?? false }, options);
        if (flags.output === 'json') printJson(ResizeVolumeResponseSchema, response);
        else printVolume(response.volume);
      }),
    );
  volumeArguments(volume.command('delete'))
    .description('delete a volume; refused while it has snapshots, clones, or a VM on this host uses it as a disk')
    .option('--delete-snapshots', 'delete its snapshots first (never those with clones)')
    .option('--force', 'delete it even if a VM on this host uses it as a disk, or libvirt cannot tell')
    .action(
      withStorage(async ({ client, options, flags }, backendValue: StorageBackend, pool: string, name: string, opts: { deleteSnapshots?: boolean; force?: boolean }) => {
        const response = await client.deleteVolume(
          { volume: { backend: backendValue, pool, name }, deleteSnapshots: opts.deleteSnapshots ?? false, force: opts.force ?? false },
          options,
        );
        if (flags.output === 'json') printJson(DeleteVolumeResponseSchema, response);
        else printRecord({ deleted: `${pool}/${name}`, 'deleted snapshots': response.deletedSnapshots.join(', ') || '-' });
      }),
    );

  volumeArguments(volume.command('provision'))
    .description('create a volume and write an image into it (qcow2 or raw, detected), wait, and print the operation')
    .option('--image <path>', "the image, relative to the daemon's images directory")
    .option('--from-image <image>', 'a library image instead: its name or sha256:<hex> (debvisorctl image list)')
    .requiredOption('--size <size>', `at least the image's virtual size: ${SIZE_HELP}`, size)
    .option('--tag <key=value>', 'a free-form tag (repeatable)', tag)
    .addHelpText('after', WAIT_HELP)
    .action(
      withStorage(async (call, backendValue: StorageBackend, pool: string, name: string, opts: { image?: string; fromImage?: string; size: bigint; tag?: Record<string, string> }) => {
        if ((opts.image === undefined) === (opts.fromImage === undefined)) throw new Error('give exactly one of --image and --from-image');
        const response = await call.client.provisionVolume(
          { volume: { backend: backendValue, pool, name }, sizeBytes: opts.size, imagePath: opts.image ?? '', image: opts.fromImage ?? '', tags: opts.tag ?? {} },
          call.options,
        );
        await waitAndExit(call, response.operation, `provisioning operation for ${pool}/${name}`);
      }),
    );

  const snapshot = program.command('snapshot').description('snapshots of storage volumes');
  volumeArguments(snapshot.command('create'))
    .argument('<snapshot>', 'name of the new snapshot')
    .description('snapshot a volume')
    .option('--label <text>', 'a free-form label')
    .action(
      withStorage(async ({ client, options, flags }, backendValue: StorageBackend, pool: string, name: string, snapshotName: string, opts: { label?: string }) => {
        const response = await client.createSnapshot({ dataset: { backend: backendValue, pool, name }, snapshotName, label: opts.label ?? '' }, options);
        if (flags.output === 'json') printJson(CreateSnapshotResponseSchema, response);
        else printSnapshot(response.snapshot);
      }),
    );
  volumeArguments(snapshot.command('delete'))
    .argument('<snapshot...>', 'snapshots to delete')
    .description('delete snapshots of a volume, each on its own (exit 1 if any of them was not deleted)')
    .action(
      withStorage(async ({ client, options, flags }, backendValue: StorageBackend, pool: string, name: string, snapshotNames: string[]) => {
        const response = await client.deleteSnapshot({ dataset: { backend: backendValue, pool, name }, snapshotNames }, options);
        const problems = response.results.map((each) => problemOf(each.status));
        if (flags.output === 'json') printJson(DeleteSnapshotResponseSchema, response);
        else printTable(['snapshot', 'result'], response.results.map((each, i) => [each.snapshotName, problems[i] ?? 'deleted']));
        if (problems.some((problem) => problem !== undefined)) process.exitCode = 1;
      }),
    );
  volumeArguments(snapshot.command('list'))
    .description('list the snapshots of a volume, oldest first')
    .action(
      withStorage(async ({ client, options, flags }, backendValue: StorageBackend, pool: string, name: string) => {
        const response = await client.listSnapshots({ dataset: { backend: backendValue, pool, name }, pageSize: 1000 }, options);
        if (flags.output === 'json') {
          printJson(ListSnapshotsResponseSchema, response);
          return;
        }
        printTable(
          ['name', 'label', 'created', 'size', 'protected'],
          response.snapshots.map((each) => [each.name, each.label, when(each.createTime), bytes(each.sizeBytes), String(each.protected)]),
        );
      }),
    );
  volumeArguments(snapshot.command('prune'))
    .description('delete the snapshots a retention policy does not keep, wait, and print what was kept and deleted')
    .option('--keep-last <n>', 'keep the newest N snapshots', count, 0)
    .option('--keep-daily <days>', 'keep the newest snapshot of each of the last D days', count, 0)
    .option('--keep-weekly <weeks>', 'keep the newest snapshot of each of the last W weeks', count, 0)
    .option('--dry-run', 'only show what would be deleted')
    .addHelpText('after', WAIT_HELP)
    .action(
      withStorage(async (call, backendValue: StorageBackend, pool: string, name: string, opts: PruneFlags) => {
        // An all-zero policy keeps nothing: refuse it rather than delete every snapshot by accident.
        if (opts.keepLast + opts.keepDaily + opts.keepWeekly === 0) throw new UsageError('give at least one of --keep-last, --keep-daily, --keep-weekly');
        const response = await call.client.pruneSnapshots(
          {
            dataset: { backend: backendValue, pool, name },
            retention: { keepLast: opts.keepLast, keepDailyDays: opts.keepDaily, keepWeeklyWeeks: opts.keepWeekly },
            dryRun: opts.dryRun ?? false,
          },
          call.options,
        );
        await waitAndExit(call, response.operation, `prune operation for ${pool}/${name}`);
      }),
    );

  const template = program.command('template').description('RBD templates: protected snapshots that volumes are cloned from');
  template
    .command('snapshot')
    .argument('<pool>', 'RBD pool of the template image')
    .argument('<image>', 'template image')
    .argument('<snapshot>', 'name of the new, protected snapshot')
    .description('snapshot an RBD image and protect the snapshot, so volumes can be cloned from it')
    .action(
      withStorage(async ({ client, options, flags }, pool: string, image: string, snapshotName: string) => {
        const response = await client.createRbdTemplateSnapshot({ pool, image, snapshot: snapshotName }, options);
        if (flags.output === 'json') printJson(CreateRbdTemplateSnapshotResponseSchema, response);
        else printSnapshot(response.snapshot);
      }),
    );
  template
    .command('clone')
    .argument('<pool>', 'RBD pool of the template image')
    .argument('<image>', 'template image')
    .argument('<snapshot>', "the template's protected snapshot")
    .argument('<target-pool>', 'RBD pool of the new volume')
    .argument('<target-image>', 'name of the new volume')
    .description('clone a volume from a template snapshot, wait, and print the operation')
    .option('--flatten', 'copy all data into the clone, so it no longer depends on the template')
    .addHelpText('after', WAIT_HELP)
    .action(
      withStorage(async (call, pool: string, image: string, snapshotName: string, targetPool: string, targetImage: string, opts: { flatten?: boolean }) => {
        const response = await call.client.cloneRbdFromTemplate(
          { templatePool: pool, templateImage: image, templateSnapshot: snapshotName, targetPool, targetImage, flatten: opts.flatten ?? false },
          call.options,
        );
        await waitAndExit(call, response.operation, `clone operation for ${targetPool}/${targetImage}`);
      }),
    );
}
