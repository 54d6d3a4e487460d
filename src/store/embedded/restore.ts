// Offline restore of an embedded-store backup into a data directory. The daemon must not
// be running on it; the snapshot is checked (size, SHA-256, SQLite's integrity check, the
// store's own tables) before it replaces anything.
import { createReadStream, createWriteStream } from 'node:fs';
import { chown, mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { pipeline } from 'node:stream/promises';
import { BackupFileError, syncPath, verifyBackupFile, type BackupHeader } from '../backup-file.js';

const STORE_FILE = 'store.sqlite';
/** What an embedded store keeps in its directory besides the database. */
const STORE_COMPANIONS = [`${STORE_FILE}-wal`, `${STORE_FILE}-shm`, 'LOCK'];

export interface RestoreOptions {
  readonly from: string;
  readonly dataDir: string;
  /** Replace a directory that already holds files. */
  readonly force: boolean;
}

/** The pid in the directory's LOCK file, if that process is alive (a daemon left by SIGKILL leaves a stale one). */
async function runningHolder(dir: string): Promise<number | undefined> {
  let text: string;
  try {
    text = await readFile(join(dir, 'LOCK'), 'utf8');
  } catch {
    return undefined;
  }
  const pid = Number(text.trim());
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  try {
    process.kill(pid, 0);
    return pid;
  } catch (err) {
    // EPERM: alive, but another user's.
    return (err as NodeJS.ErrnoException).code === 'EPERM' ? pid : undefined;
  }
}

/** Opens the restored file read-only and checks it is a sound database with the store's tables. */
function checkDatabase(path: string): void {
  let db: DatabaseSync | undefined;
  try {
    db = new DatabaseSync(path, { readOnly: true });
    const integrity = db.prepare('PRAGMA integrity_check').get()?.integrity_check;
    if (integrity !== 'ok') throw new BackupFileError(`the snapshot fails SQLite's integrity check: ${String(integrity)}`);
    const revision = db.prepare("SELECT value FROM meta WHERE name = 'revision'").get()?.value;
    if (typeof revision !== 'number') throw new BackupFileError('the snapshot has no store revision: it is not a debvisor embedded store');
    db.prepare('SELECT count(*) FROM kv').get();
  } catch (err) {
    if (err instanceof BackupFileError) throw err;
    throw new BackupFileError(`the snapshot is not a readable debvisor embedded store: ${(err as Error).message}`);
  } finally {
    db?.close();
  }
}

/** Restores `from` into `dataDir`; returns the backup's header. Throws BackupFileError with what to do. */
export async function restoreEmbedded(options: RestoreOptions): Promise<BackupHeader> {
  const { header, offset } = await verifyBackupFile(options.from);
  if (header.backend !== 'embedded') {
    throw new BackupFileError(
      `${options.from} is an etcd snapshot: extract it with --etcd-snapshot-out <file>, then restore it on every member with ` +
        '`etcdctl snapshot restore <file> --data-dir <member dir> …` (etcdutl on etcd ≥ 3.5)',
    );
  }
  const dir = resolve(options.dataDir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const holder = await runningHolder(dir);
  if (holder !== undefined) throw new BackupFileError(`${dir} is in use by a running debvisor-rpcd (pid ${holder}): stop it first`);
  const present = await readdir(dir);
  if (present.length > 0 && !options.force) {
    throw new BackupFileError(`${dir} is not empty (${present.slice(0, 5).join(', ')}${present.length > 5 ? ', …' : ''}): pass --force to replace its store`);
  }

  const staged = join(dir, `${STORE_FILE}.restoring`);
  const stagedCompanions = [`${staged}-wal`, `${staged}-shm`];
  try {
    await pipeline(createReadStream(options.from, { start: offset }), createWriteStream(staged, { mode: 0o600 }));
    await syncPath(staged);
    checkDatabase(staged);
    for (const name of [STORE_FILE, ...STORE_COMPANIONS]) await rm(join(dir, name), { force: true });
    await rename(staged, join(dir, STORE_FILE));
    await syncPath(dir);
    // Restored as root for a daemon that runs as its own user: the file takes the directory's owner.
    const owner = await stat(dir);
    if (process.getuid?.() === 0) await chown(join(dir, STORE_FILE), owner.uid, owner.gid);
  } finally {
    for (const path of [staged, ...stagedCompanions]) await rm(path, { force: true });
  }
  return header;
}
