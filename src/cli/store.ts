// debvisorctl store backup: a consistent copy of the daemon's store, taken online, saved
// as a checked backup file (src/store/backup-file.ts) that `debvisor-rpcd restore` reads.
import type { Command } from 'commander';
import { timestampDate } from '@bufbuild/protobuf/wkt';
import { AccessService, type BackupSummary } from '../gen/debvisor/v1/access_pb.js';
import { saveBackup, type SnapshotSummary } from '../store/backup-file.js';
import { withService } from './command.js';
import { printRecord } from './output.js';

/** A backup can take a while on a large etcd: without --timeout, this long. */
const DEFAULT_BACKUP_TIMEOUT_MS = 3_600_000;
const MIB = 1024 * 1024;

export function registerStoreCommands(program: Command): void {
  const withAccess = withService(program, AccessService);
  const store = program.command('store').description("the daemon's own state: roles, bindings, API keys, quotas, operations");
  store
    .command('backup')
    .description('save a consistent copy of the store, taken while the daemon serves (needs store:backup)')
    .requiredOption('--out <file>', 'backup file to write (mode 0600); must not exist')
    .addHelpText('after', '\nRestore offline with: debvisor-rpcd restore --from <file> --data-dir <dir> (see docs/runbooks/backup-and-restore.md).')
    .action(
      withAccess(async ({ client, options, flags, timeoutGiven }, opts: { out: string }) => {
        const stream = client.backupStore({}, { ...options, timeoutMs: timeoutGiven ? options.timeoutMs : DEFAULT_BACKUP_TIMEOUT_MS });
        let summary: BackupSummary | undefined;
        let received = 0;
        let reported = 0;
        const progress = process.stderr.isTTY && flags.output === 'text';
        async function* chunks(): AsyncIterable<Uint8Array> {
          for await (const response of stream) {
            if (response.part.case === 'chunk') {
              received += response.part.value.length;
              if (progress && received - reported >= MIB) {
                reported = received;
                process.stderr.write(`\r${(received / MIB).toFixed(0)} MiB received`);
              }
              yield response.part.value;
            } else if (response.part.case === 'summary') summary = response.part.value;
          }
          if (progress && reported > 0) process.stderr.write('\n');
        }
        const describe = (): SnapshotSummary => {
          if (!summary) throw new Error('the daemon ended the backup without its summary: nothing was written');
          if (summary.backend !== 'embedded' && summary.backend !== 'etcd') throw new Error(`the daemon sent a backup of an unknown store backend "${summary.backend}"`);
          return {
            backend: summary.backend,
            takenBy: summary.takenBy,
            created: summary.createTime && timestampDate(summary.createTime),
            sent: { bytes: Number(summary.sizeBytes), sha256: summary.sha256 },
          };
        };
        const header = await saveBackup(opts.out, { chunks: chunks(), summary: describe });
        if (flags.output === 'json') {
          process.stdout.write(`${JSON.stringify({ file: opts.out, ...header })}\n`);
          return;
        }
        printRecord({ file: opts.out, backend: header.backend, bytes: String(header.bytes), sha256: header.sha256, 'taken by': header.taken_by, created: header.created });
      }),
    );
}
