// `debvisor-rpcd restore`: puts a store backup back, offline. The embedded store is
// restored into its data directory; an etcd snapshot is handed to etcd's own tool.
import { BackupFileError, extractEtcdSnapshot, verifyBackupFile, type BackupHeader } from '../store/backup-file.js';
import { restoreEmbedded } from '../store/embedded/restore.js';
import type { RestoreOptions } from './command-line.js';

const EXIT_REFUSED = 1;
const EXIT_USAGE = 2;

function describe(header: BackupHeader): string {
  return `${header.backend} store, ${header.bytes} bytes, SHA-256 ${header.sha256}, taken ${header.created} by ${header.taken_by}`;
}

export async function runRestore(options: RestoreOptions): Promise<void> {
  const targets = [options.verifyOnly, options.dataDir !== undefined, options.etcdSnapshotOut !== undefined].filter(Boolean).length;
  if (targets !== 1) {
    process.stderr.write('debvisor-rpcd restore: give exactly one of --data-dir, --etcd-snapshot-out or --verify-only\n');
    process.exit(EXIT_USAGE);
  }
  try {
    if (options.verifyOnly) {
      const { header } = await verifyBackupFile(options.from);
      process.stdout.write(`${options.from}: intact: ${describe(header)}\n`);
    } else if (options.etcdSnapshotOut !== undefined) {
      const header = await extractEtcdSnapshot(options.from, options.etcdSnapshotOut);
      process.stdout.write(`wrote the etcd snapshot to ${options.etcdSnapshotOut} (${describe(header)})\nrestore it on every member with: etcdctl snapshot restore ${options.etcdSnapshotOut} --data-dir <member dir> ...\n`);
    } else if (options.dataDir !== undefined) {
      const header = await restoreEmbedded({ from: options.from, dataDir: options.dataDir, force: options.force === true });
      process.stdout.write(`restored ${options.dataDir} from ${options.from} (${describe(header)}); start the daemon on it\n`);
    }
  } catch (err) {
    if (!(err instanceof BackupFileError) && (err as NodeJS.ErrnoException).code === undefined) throw err;
    process.stderr.write(`debvisor-rpcd restore: ${(err as Error).message}\n`);
    process.exit(EXIT_REFUSED);
  }
}
