// debvisorctl volume list, snapshot list|prune over StorageService (RBD and LVM).
import type { Command } from 'commander';
import { ListSnapshotsResponseSchema, ListVolumesResponseSchema, StorageService } from '../gen/debvisor/v1/storage_pb.js';
import { StorageBackend } from '../gen/debvisor/v1/storage_types_pb.js';
import { bytes, count, enumName, enumParser, when, withService } from './command.js';
import { waitAndExit, waitSeconds, WAIT_HELP } from './operation.js';
import { printJson, printTable } from './output.js';

const backend = enumParser(StorageBackend);

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

  const snapshot = program.command('snapshot').description('snapshots of storage volumes');
  snapshot
    .command('list')
    .description('list the snapshots of a volume, oldest first')
    .argument('<backend>', 'rbd or lvm', backend)
    .argument('<pool>', 'RBD pool or LVM volume group')
    .argument('<volume>', 'volume name')
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
  snapshot
    .command('prune')
    .description('delete the snapshots a retention policy does not keep, wait, and print what was kept and deleted')
    .argument('<backend>', 'rbd or lvm', backend)
    .argument('<pool>', 'RBD pool or LVM volume group')
    .argument('<volume>', 'volume name')
    .option('--keep-last <n>', 'keep the newest N snapshots', count, 0)
    .option('--keep-daily <days>', 'keep the newest snapshot of each of the last D days', count, 0)
    .option('--keep-weekly <weeks>', 'keep the newest snapshot of each of the last W weeks', count, 0)
    .option('--dry-run', 'only show what would be deleted')
    .addHelpText('after', WAIT_HELP)
    .action(
      withStorage(async (call, backendValue: StorageBackend, pool: string, name: string, opts: PruneFlags) => {
        // An all-zero policy keeps nothing: refuse it rather than delete every snapshot by accident.
        if (opts.keepLast + opts.keepDaily + opts.keepWeekly === 0) throw new Error('give at least one of --keep-last, --keep-daily, --keep-weekly');
        const response = await call.client.pruneSnapshots(
          {
            dataset: { backend: backendValue, pool, name },
            retention: { keepLast: opts.keepLast, keepDailyDays: opts.keepDaily, keepWeeklyWeeks: opts.keepWeekly },
            dryRun: opts.dryRun ?? false,
          },
          call.options,
        );
        if (!response.operation) throw new Error(`the daemon returned no prune operation for ${pool}/${name}`);
        await waitAndExit(call.connection, call.flags, response.operation, waitSeconds(call));
      }),
    );
}
